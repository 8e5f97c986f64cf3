#!/usr/bin/env bash
# Scale curves, Nexus and NATS side by side on this machine: pub/sub 1:1 throughput and
# request/reply p99 (1 in flight) while the server holds a growing background that no
# benchmark message matches (load-tests/src/background.rs):
#   - subject tables: 100 and 10 000 literal subscriptions, 100 000 wildcard patterns;
#   - sessions: 10, 1 000 and 10 000 connections with one subscription each;
# against a baseline without background. Each row runs Nexus then NATS. Both servers run with
# their connection limits raised (Nexus: docs/operations.md [limits]; NATS's default allows
# 64K). Writes a Markdown table to OUT (default: stdout). Everything it starts is stopped on
# exit; traffic goes only to 127.0.0.1.
#
# Knobs (environment): DURATION (s per scenario, default 5), PAYLOAD (bytes, default 128),
# ROWS (which rows, default all: "base t100 t10k w100k s10 s1k s10k"), NEXUS_BIN_DIR (run
# prebuilt binaries from there instead of building this tree), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}"
PAYLOAD="${PAYLOAD:-128}"
ROWS="${ROWS:-base t100 t10k w100k s10 s1k s10k}"
OUT="${OUT:-/dev/stdout}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
BIN="${NEXUS_BIN_DIR:-$CARGO_TARGET_DIR/release}"

# shellcheck source=load-tests/lib.sh
. load-tests/lib.sh

# 10 000 background sessions and the benchmark's own, on each side of loopback.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

NATS_BIN="$(find_nats)"
[ -n "$NATS_BIN" ] || { echo "nats-server not found (load-tests/run-comparison.sh installs it)" >&2; exit 1; }

step "building release binaries (nexus, nexus-load)"
[ -n "${NEXUS_BIN_DIR:-}" ] || cargo build --release --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load

cat >"$WORK/gateway.toml" <<'EOF'
[limits]
max_connections = 20000
max_transport_connections = 20000
max_transport_connections_per_address = 20000
max_unauthenticated = 20000
max_unauthenticated_per_address = 20000
EOF

step "starting a Nexus gateway and nats-server"
RUST_LOG=warn "$BIN/nexus" gateway --config "$WORK/gateway.toml" --auth off --region bench \
  --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$WORK/gw.out" 2>"$WORK/gw.err" &
PIDS+=("$!")
GW_ADDR="$(wait_for "$WORK/gw.out" ' listening on ' | sed -E 's/.* listening on ([^,]+),.*/\1/')"
"$NATS_BIN" -a 127.0.0.1 -p -1 >"$WORK/nats.log" 2>&1 &
PIDS+=("$!")
NATS_ADDR="$(wait_for "$WORK/nats.log" 'Listening for client connections on' | sed -E 's/.*connections on ([0-9.:]+).*/\1/')"

# background ROW: the nexus-load arguments of a row.
background() {
  case "$1" in
    base) echo "" ;;
    t100) echo "--background-patterns 100" ;;
    t10k) echo "--background-patterns 10000" ;;
    w100k) echo "--background-sessions 10 --background-patterns 100000 --background-wildcards" ;;
    s10) echo "--background-sessions 10 --background-patterns 10" ;;
    s1k) echo "--background-sessions 1000 --background-patterns 1000" ;;
    s10k) echo "--background-sessions 10000 --background-patterns 10000" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}

: >"$WORK/table.md"
for row in $ROWS; do
  for scenario in pubsub request; do
    step "$row: $scenario"
    # shellcheck disable=SC2046
    "$BIN/nexus-load" "$scenario" --target "$NEXUS://$GW_ADDR" --target "nats://$NATS_ADDR" \
      --duration "$DURATION" --payload "$PAYLOAD" $(background "$row") >"$WORK/$row-$scenario.md"
    if [ -s "$WORK/table.md" ]; then tail -n +3 "$WORK/$row-$scenario.md"; else cat "$WORK/$row-$scenario.md"; fi \
      | grep -v '^$' >>"$WORK/table.md"
  done
done
cat "$WORK/table.md" >"$OUT"
