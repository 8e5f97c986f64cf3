#!/usr/bin/env bash
# Nexus vs NATS on this machine: builds release binaries, starts nats-server and a Nexus
# gateway on free loopback ports, runs the comparison suite (128-byte messages), records the
# gateway's RSS over a sustained run and the memory per idle connection of both servers, and
# writes the results into docs/benchmarks.md (between the GENERATED markers; the text around
# them is kept). Everything it starts is stopped on exit. Traffic goes only to 127.0.0.1.
#
# Knobs (environment): DURATION (s per scenario, default 5), SUSTAIN (s, default 60),
# SUSTAIN_RATE (msgs/s of the sustained run, default 0 = as fast as possible), IDLE (idle
# connections, default 1000), OPEN_RATE (requests/s of the open loop, default 2000),
# PAYLOAD (bytes, default 128), LARGE (payload sizes of the large-payload rows, default
# "16384 262144 1048576"), HOP_RUNS (runs of the hop rows, at least 2, default 3), OUT (default
# docs/benchmarks.md).
#
# The cost of a hop (between gateways of one region, between regions) has no NATS column:
# it runs load-tests/run-cluster-hop.sh on the same binaries and adds its medians. The scale
# curves (subject tables and sessions growing) run load-tests/run-scale.sh (SCALE=0 skips
# them).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}"
SUSTAIN="${SUSTAIN:-60}"
SUSTAIN_RATE="${SUSTAIN_RATE:-0}"
IDLE="${IDLE:-1000}"
OPEN_RATE="${OPEN_RATE:-2000}"
PAYLOAD="${PAYLOAD:-128}"
LARGE="${LARGE:-16384 262144 1048576}"
SCALE="${SCALE:-1}"
HOP_RUNS="${HOP_RUNS:-3}"
OUT="${OUT:-docs/benchmarks.md}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
BIN="$CARGO_TARGET_DIR/release"

# shellcheck source=load-tests/lib.sh
. load-tests/lib.sh

# The hop rows are medians over runs (run-cluster-hop.sh writes them only for RUNS > 1): say
# so now rather than after the rest of the run.
[ "$HOP_RUNS" -ge 2 ] || { echo "HOP_RUNS=$HOP_RUNS: the hop rows are medians, give at least 2" >&2; exit 2; }

# Enough file descriptors for the idle-connection measurement (inherited by the servers).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

NATS_BIN="$(find_nats)"
if [ -z "$NATS_BIN" ]; then
  step "installing nats-server"
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server
  NATS_BIN="$(find_nats)"
fi
[ -n "$NATS_BIN" ] || { echo "nats-server not found after installing it" >&2; exit 1; }

step "building release binaries (nexus, nexus-load)"
cargo build --release --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load

# start_gateway NAME [ARGS...]: starts a gateway on free ports; sets GW_PID and GW_ADDR.
start_gateway() {
  local name=$1; shift
  RUST_LOG=warn "$BIN/nexus" gateway --auth off --region bench --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  GW_PID=$!; PIDS+=("$GW_PID")
  local line; line="$(wait_for "$WORK/$name.out" ' listening on ')"
  GW_ADDR="$(printf '%s' "$line" | sed -E 's/.* listening on ([^,]+),.*/\1/')"
  GW_METRICS="$(printf '%s' "$line" | sed -E 's/.*, metrics on ([0-9.:]+).*/\1/')"
}

