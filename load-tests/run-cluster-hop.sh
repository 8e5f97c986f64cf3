#!/usr/bin/env bash
# The cost of a hop between gateways, on this machine: `nexus dev` with two regions of two
# gateways each (clusters linked over QUIC with mutual TLS, regions federated over QUIC, all
# found through the embedded control plane), then each scenario over three paths:
#   - "same gateway": publishers and subscribers (requesters and responders) on gateway 1;
#   - "across gateways": publishers on gateway 1, subscribers on gateway 2 of the same region
#     (one cluster hop: issue 18's aim);
#   - "across regions": publishers on gateway 1, subscribers on gateway 1's home in the other
#     region (one federation hop, no emulated delay: issue 19's aim).
# Pub/sub paced at 1000/s and 10000/s (below capacity, so latency is the path's, not a
# queue's); with PAIRED=1 also paired (`nexus-load pubsub --paired`): every message goes to a
# subscriber on gateway 1 and to one across the hop, the same messages at the same moments.
# Paired, both copies arrive at the load generator together (the local one no sooner than the
# remote one, and later than a subscriber alone: docs/benchmarks.md, round 9), so the paired
# difference is not the hop's cost; the rows run on their own are the target's measure
# (issue 19: under 0.3 ms added at p99).
# Request/reply with 1 in flight runs each path on its own. Writes the table into
# docs/benchmarks.md between the CLUSTER-HOP markers (the rest of the file is kept). Everything it starts is
# stopped on exit; traffic goes only to 127.0.0.1.
#
# Knobs (environment): RUNS (default 1: how many times the whole set runs, interleaved, on
# the same cluster; with more than one a table of the medians over the runs is added, since
# on a shared VM one run's p99 swings by several times), DURATION (s per scenario, default 5),
# SAMPLES (default 20000: a paced row runs long enough to send at least this many messages,
# so its p99 is the 200th slowest, not the 50th: at 1000/s for 5 s one slow wake-up of the
# VM moved a p99 by more than the hop costs), PAIRED (default 0; 1 adds the paired pub/sub
# rows), PAYLOAD (bytes, default 128),
# BASE_PORT (default 17000: the dev cluster uses ports from there), OUT (default
# docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-1}"
DURATION="${DURATION:-5}"
SAMPLES="${SAMPLES:-20000}"
PAIRED="${PAIRED:-0}"
PAYLOAD="${PAYLOAD:-128}"
BASE_PORT="${BASE_PORT:-17000}"
OUT="${OUT:-docs/benchmarks.md}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
# NEXUS_BIN_DIR: run prebuilt binaries from there (an A/B against another build) instead of
# building this tree.
BIN="${NEXUS_BIN_DIR:-$CARGO_TARGET_DIR/release}"

# shellcheck source=load-tests/lib.sh
. load-tests/lib.sh

step "building release binaries (nexus, nexus-load)"
[ -n "${NEXUS_BIN_DIR:-}" ] || cargo build --release --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load

step "nexus dev: two regions (bench, far) of two gateways each"
RUST_LOG=warn "$BIN/nexus" dev --regions bench,far --gateways-per-region 2 \
  --dev-dir "$WORK/dev" --listen "127.0.0.1:$BASE_PORT" \
  --metrics-listen "127.0.0.1:$((BASE_PORT + 80))" \
  --control-plane-listen "127.0.0.1:$((BASE_PORT + 90))" \
  --dns-listen "127.0.0.1:$((BASE_PORT + 91))" --console-listen off \
  >"$WORK/dev.out" 2>"$WORK/dev.err" &
PIDS+=("$!")
for i in $(seq 1 300); do
  grep -q 'Nexus dev cluster is up' "$WORK/dev.out" 2>/dev/null && break
  [ "$i" = 300 ] && { echo "nexus dev did not come up" >&2; cat "$WORK/dev.out" "$WORK/dev.err" >&2; exit 1; }
  sleep 0.1
done
mapfile -t ADAPTERS < <(grep -E '^  region ' "$WORK/dev.out" | sed -E 's#.*adapters http://([0-9.:]+).*#\1#')
mapfile -t METRICS < <(grep -E '^  region ' "$WORK/dev.out" | sed -E 's#.*metrics http://([0-9.:]+)/metrics.*#\1#')
mapfile -t IDS < <(grep -E '^  region ' "$WORK/dev.out" | awk '{print $3}')
[ "${#ADAPTERS[@]}" = 4 ] || { echo "expected four gateways:" >&2; cat "$WORK/dev.out" >&2; exit 1; }
GW1="${ADAPTERS[0]}"; GW2="${ADAPTERS[1]}"
# Gateway 1's home in the other region: its federation link there.
HOME_ID=""
for i in $(seq 1 200); do
  ST="$(curl -sf "http://${METRICS[0]}/v1/status" || true)"
  HOME_ID="$(printf '%s' "$ST" | python3 -c 'import json,sys
