//! Every tracker option, each an expression, becomes `Presence::options`.
use std::time::Duration;

use presence_core::Presence;
use presence_core::presence::PresenceOptions;

presence_core::pubsub_server!(pub AppPubSub);

const POOL: usize = 4;

#[derive(Presence)]
#[presence(
    pubsub = AppPubSub,
    pool_size = POOL,
    broadcast_period = Duration::from_millis(500),
    max_silent_periods = 5,
    down_period = Duration::from_secs(20),
    permdown_period = Duration::from_secs(600),
    clock_sample_periods = 2,
    max_delta_sizes = vec![10, 100],
    diff_window = Duration::from_millis(20),
    name = "Custom",
)]
pub struct Tuned;

fn main() {
    assert_eq!(Tuned::NAME, "Custom");
    let expected = PresenceOptions::new()
        .pool_size(4)
        .broadcast_period(Duration::from_millis(500))
        .max_silent_periods(5)
        .down_period(Duration::from_secs(20))
        .permdown_period(Duration::from_secs(600))
        .clock_sample_periods(2)
        .max_delta_sizes(vec![10, 100])
        .diff_window(Duration::from_millis(20));
    assert_eq!(Tuned::options(), expected);
}
