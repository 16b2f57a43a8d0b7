#!/usr/bin/env bash
# The "big room" load scenario, twice in a row: with the chat server's default presence diff
# window, then with PRESENCE_DIFF_WINDOW_MS=0. See tests/src/bin/load.rs for what is measured.
#
# usage: tests/load/big-room.sh [N] [load tool options...]
#   N defaults to 3000; further options (e.g. --timeout-secs 60, --json) go to the tool.
#   JSON=1 adds --json: each run then also prints one JSON object line on stdout.
#
# Builds the chat example and the tool in release mode first (no parallelism override: set
# CARGO_BUILD_JOBS to limit it).
set -euo pipefail

cd "$(dirname "$0")/../.."

clients="${1:-3000}"
if [[ $# -gt 0 ]]; then
    shift
fi
extra=("$@")
if [[ "${JSON:-}" == 1 ]]; then
    extra+=(--json)
fi

cargo build --release --example chat -p presence-examples
cargo build --release -p presence-tests --bin load

load=target/release/load
server=target/release/examples/chat

status=0
echo "=== big-room, $clients clients, default diff window ==="
"$load" big-room --clients "$clients" --server "$server" "${extra[@]}" || status=$?
echo
echo "=== big-room, $clients clients, PRESENCE_DIFF_WINDOW_MS=0 ==="
"$load" big-room --clients "$clients" --server "$server" --env PRESENCE_DIFF_WINDOW_MS=0 \
    "${extra[@]}" || status=$?
exit "$status"