# start_nats NAME [ARGS...]: starts nats-server on a free port; sets NATS_PID and NATS_ADDR.
start_nats() {
  local name=$1; shift
  "$NATS_BIN" -a 127.0.0.1 -p -1 "$@" >"$WORK/$name.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  NATS_ADDR="$(wait_for "$WORK/$name.log" 'Listening for client connections on' | sed -E 's/.*connections on ([0-9.:]+).*/\1/')"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

step "starting nats-server and a Nexus gateway"
start_gateway gw
start_nats nats
echo "nexus gateway on $GW_ADDR (pid $GW_PID), nats-server on $NATS_ADDR (pid $NATS_PID)" >&2

step "comparison suite: ${DURATION}s per scenario, ${PAYLOAD}-byte payloads"
"$BIN/nexus-load" compare --nexus "$NEXUS://$GW_ADDR" --nats "nats://$NATS_ADDR" \
  --duration "$DURATION" --payload "$PAYLOAD" --open-rate "$OPEN_RATE" \
  --json-out "$WORK/compare.json" | tee "$WORK/compare.md"

# Large payloads: pub/sub 1:1 per size in LARGE, on servers whose payload limit is raised
# to 4 MiB (both default to 1 MiB, which a 1 MiB payload plus its headers exceeds).
step "large payloads: pub/sub 1:1 at $LARGE bytes"
stop "$GW_PID"; stop "$NATS_PID"
start_gateway gw-large --max-payload 4194304
printf 'max_payload: 4194304\n' >"$WORK/nats-large.conf"
start_nats nats-large -c "$WORK/nats-large.conf"
: >"$WORK/large.md"
for size in $LARGE; do
  # Uncompressed, as NATS sends them: the Nexus client compresses payloads of 1 KiB or more
  # with zstd by default, and the load generator's filler shrinks to a few bytes.
  NEXUS_LOAD_COMPRESSION=off "$BIN/nexus-load" pubsub --target "$NEXUS://$GW_ADDR" --target "nats://$NATS_ADDR" \
    --duration "$DURATION" --payload "$size" --json-out "$WORK/large-$size.json" \
    >"$WORK/large-$size.md"
  label="$(awk -v b="$size" 'BEGIN {if (b >= 1048576) printf "%g MiB", b/1048576; else if (b >= 1024) printf "%g KiB", b/1024; else printf "%d B", b}')"
  if [ -s "$WORK/large.md" ]; then tail -n +3 "$WORK/large-$size.md"; else cat "$WORK/large-$size.md"; fi \
    | grep -v '^$' | sed "s/^| pub\/sub 1:1 |/| pub\/sub 1:1, $label |/" >>"$WORK/large.md"
done
cat "$WORK/large.md"
stop "$GW_PID"; stop "$NATS_PID"
start_gateway gw
start_nats nats

# sustained SERVER_PID TARGET NAME [METRICS]: pub/sub 1:1 for SUSTAIN seconds, RSS sampled
# each second (and, given the gateway's metrics address, its trace store's bytes: the one
# store that fills while messages flow, up to trace.max_bytes).
sustained() {
  local pid=$1 target=$2 name=$3 metrics=${4:-} rate_args=()
  [ "$SUSTAIN_RATE" != 0 ] && rate_args=(--rate "$SUSTAIN_RATE")
  : >"$WORK/$name.rss"; : >"$WORK/$name.trace"
  "$BIN/nexus-load" pubsub --target "$target" --duration "$SUSTAIN" --payload "$PAYLOAD" \
    "${rate_args[@]}" --json-out "$WORK/$name.json" >"$WORK/$name.md" &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    rss_kb "$pid" >>"$WORK/$name.rss"
    if [ -n "$metrics" ]; then
      curl -sf "http://$metrics/metrics" | awk '/^nexus_trace_bytes / {printf "%d\n", $2/1024; f=1} END {if (!f) print 0}' >>"$WORK/$name.trace" || echo 0 >>"$WORK/$name.trace"
    fi
    sleep 1
  done
  wait "$load"
}

# summary of a memory series (kB, one sample per second): first, 10 s in, min, max, last,
# and the drift after warm-up: the median of the last 10 samples minus the median of
# samples 11-20 (single samples swing by ~10 MB as the allocator returns and reuses pages).
rss_summary() {
  awk '{v[NR]=$1; if (NR==1||$1<mn) mn=$1; if ($1>mx) mx=$1}
       function med(a, b,   n, i, j, t, w) {
         n = 0; for (i = a; i <= b; i++) w[++n] = v[i]
         for (i = 2; i <= n; i++) { t = w[i]; for (j = i - 1; j >= 1 && w[j] > t; j--) w[j+1] = w[j]; w[j+1] = t }
         return (n % 2) ? w[(n+1)/2] : (w[n/2] + w[n/2+1]) / 2 }
       END {w = (NR > 10) ? v[11] : v[1];
            early = (NR >= 30) ? med(11, 20) : w; late = (NR >= 30) ? med(NR - 9, NR) : v[NR];
            printf "samples %d; first %.1f MB, after 10 s %.1f MB, min %.1f MB, max %.1f MB, last %.1f MB; drift after warm-up (median of the last 10 s minus median of s 11-20) %+.1f MB",
              NR, v[1]/1024, w/1024, mn/1024, mx/1024, v[NR]/1024, (late-early)/1024}' "$1"
}

# the same drift for RSS less the trace store's bytes (kB series of equal length)
rss_less_trace() { paste "$1" "$2" | awk '{print $1 - $2}'; }

step "sustained pub/sub 1:1 for ${SUSTAIN}s against the gateway, RSS each second"
sustained "$GW_PID" "$NEXUS://$GW_ADDR" sustained-nexus "$GW_METRICS"
cat "$WORK/sustained-nexus.md"
step "sustained pub/sub 1:1 for ${SUSTAIN}s against nats-server, RSS each second"
sustained "$NATS_PID" "nats://$NATS_ADDR" sustained-nats
cat "$WORK/sustained-nats.md"

# idle_memory PID TARGET: RSS delta per connection (bytes) for IDLE idle connections.
idle_memory() {
  local pid=$1 target=$2 before after
  sleep 1
  before="$(rss_kb "$pid")"
  "$BIN/nexus-load" idle --target "$target" --connections "$IDLE" --hold 4 >"$WORK/idle.out" 2>&1 &
  local load=$!
  wait_for "$WORK/idle.out" '^ready' >/dev/null
  sleep 2
  after="$(rss_kb "$pid")"
  wait "$load"
  echo "$before $after" | awk -v n="$IDLE" '{printf "%.1f MB -> %.1f MB: %.1f KiB per connection", $1/1024, $2/1024, ($2-$1)/n}'
}

step "memory per idle connection ($IDLE connections), on fresh servers"
stop "$GW_PID"; stop "$NATS_PID"
start_gateway gw-idle
IDLE_NEXUS="$(idle_memory "$GW_PID" "$NEXUS://$GW_ADDR")"
start_nats nats-idle
IDLE_NATS="$(idle_memory "$NATS_PID" "nats://$NATS_ADDR")"
echo "nexus: $IDLE_NEXUS; nats: $IDLE_NATS" >&2

# The same gateway over gRPC, for the transport every adapter speaks (the rows above use
# $NEXUS://, the native transport unless NEXUS_TRANSPORT=grpc).
if [ "$NEXUS" != nexus ]; then
  step "Nexus over gRPC: pub/sub 1:1, request/reply at 1 in flight, idle memory"
  stop "$GW_PID"; stop "$NATS_PID"
  start_gateway gw-grpc
  "$BIN/nexus-load" pubsub --target "nexus://$GW_ADDR" --target "$NEXUS://$GW_ADDR" \
    --duration "$DURATION" --payload "$PAYLOAD" --json-out "$WORK/grpc-pubsub.json" >"$WORK/grpc.md"
  "$BIN/nexus-load" request --target "nexus://$GW_ADDR" --target "$NEXUS://$GW_ADDR" \
    --concurrency 1 --duration "$DURATION" --payload "$PAYLOAD" \
    --json-out "$WORK/grpc-request.json" | tail -n +3 | grep -v '^$' >>"$WORK/grpc.md"
  stop "$GW_PID"
  start_gateway gw-grpc-idle
  IDLE_GRPC="$(idle_memory "$GW_PID" "nexus://$GW_ADDR")"
  cat "$WORK/grpc.md"
fi

step "the cost of a hop between gateways and between regions ($HOP_RUNS runs)"
stop "$GW_PID"; stop "$NATS_PID"
NEXUS_BIN_DIR="$BIN" OUT="$WORK/hop.md" RUNS="$HOP_RUNS" DURATION="$DURATION" PAYLOAD="$PAYLOAD" \
  bash load-tests/run-cluster-hop.sh >/dev/null
sed -n '/^| scenario | path /,/^$/p' "$WORK/hop.md" >"$WORK/hop-medians.md"
[ -s "$WORK/hop-medians.md" ] || { echo "run-cluster-hop.sh wrote no medians table:" >&2; cat "$WORK/hop.md" >&2; exit 1; }

if [ "$SCALE" != 0 ]; then
  step "scale curves: subject tables and sessions growing"
  NEXUS_BIN_DIR="$BIN" OUT="$WORK/scale.md" DURATION="$DURATION" PAYLOAD="$PAYLOAD" \
    bash load-tests/run-scale.sh >/dev/null
fi

step "writing $OUT"
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
MEM="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
NATS_VERSION="$("$NATS_BIN" --version 2>&1 | head -n1)"
{
  echo "<!-- BEGIN GENERATED by load-tests/run-comparison.sh; edits inside are overwritten -->"
  echo "## Results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- Machine: $(nproc) CPUs ($CPU), $MEM RAM, $(uname -sr)"
  echo "- Versions: $(rustc --version), nexus $(git describe --always --dirty 2>/dev/null || echo '?'), $NATS_VERSION"
  echo "- Load: ${PAYLOAD}-byte payloads, ${DURATION} s per scenario, one gateway and one nats-server"
  echo "  (Nexus targets: \`$NEXUS://\`$([ "$NEXUS" = nexus ] && echo ', gRPC' || echo ', the native transport'))"
  echo "  with default settings, load generator on the same machine; open loop at ${OPEN_RATE} requests/s."
  echo
  echo "### Comparison suite"
  echo
  echo "Latency is from the send time stamped in the payload to delivery (pub/sub) or from the"
  echo "request to its reply; for the open loop, from the intended send time. Ratio rows are"
  echo "nexus/nats: above 1× Nexus is faster for msgs/s and MB/s, slower for latencies."
  echo
  cat "$WORK/compare.md"
  echo
  echo "### Large payloads (pub/sub 1:1, ${DURATION} s per size)"
  echo
  echo "Both servers with their payload limit raised to 4 MiB; the Nexus client's payload"
  echo "compression off (\`NEXUS_LOAD_COMPRESSION=off\`: by default it compresses payloads of 1 KiB"
  echo "or more with zstd, and this filler shrinks to a few bytes). Between the frame it arrived in"
  echo "and the frames that carry it out, the gateway does not copy a payload"
  echo "(\`gateway/tests/no_copy.rs\`): its bytes are copied when tonic assembles the received"
  echo "message and when the outbound batch is encoded, nowhere in between."
  echo
  cat "$WORK/large.md"
  echo
  echo "### Sustained pub/sub 1:1 (${SUSTAIN} s), server RSS sampled every second"
  echo
  echo "- Nexus gateway: $(rss_summary "$WORK/sustained-nexus.rss")"
  echo "- its message trace store (\`nexus_trace_bytes\`, bounded by \`trace.max_bytes\`, 16 MiB by"
  echo "  default; 1 in 1000 messages recorded): $(rss_summary "$WORK/sustained-nexus.trace")"
  rss_less_trace "$WORK/sustained-nexus.rss" "$WORK/sustained-nexus.trace" >"$WORK/sustained-nexus.rest"
  echo "- the gateway's RSS less its trace store: $(rss_summary "$WORK/sustained-nexus.rest")"
  echo "- nats-server: $(rss_summary "$WORK/sustained-nats.rss")"
  echo
  cat "$WORK/sustained-nexus.md"
  tail -n +3 "$WORK/sustained-nats.md"
  echo
  echo "Gateway RSS series (MB, one sample per second):"
  echo
  echo '```'
  awk '{printf "%.1f ", $1/1024} END {print ""}' "$WORK/sustained-nexus.rss" | fold -s -w 96
  echo '```'
  echo
  echo "Its trace store (MB, the same seconds):"
  echo
  echo '```'
  awk '{printf "%.1f ", $1/1024} END {print ""}' "$WORK/sustained-nexus.trace" | fold -s -w 96
  echo '```'
  echo
  echo "### Memory per idle connection ($IDLE connections, fresh server)"
  echo
  echo "- Nexus gateway: $IDLE_NEXUS"
  echo "- nats-server: $IDLE_NATS"
  echo
  if [ -s "$WORK/grpc.md" ]; then
    echo "### Nexus over gRPC and over the native transport (same gateway, ${DURATION} s each)"
    echo
    echo "The rows above measure Nexus over the native transport (\`nexus+tcp://\`, docs/protocol.md"
    echo "§1.1); every adapter also speaks gRPC, which these rows measure beside it (nexus:// is gRPC)."
    echo
    cat "$WORK/grpc.md"
    echo
    echo "- Memory per idle session over gRPC: $IDLE_GRPC"
    echo
  fi
  echo "### The cost of a hop (Nexus only; medians of $HOP_RUNS runs of load-tests/run-cluster-hop.sh)"
  echo
  echo "The same paths on one gateway, across two gateways of one region (a cluster hop) and"
  echo "across two regions (a federation hop), QUIC on loopback, no emulated delay. Request/reply"
  echo "crosses the hop twice (the request and its reply)."
  echo
  cat "$WORK/hop-medians.md"
  if [ -s "$WORK/scale.md" ]; then
    echo
    echo "### Scale: subject tables and sessions (load-tests/run-scale.sh)"
    echo
    echo "Pub/sub 1:1 and request/reply (1 in flight) while each server holds background"
    echo "sessions and subscriptions that no benchmark message matches (literal subjects, or"
    echo "wildcard patterns sharing the benchmark subjects' first token); Nexus then NATS per row."
    echo
    cat "$WORK/scale.md"
  fi
  echo "<!-- END GENERATED -->"
} >"$WORK/generated.md"

if [ -f "$OUT" ] && grep -q '^<!-- BEGIN GENERATED' "$OUT"; then
  awk -v gen="$WORK/generated.md" '
    /^<!-- BEGIN GENERATED/ {while ((getline l < gen) > 0) print l; skip=1; next}
    /^<!-- END GENERATED/ {skip=0; next}
    !skip {print}' "$OUT" >"$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
else
  { echo "# Benchmarks: Nexus and NATS"; echo; cat "$WORK/generated.md"; } >"$OUT"
fi
echo "wrote $OUT" >&2
