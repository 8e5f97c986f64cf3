#!/usr/bin/env bash
# What message tracing costs (issue 16): pub/sub 1:1 through one gateway, unpaced, with the
# trace store's head sampling at 0 (forced messages only), 0.001 (the default), 0.01 and 1
# (every message), interleaved round by round so that drift on a shared machine hits every
# rate alike. Prints one line per run and a summary per rate (median, mean, min, max
# delivered msgs/s, and the gateway's CPU time per delivered message from /proc/PID/stat:
# far steadier than msgs/s on a shared machine, it is the figure the 3 % bound is judged by). Everything it starts is stopped on exit; traffic goes only to 127.0.0.1.
#
# Knobs (environment): ROUNDS (default 5), DURATION (s per run, default 5), PAYLOAD (bytes,
# default 128), RATES (default "0 0.001 0.01 1").
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5}"
PAYLOAD="${PAYLOAD:-128}"
RATES="${RATES:-0 0.001 0.01 1}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
# NEXUS_BIN_DIR: run prebuilt binaries from there (an A/B against another build) instead of
# building this tree.
BIN="${NEXUS_BIN_DIR:-$CARGO_TARGET_DIR/release}"

WORK="$(mktemp -d)"
GW=""
cleanup() {
  if [ -n "$GW" ]; then kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> building release binaries (nexus, nexus-load)" >&2
[ -n "${NEXUS_BIN_DIR:-}" ] || cargo build --release --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load

for rate in $RATES; do
  cat >"$WORK/gw-$rate.toml" <<EOF
[gateway]
region = "bench"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
auth = "off"

[gateway.trace]
sample_rate = $rate
EOF
  "$BIN/nexus" config check "$WORK/gw-$rate.toml" >/dev/null
done

echo "round rate msgs_per_s lost cpu_ticks" >"$WORK/runs.txt"
TICK=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for rate in $RATES; do
    RUST_LOG=warn "$BIN/nexus" gateway --config "$WORK/gw-$rate.toml" >"$WORK/gw.out" 2>"$WORK/gw.err" &
    GW=$!
    addr=""
    for _ in $(seq 200); do
      addr="$(sed -nE 's/.* listening on ([^,]+),.*/\1/p' "$WORK/gw.out" | head -1)"
      [ -n "$addr" ] && break
      sleep 0.05
    done
    [ -n "$addr" ] || { echo "the gateway did not start: $(cat "$WORK/gw.err")" >&2; exit 1; }
    c0=$(awk '{print $14+$15}' "/proc/$GW/stat")
    "$BIN/nexus-load" pubsub --target "nexus://$addr" --duration "$DURATION" \
      --payload "$PAYLOAD" --json >"$WORK/out.json"
    c1=$(awk '{print $14+$15}' "/proc/$GW/stat")
    kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""
    python3 - "$WORK/out.json" "$round" "$rate" "$(( c1 - c0 ))" <<'PY' | tee -a "$WORK/runs.txt"
import json, sys
d = json.load(open(sys.argv[1]))
d = d[0] if isinstance(d, list) else d
print(sys.argv[2], sys.argv[3], round(d["msgs_per_s"]), d["lost"], sys.argv[4], d["delivered"])
PY
  done
done

echo "==> delivered msgs/s per sample rate ($ROUNDS rounds of ${DURATION}s, ${PAYLOAD}-byte payloads, commit $(git rev-parse --short HEAD), $(nproc) CPUs)"
python3 - "$WORK/runs.txt" "$TICK" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
cpu = collections.defaultdict(list)
lost = collections.Counter()
tick = int(sys.argv[2])
for line in list(open(sys.argv[1]))[1:]:
    _, rate, v, l, ticks, delivered = line.split()
    runs[rate].append(int(v))
    lost[rate] += int(l)
    if int(delivered) > 0:
        cpu[rate].append(int(ticks) / tick * 1e6 / int(delivered))
base = statistics.median(runs.get("0", [0])) or None
cpu_base = statistics.median(cpu["0"]) if cpu.get("0") else None
print("| sample rate | runs | median msgs/s | mean | min | max | lost | median vs rate 0 | gateway CPU us/msg (median) | CPU vs rate 0 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for rate, v in runs.items():
    med = statistics.median(v)
    rel = f"{(med / base - 1) * 100:+.1f} %" if base else "-"
    c = statistics.median(cpu[rate]) if cpu.get(rate) else None
    crel = f"{(c / cpu_base - 1) * 100:+.1f} %" if c and cpu_base else "-"
    cs = f"{c:.3f}" if c else "-"
    print(f"| {rate} | {len(v)} | {med:.0f} | {statistics.mean(v):.0f} | {min(v)} | {max(v)} | {lost[rate]} | {rel} | {cs} | {crel} |")
PY
