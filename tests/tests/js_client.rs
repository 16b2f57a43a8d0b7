//! The official phoenix.js client (npm `phoenix`, with `ws`) against presence-poem: the tests in
//! tests/js, run with Node's test runner against the `js_test_server` and `chat_node` binaries
//! of this package.

mod support;

use std::time::Duration;

#[tokio::test]
async fn phoenix_js_client() {
    let dir = support::package_dir("js");
    if !support::ready(&dir, "PRESENCE_REQUIRE_NODE", None) {
        return;
    }
    support::node_test(
        &dir,
        &["--test-concurrency=1", "--test-timeout=180000", "test/"],
        &[
            (
                "PRESENCE_TEST_SERVER",
                env!("CARGO_BIN_EXE_js_test_server").to_owned(),
            ),
            ("CHAT_NODE", env!("CARGO_BIN_EXE_chat_node").to_owned()),
        ],
        Duration::from_secs(300),
    )
    .await;
}