try:
    s = json.load(sys.stdin)
except Exception:
    sys.exit(0)
links = [l for l in s.get("links", []) if l.get("region") == "far" and l.get("via")]
if s.get("cluster") and links:
    print(links[0]["via"])' 2>/dev/null || true)"
  [ -n "$HOME_ID" ] && break
  [ "$i" = 200 ] && { echo "the cluster and federation links did not come up" >&2; printf '%s\n' "$ST" >&2; exit 1; }
  sleep 0.1
done
GW3=""
for j in 2 3; do [ "${IDS[$j]}" = "$HOME_ID" ] && GW3="${ADAPTERS[$j]}"; done
[ -n "$GW3" ] || { echo "gateway 1's home $HOME_ID is not in the dev cluster:" >&2; cat "$WORK/dev.out" >&2; exit 1; }
echo "gateway 1 $GW1, gateway 2 $GW2, gateway 1's home in the other region $GW3 ($HOME_ID)" >&2

mkdir -p "$WORK/json"
run() { # RUN KEY NAME SECONDS SCENARIO [ARGS...]: the rows of the last run go in the table
  local r=$1 key=$2 name=$3 seconds=$4; shift 4
  "$BIN/nexus-load" "$@" --duration "$seconds" --payload "$PAYLOAD" \
    --json-out "$WORK/json/${key//\//_}|$name|$r.json" >"$WORK/last.md"
  if [ "$r" = "$RUNS" ]; then
    tail -n +3 "$WORK/last.md" | sed -E -e 's/ cross-region//' \
      -e "s/^\| ([^|]*) via target \|/| \1 (same gateway, beside ${name%, paired}) |/" \
      -e "s/^\| ([^|]*) via remote \|/| \1 ($name) |/" \
      -e "/\((same gateway|$name)[^|]*\) \|/!s/^\| ([^|]*)\|/| \1 ($name) |/" >>"$WORK/rows.md"
  fi
}
for r in $(seq 1 "$RUNS"); do
  for rate in 1000 10000; do
    secs=$(( (SAMPLES + rate - 1) / rate )); [ "$secs" -ge "$DURATION" ] || secs=$DURATION
    step "run $r/$RUNS: pub/sub 1:1 paced at ${rate}/s for ${secs}s: same gateway, across gateways, across regions"
    key="pub/sub 1:1 at ${rate}/s"
    run "$r" "$key" "same gateway" "$secs" pubsub --target "$NEXUS://$GW1" --rate "$rate"
    run "$r" "$key" "across gateways" "$secs" pubsub --target "$NEXUS://$GW1" --remote "$NEXUS://$GW2" --rate "$rate"
    run "$r" "$key" "across regions" "$secs" pubsub --target "$NEXUS://$GW1" --remote "$NEXUS://$GW3" --rate "$rate"
    [ "$PAIRED" = 1 ] || continue
    # Paired: every message goes to a subscriber on gateway 1 and one across the hop, so
    # both paths are measured on the same messages in the same moments.
    step "run $r/$RUNS: the same, paired: a subscriber on gateway 1 beside one on gateway 2, then beside one in the other region"
    run "$r" "$key" "across gateways, paired" "$secs" pubsub --target "$NEXUS://$GW1" --remote "$NEXUS://$GW2" --paired --rate "$rate"
    run "$r" "$key" "across regions, paired" "$secs" pubsub --target "$NEXUS://$GW1" --remote "$NEXUS://$GW3" --paired --rate "$rate"
  done
  step "run $r/$RUNS: request/reply, 1 in flight: same gateway, across gateways, across regions"
  key="req/reply closed c=1"
  run "$r" "$key" "same gateway" "$DURATION" request --target "$NEXUS://$GW1" --concurrency 1
  run "$r" "$key" "across gateways" "$DURATION" request --target "$NEXUS://$GW1" --remote "$NEXUS://$GW2" --concurrency 1
  run "$r" "$key" "across regions" "$DURATION" request --target "$NEXUS://$GW1" --remote "$NEXUS://$GW3" --concurrency 1
done
if [ "$RUNS" -gt 1 ]; then
  python3 - "$WORK/json" "$RUNS" >"$WORK/medians.md" <<'PY'
import glob, json, os, statistics, sys
d, runs = sys.argv[1], sys.argv[2]
rows = {}   # (scenario, path) -> [(p50, p99, lost)] over runs
added = {}  # (scenario, path) -> [(p50, p99)]: what the hop added, within one paired run
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    key, path, _ = os.path.basename(f)[:-5].split("|")
    key = key.replace("_", "/")
    data = json.load(open(f))
    data = data if isinstance(data, list) else [data]
    stats = [(r["latency"]["p50_us"], r["latency"]["p99_us"], r["lost"]) for r in data]
    if len(stats) == 2:  # paired: gateway 1's own subscriber, then the one across the hop
        rows.setdefault((key, "same gateway, beside " + path.replace(", paired", "")), []).append(stats[0])
        rows.setdefault((key, path), []).append(stats[1])
        added.setdefault((key, path), []).append((stats[1][0] - stats[0][0], stats[1][1] - stats[0][1]))
    else:
        rows.setdefault((key, path), []).append(stats[0])
