#!/usr/bin/env bash
# A chat node under heaptrack, for the churn soak's --server: heaptrack's own lines are kept
# off stdout, whose first line the soak reads (LISTENING <addr>). One profile per node, in
# $HEAPTRACK_DIR (default /tmp): heaptrack_print -f <file> reads it.
#
#   target/release/soak --no-restarts --server tests/load/heaptrack-node.sh ...
#
# The soak samples the RSS of this script's process, not of the node: ignore its RSS check.
set -euo pipefail
node="$(cd "$(dirname "$0")/../.." && pwd)/target/release/chat_node"
exec > >(grep --line-buffered -v -e '^heaptrack' -e '^starting application' -e '^Heaptrack' \
  -e '^$' -e 'libheaptrack' -e '^/')
exec heaptrack -o "${HEAPTRACK_DIR:-/tmp}/chat_node.$$" "$node"
