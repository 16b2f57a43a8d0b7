//! Other attributes and derives on the struct still apply, whatever their order relative to
//! the presence declaration, in both spellings.
use presence_core::{Presence, presence};

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

/// The derive among others, its helper attribute among other attributes.
#[derive(Debug, Clone, Presence, PartialEq, Default)]
#[repr(C)]
#[presence(pubsub = AppPubSub)]
#[allow(dead_code)]
pub struct Derived {
    n: u8,
}

fn main() {
    assert_eq!(RoomPresence, RoomPresence::default());
    let copy = RoomPresence;
    let _ = (copy, copy);
    assert_eq!(
        format!("{:?}", DeriveFirst { n: 1 }),
        "DeriveFirst { n: 1 }"
    );
    assert_eq!(Derived { n: 2 }.clone(), Derived { n: 2 });
    assert_eq!(format!("{:?}", Derived::default()), "Derived { n: 0 }");
}