def fmt(us):
    sign, us = ("-" if us < 0 else ""), abs(us)
    return sign + (f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs")
def plus(us):
    return ("+" if us >= 0 else "") + fmt(us)
med = lambda xs, i: statistics.median(x[i] for x in xs)
# A path run on its own (every request/reply row, the unpaired pub/sub rows): what a hop
# adds is the difference of the medians over the runs.
for (key, path), v in list(rows.items()):
    base = rows.get((key, "same gateway"))
    if base and not path.startswith("same gateway") and (key, path) not in added:
        added[(key, path)] = [(med(v, 0) - med(base, 0), med(v, 1) - med(base, 1))]
rank = {"same gateway": 0, "across gateways": 1, "across regions": 2,
        "same gateway, beside across gateways": 3, "across gateways, paired": 4,
        "same gateway, beside across regions": 5, "across regions, paired": 6}
print(f"Medians over {runs} runs (each run does every row in turn, on the same cluster). \"Hop")
print("adds\" is the difference from the same-gateway row: for a path run on its own, between the")
print("medians over the runs; for a paired one (\"paired\": each message goes to a subscriber on")
print("gateway 1 and to one across the hop, the same messages at the same moments), the median")
print("over runs of the difference within each run.")
print()
print("| scenario | path | p50 (median) | p99 (median) | p99 (lowest - highest) | hop adds at p50 / p99 | lost (all runs) |")
print("|---|---|---:|---:|---:|---:|---:|")
for (key, path) in sorted(rows, key=lambda k: (k[0], rank.get(k[1], 9))):
    v = rows[(key, path)]
    lo, hi = min(x[1] for x in v), max(x[1] for x in v)
    a = added.get((key, path))
    hop = f"{plus(med(a, 0))} / {plus(med(a, 1))}" if a else ""
    print(f"| {key} | {path} | {fmt(med(v, 0))} | {fmt(med(v, 1))} | {fmt(lo)} - {fmt(hi)} | {hop} | {sum(x[2] for x in v)} |")
PY
fi

step "writing $OUT"
{
  echo "<!-- BEGIN CLUSTER-HOP generated by load-tests/run-cluster-hop.sh; edits inside are overwritten -->"
  echo "## A hop between gateways: of one region, and of two regions ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- \`nexus dev --regions bench,far --gateways-per-region 2\` (release build): two regions"
  echo "  of two gateways, linked over QUIC with mutual TLS on loopback, no emulated delay. Each"
  echo "  scenario runs over three paths: everything on gateway 1 (same gateway);"
  echo "  publishers/requesters on gateway 1 with subscribers/responders on gateway 2 of its"
  echo "  region (across gateways: one cluster hop); and with them on gateway 1's home in the"
  echo "  other region (across regions: one federation hop)."
  if [ "$PAIRED" = 1 ]; then
    echo "- Paired rows: paced pub/sub with one publisher on gateway 1, one subscriber there and"
    echo "  one across the hop, the same messages at the same moments."
  fi
  echo "- ${PAYLOAD}-byte payloads, ${DURATION} s per scenario (a paced row at least ${SAMPLES} messages),"
  echo "  best-effort route (the default),"
  echo "  nexus ${NEXUS_BUILD_LABEL:-$(git describe --always --dirty 2>/dev/null || echo "?")}, $(nproc) CPUs shared by the four"
  echo "  gateways, the control plane and the load generator."
  echo
  if [ -f "$WORK/medians.md" ]; then cat "$WORK/medians.md"; echo; echo "The last run:"; echo; fi
  echo "| scenario | target | msgs/s | MB/s | sent | delivered | lost | errors | p50 | p90 | p99 | p99.9 | max |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  cat "$WORK/rows.md"
  echo "<!-- END CLUSTER-HOP -->"
} >"$WORK/generated.md"

if [ -f "$OUT" ] && grep -q '^<!-- BEGIN CLUSTER-HOP' "$OUT"; then
  awk -v gen="$WORK/generated.md" '
    /^<!-- BEGIN CLUSTER-HOP/ {while ((getline l < gen) > 0) print l; skip=1; next}
    /^<!-- END CLUSTER-HOP/ {skip=0; next}
    !skip {print}' "$OUT" >"$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
else
  { echo; cat "$WORK/generated.md"; } >>"$OUT"
fi
cat "$WORK/generated.md"
echo "wrote $OUT" >&2
