use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

/// Who is in each room.
#[presence(pubsub = AppPubSub)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct RoomPresence;

#[derive(Debug)]
#[presence(pubsub = AppPubSub)]
#[allow(dead_code)]
struct DeriveFirst {
    n: u8,
}

fn main() {
    // The derives on the struct still apply.
    assert_eq!(RoomPresence, RoomPresence::default());
    let copy = RoomPresence;
    let _ = (copy, copy);
    assert_eq!(
        format!("{:?}", DeriveFirst { n: 1 }),
        "DeriveFirst { n: 1 }"
    );
}
