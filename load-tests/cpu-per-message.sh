#!/usr/bin/env bash
# CPU time one pub/sub 1:1 message costs the server and the load generator, for Nexus and
# for NATS: the measure behind "CPU per message" in docs/benchmarks.md. Independent of what
# else runs on the machine (unlike msgs/s). Starts a gateway and a nats-server on loopback,
# runs `nexus-load pubsub --count COUNT` against each, and reads the server's CPU time from
# /proc/PID/stat and the load generator's from /usr/bin/time. Stops what it started.
#
# Usage: load-tests/cpu-per-message.sh [COUNT]   (default 2000000)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-2000000}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
BIN="$CARGO_TARGET_DIR/release"
NATS_BIN="$(command -v nats-server || true)"
[ -n "$NATS_BIN" ] || { echo "nats-server not found (apt-get install nats-server)" >&2; exit 1; }
WORK="$(mktemp -d)"
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load

wait_for() { # FILE PATTERN
  local i
  for i in $(seq 1 150); do grep -m1 -E "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

measure() { # NAME URL
  local tick s0 s1
  tick=$(getconf CLK_TCK)
  s0=$(awk '{print $14+$15}' "/proc/$SERVER/stat")
  /usr/bin/time -o "$WORK/time" -f "%U %S" "$BIN/nexus-load" pubsub --target "$2" \
    --count "$COUNT" --json-out "$WORK/out.json" >/dev/null 2>&1
  s1=$(awk '{print $14+$15}' "/proc/$SERVER/stat")
  kill -INT "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  python3 - "$1" "$(( s1 - s0 ))" "$tick" "$(tail -1 "$WORK/time")" "$WORK/out.json" <<'PY'
import json, sys
name, ticks, tick, times, path = sys.argv[1:]
d = json.load(open(path))[0]
n = d["delivered"]
load = sum(map(float, times.split()))
print(f"{name:6} delivered {n} lost {d['lost']} at {d['msgs_per_s']:.0f} msgs/s: "
      f"server {int(ticks) / int(tick) * 1e6 / n:.2f} us CPU/msg, "
      f"load generator {load * 1e6 / n:.2f} us CPU/msg")
PY
}

gateway() { # starts a gateway; sets SERVER and addr
  RUST_LOG=warn "$BIN/nexus" gateway --auth off --region bench --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 >"$WORK/gw.out" 2>"$WORK/gw.err" &
  SERVER=$!
  addr="$(wait_for "$WORK/gw.out" ' listening on ' | sed -E 's/.* listening on ([^,]+),.*/\1/')"
}
# Nexus over gRPC, then over the native transport (docs/protocol.md §1.1).
gateway
measure nexus "nexus://$addr"
gateway
measure native "nexus+tcp://$addr"

"$NATS_BIN" -a 127.0.0.1 -p -1 >"$WORK/nats.log" 2>&1 &
SERVER=$!
addr="$(wait_for "$WORK/nats.log" 'Listening for client connections on' | sed -E 's/.*connections on ([0-9.:]+).*/\1/')"
measure nats "nats://$addr"
