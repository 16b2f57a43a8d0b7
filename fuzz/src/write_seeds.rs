//! Writes the seed corpora of every fuzz target into `$SEEDS_DIR/<target>/` (default
//! `seeds/`): valid inputs made by the crates' own encoders and the unit tests' fixtures.
//! `run.sh` runs it before fuzzing; libFuzzer mutates from there.
//!
//! It is a libFuzzer binary that does its work at start-up and exits, so that it builds with
//! the fuzz targets' instrumentation (a plain binary would not link against it, and a plain
//! build would compile every dependency a second time).
#![no_main]
// The start-up code exits, so the macro's code after it is unreachable.
#![allow(unreachable_code)]

use std::path::PathBuf;

libfuzzer_sys::fuzz_target!(
    init: {
        let status = match write_seeds() {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("write_seeds: {error}");
                1
            }
        };
        std::process::exit(status);
    },
    |_data: &[u8]| {}
);

/// The macro's argument lists, from the pass and fail cases of the UI tests.
const MACRO_ARGS: [&str; 9] = [
    "pubsub = AppPubSub",
    "pubsub = AppPubSub, meta = UserMeta",
    "pubsub = AppPubSub, fetch, init, handle_metas, pool_size = 2",
    "pubsub = AppPubSub, pool_size = POOL, broadcast_period = Duration::from_millis(500), \
     max_silent_periods = 5, down_period = Duration::from_secs(20), \
     permdown_period = Duration::from_secs(600), clock_sample_periods = 2, \
     max_delta_sizes = vec![10, 100], diff_window = Duration::from_millis(20), name = \"Custom\"",
    "pubsub = AppPubSub, pubsub = Other",
    "pubsb = AppPubSub",
    "pubsub = AppPubSub, fetch = true",
    "pubsub = AppPubSub, meta = Vec<u8>, pool_size = -1",
    "pubsub = AppPubSub\0pub struct Users { count: u32 }",
];

fn write_seeds() -> std::io::Result<()> {
    let root = std::env::var_os("SEEDS_DIR").map_or_else(|| PathBuf::from("seeds"), PathBuf::from);
    let macro_args = MACRO_ARGS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let targets: [(&str, Vec<Vec<u8>>); 8] = [
        ("phoenix_v1_json", presence_poem::__fuzz::v1_json_seeds()),
        ("phoenix_v2_json", presence_poem::__fuzz::v2_json_seeds()),
        (
            "phoenix_v2_binary",
            presence_poem::__fuzz::v2_binary_seeds(),
        ),
        ("pubsub_frame", presence_core::__fuzz::pubsub_frame_seeds()),
        (
            "redis_envelope",
            presence_core::__fuzz::redis_envelope_seeds(),
        ),
        ("redis_parts", presence_core::__fuzz::redis_parts_seeds()),
        (
            "tracker_replication",
            presence_core::__fuzz::tracker_replication_seeds(),
        ),
        ("macro_args", macro_args),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed)?;
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
    Ok(())
}
