#!/usr/bin/env bash
# Compression on the wire (issue 19 item 3): two federated gateways (eu-west publishes,
# us-east subscribes) whose QUIC link runs through the WAN emulator with a delay AND a
# bandwidth cap, carrying compressible JSON payloads. Each configuration runs pub/sub 1:1
# for DURATION seconds twice, as fast as possible (what fits through the link: msgs/s
# delivered) and paced at PACED_RATE msgs/s (delivered share and latency), and reports the
# bytes the emulator carried towards us-east per delivered message and the link's batch
# compression ratio:
#   off      no payload compression (adapter) and no link compression
#   link     link batch compression only (--link-compression zstd, the default)
#   adapter  payload compression by the publishing adapter only (zstd, the client default)
#   both     both (the defaults)
#   lz4      adapter lz4, link off
# Writes the table into docs/benchmarks.md between the COMPRESSION markers.
#
# Knobs: DELAY_MS (one way, default 20), RATE_KBPS (each direction, default 20000 = 20
# Mbit/s), PAYLOAD (bytes, default 8192), DURATION (s, default 5), PACED_RATE (msgs/s,
# default 1000), PROFILE (debug or
# release, default debug: the release build is cold and takes ~50 min on 2 cores),
# OUT (default docs/benchmarks.md). The adapters connect over the native transport
# (NEXUS_TRANSPORT=grpc for gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=load-tests/scheme.sh
. load-tests/scheme.sh

DELAY_MS="${DELAY_MS:-20}"
RATE_KBPS="${RATE_KBPS:-20000}"
PAYLOAD="${PAYLOAD:-8192}"
DURATION="${DURATION:-5}"
PACED_RATE="${PACED_RATE:-1000}"
PROFILE="${PROFILE:-debug}"
OUT="${OUT:-docs/benchmarks.md}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
BIN="$CARGO_TARGET_DIR/$PROFILE"
release=()
[ "$PROFILE" = release ] && release=(--release)

WORK="$(mktemp -d)"
PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n==> %s\n' "$*" >&2; }

step "building $PROFILE binaries (nexus, nexus-load, nexus-wan)"
cargo build "${release[@]}" --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load --bin nexus-wan

