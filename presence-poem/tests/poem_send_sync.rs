//! Compile-time Send/Sync checks for the public types.

use presence_poem::{
    ChannelContext, ConnectError, ConnectInfo, Connected, HandleIn, Join, LongPollConfig, Mailbox,
    MailboxError, PhoenixSocket, PhoenixSocketBuilder, Reply, SocketRef, StopReason,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<PhoenixSocket>();
    send_sync::<PhoenixSocketBuilder>();
    send_sync::<ConnectInfo>();
    send_sync::<Connected>();
    send_sync::<ConnectError>();
    send_sync::<Join>();
    send_sync::<Reply>();
    send_sync::<HandleIn>();
    send_sync::<StopReason>();
    send_sync::<SocketRef>();
    send_sync::<Mailbox>();
    send_sync::<MailboxError>();
    send_sync::<LongPollConfig>();
    send_sync::<presence_poem::RecentClose>();
    send::<ChannelContext>();
    send::<presence_poem::Info>();
}

/// For every presence, not one in particular.
#[allow(dead_code)]
fn presence_data_is_send_and_sync<P: presence_core::Presence>() {
    send_sync::<presence_poem::PresenceData<P>>();
}
