mod rooms {
    use presence_core::presence;

    presence_core::pubsub_server!(pub AppPubSub);

    #[presence(pubsub = AppPubSub)]
    pub struct Public;

    #[presence(pubsub = AppPubSub)]
    pub(crate) struct Crate;

    pub mod inner {
        #[presence_core::presence(pubsub = super::AppPubSub)]
        pub(super) struct Parent;

        #[presence_core::presence(pubsub = crate::rooms::AppPubSub)]
        pub(in crate::rooms) struct InPath;
    }

    #[presence(pubsub = AppPubSub)]
    struct Private;

    pub(crate) fn use_private() {
        // Helpers have the struct's visibility.
        let _ = inner::Parent::handle;
        let _ = inner::InPath::handle;
        let _ = Private::handle;
        let _ = Private.child_spec(presence_core::presence::PresenceOptions::new());
    }
}

fn main() {
    rooms::use_private();
    let _ = rooms::Public::handle;
    let _ = rooms::Crate::handle;
}