wait_for() {
  local i
  for i in $(seq 1 300); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

"$BIN/nexus" federation-certs --out "$WORK/certs" --regions eu-west,us-east >/dev/null

# start_region REGION LINK_CODEC [PEER_ARGS...]: sets GW_ADDR, GW_METRICS and GW_FED.
start_region() {
  local region=$1 codec=$2; shift 2
  RUST_LOG=warn "$BIN/nexus" gateway --auth off --region "$region" \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --state-dir "$WORK/state-$region" \
    --federation-listen 127.0.0.1:0 --federation-cert "$WORK/certs/$region.pem" \
    --federation-key "$WORK/certs/$region-key.pem" --federation-ca "$WORK/certs/ca.pem" \
    --link-compression "$codec" "$@" >"$WORK/$region.out" 2>"$WORK/$region.err" &
  PIDS+=("$!")
  local line
  line="$(wait_for "$WORK/$region.out" ' listening on ')"
  GW_ADDR="$(sed -E 's/.* listening on ([^,]+),.*/\1/' <<<"$line")"
  GW_METRICS="$(sed -E 's/.*metrics on ([0-9.:]+).*/\1/' <<<"$line")"
  GW_FED="$(wait_for "$WORK/$region.out" '^nexus federation' | sed -E 's/.* on ([0-9.:]+) .*/\1/')"
}

# run NAME ADAPTER_CODEC LINK_CODEC MODE (max or paced): a fresh pair of regions each time,
# so that one run's backlog in the link (seconds of it at a few Mbit/s) cannot delay the next.
run() {
  local name=$1 adapter=$2 link=$3 mode=$4
  step "$name ($mode): adapter $adapter, link $link, ${RATE_KBPS} kbit/s, ${DELAY_MS} ms"
  rm -rf "$WORK"/state-*
  start_region us-east "$link"
  local east="$GW_ADDR" east_fed="$GW_FED"
  "$BIN/nexus-wan" --listen 127.0.0.1:0 --target "$east_fed" --delay-ms "$DELAY_MS" \
    --rate-kbps "$RATE_KBPS" --control 127.0.0.1:0 >"$WORK/wan.out" 2>&1 &
  PIDS+=("$!")
  local wan ctl
  wan="$(wait_for "$WORK/wan.out" 'relaying' | sed -E 's/.*relaying ([0-9.:]+) .*/\1/')"
  ctl="$(wait_for "$WORK/wan.out" 'control on' | sed -E 's/.*control on (http:[^ ]+).*/\1/')"
  start_region eu-west "$link" --peer "us-east=$wan"
  local west="$GW_ADDR" west_metrics="$GW_METRICS"
  local i
  for i in $(seq 1 100); do
    curl -sf "http://$west_metrics/v1/status" | grep -q '"state":"up"' && break
    [ "$i" = 100 ] && { echo "the federation link did not come up" >&2; cat "$WORK"/*.err >&2; exit 1; }
    sleep 0.1
  done
  local extra=() before after
  {
    [ "$mode" = paced ] && extra=(--rate "$PACED_RATE")
    before="$(curl -sf "$ctl/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["bytes_to_target"])')"
    curl -sf "http://$west_metrics/metrics" >"$WORK/$name-$mode.before"
    NEXUS_LOAD_FILLER=json NEXUS_LOAD_COMPRESSION="$adapter" "$BIN/nexus-load" pubsub \
      --target "$NEXUS://$west" --remote "$NEXUS://$east" --duration "$DURATION" \
      --payload "$PAYLOAD" "${extra[@]}" --json-out "$WORK/$name-$mode.json" >"$WORK/$name-$mode.md"
    after="$(curl -sf "$ctl/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["bytes_to_target"])')"
    curl -sf "http://$west_metrics/metrics" >"$WORK/$name-$mode.after"
    python3 - "$name" "$adapter" "$link" "$mode" "$WORK/$name-$mode.json" "$before" "$after" \
      "$WORK/$name-$mode.before" "$WORK/$name-$mode.after" >>"$WORK/rows-$mode.md" <<'PY'
import json, sys
name, adapter, link, mode, path, before, after, m0, m1 = sys.argv[1:]
r = json.load(open(path))
r = r[0] if isinstance(r, list) else r
def link_bytes(path, form):
    return sum(float(l.split()[-1]) for l in open(path)
               if l.startswith("nexus_link_bytes_total") and 'direction="sent"' in l and f'form="{form}"' in l)
raw = link_bytes(m1, "raw") - link_bytes(m0, "raw")
wire_link = link_bytes(m1, "wire") - link_bytes(m0, "wire")
wire = int(after) - int(before)
delivered = max(r["delivered"], 1)
ratio = raw / wire_link if wire_link else 0
if mode == "max":
    print(f"| {name} | {adapter} | {link} | **{r['msgs_per_s']:.0f}** | {r['mb_per_s'] * 8:.1f} | {wire / delivered:.0f} "
          f"| {ratio:.2f} | {r['lost']} |")
else:
    print(f"| {name} | {adapter} | {link} | {r['sent']} | {r['delivered']} ({100 * r['delivered'] / max(r['sent'], 1):.0f} %) "
          f"| {wire / delivered:.0f} | {r['latency']['p50_us'] / 1000:.1f} | {r['latency']['p99_us'] / 1000:.1f} |")
PY
    tail -n 1 "$WORK/rows-$mode.md" >&2
  }
  stop_all
}

: >"$WORK/rows-max.md"
: >"$WORK/rows-paced.md"
for mode in max paced; do
  run off off off "$mode"
  run link off zstd "$mode"
  run adapter zstd off "$mode"
  run both zstd zstd "$mode"
  run lz4 lz4 off "$mode"
  run link-lz4 off lz4 "$mode"
done

step "writing $OUT"
{
  echo "<!-- BEGIN COMPRESSION generated by load-tests/run-compression.sh; edits inside are overwritten -->"
  echo "## Compression on the wire ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- Two gateways, eu-west (publisher) and us-east (subscriber), federated over QUIC through"
  echo "  the WAN emulator: ${DELAY_MS} ms one way, **${RATE_KBPS} kbit/s per direction**."
  echo "- ${PAYLOAD}-byte JSON payloads (windows of a 1 MiB corpus of sensor records), pub/sub 1:1"
  echo "  for ${DURATION} s as fast as possible, then paced at ${PACED_RATE} msgs/s, best-effort route;"
  echo "  nexus $(git describe --always --dirty 2>/dev/null || echo '?'), **${PROFILE} build**, $(nproc) CPUs"
  echo "  shared by both gateways, the emulator and the load generator."
  echo "- adapter: the publishing Rust client's payload codec (\`NEXUS_LOAD_COMPRESSION\`); link:"
  echo "  the gateways' \`--link-compression\` (batches of frames on the link's data stream)."
  echo "- wire B/msg: UDP bytes the emulator carried towards us-east per delivered message (QUIC"
  echo "  and TLS overhead included); link ratio: the link's data-stream bytes before / after batch"
  echo "  compression (\`nexus_link_bytes_total\`, 1.00 = sent plain); lost: best-effort messages"
  echo "  dropped when the link's queue was full (the publisher outruns the link)."
  echo
  echo "As fast as possible (what fits through the link):"
  echo
  echo "| run | adapter | link | msgs/s delivered | Mbit/s of payload | wire B/msg | link ratio | lost |"
  echo "|---|---|---|---:|---:|---:|---:|---:|"
  cat "$WORK/rows-max.md"
  echo
  echo "Paced at ${PACED_RATE} msgs/s:"
  echo
  echo "| run | adapter | link | sent | delivered | wire B/msg | p50 ms | p99 ms |"
  echo "|---|---|---|---:|---:|---:|---:|---:|"
  cat "$WORK/rows-paced.md"
  echo "<!-- END COMPRESSION -->"
} >"$WORK/generated.md"

if [ -f "$OUT" ] && grep -q '^<!-- BEGIN COMPRESSION' "$OUT"; then
  awk -v gen="$WORK/generated.md" '
    /^<!-- BEGIN COMPRESSION/ {while ((getline l < gen) > 0) print l; skip=1; next}
    /^<!-- END COMPRESSION/ {skip=0; next}
    !skip {print}' "$OUT" >"$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
else
  { echo; cat "$WORK/generated.md"; } >>"$OUT"
fi
echo "wrote $OUT" >&2
