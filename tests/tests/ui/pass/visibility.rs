//! The helpers have the struct's visibility, whatever it is.
mod rooms {
    use presence_core::{Presence, presence};

    presence_core::pubsub_server!(pub AppPubSub);

    #[derive(Presence)]
    #[presence(pubsub = AppPubSub)]
    pub struct Public;

    #[presence(pubsub = AppPubSub)]
    pub(crate) struct Crate;

    pub mod inner {
        #[derive(presence_core::Presence)]
        #[presence(pubsub = super::AppPubSub)]
        pub(super) struct Parent;

        #[presence_core::presence(pubsub = crate::rooms::AppPubSub)]
        pub(in crate::rooms) struct InPath;
    }

    #[presence(pubsub = AppPubSub)]
    struct Private;

    pub(crate) fn use_private() {
        let _ = inner::Parent::running;
        let _ = inner::InPath::running;
        let _ = Private::running;
        let _ = Private.child_spec(presence_core::presence::PresenceOptions::new());
    }
}

fn main() {
    rooms::use_private();
    let _ = rooms::Public::running;
    let _ = rooms::Crate::running;
}
