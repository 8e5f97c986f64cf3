#!/usr/bin/env bash
# Throughput of one region of 1, 2 and 3 gateways, clients spread over them, on this machine.
# For each size N: `nexus dev --regions bench --gateways-per-region N` (a cluster linked over
# QUIC with mutual TLS, found through the embedded control plane), then N load generators at
# once, one per gateway, each a publisher and a subscriber on its own subject, unpaced:
#   - "local": generator i publishes and subscribes on gateway i (the region's gateways share
#     the work, no hop);
#   - "spread": generator i publishes on gateway i and subscribes on gateway i+1 (every
#     message crosses one cluster hop).
# The row is the sum over the generators (delivered msgs/s, lost) and the worst p99. Writes
# the table into docs/benchmarks.md between the CLUSTER-THROUGHPUT markers with a release
# build; with PROFILE=debug it only prints (a smoke run of the script, not figures).
# Everything it starts is stopped on exit; traffic goes only to 127.0.0.1.
#
# Knobs (environment): SIZES (default "1 2 3"), DURATION (s per run, default 5), PAYLOAD
# (bytes, default 128), BASE_PORT (default 17100), PROFILE (release or debug), OUT (default
# docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${SIZES:-1 2 3}"
DURATION="${DURATION:-5}"
PAYLOAD="${PAYLOAD:-128}"
BASE_PORT="${BASE_PORT:-17100}"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-docs/benchmarks.md}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
case "$PROFILE" in
  release) BIN="$CARGO_TARGET_DIR/release"; BUILD=(--release) ;;
  debug) BIN="$CARGO_TARGET_DIR/debug"; BUILD=() ;;
  *) echo "PROFILE must be release or debug, not $PROFILE" >&2; exit 2 ;;
esac

WORK="$(mktemp -d)"
PIDS=()
DEV=""
cleanup() {
  local p
  for p in "${PIDS[@]}" $DEV; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}" $DEV; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n==> %s\n' "$*" >&2; }

step "building $PROFILE binaries (nexus, nexus-load)"
cargo build "${BUILD[@]}" --quiet -p nexus -p nexus-load --bin nexus --bin nexus-load

# Sums what the generators of one run delivered: "msgs/s delivered lost sent p99_us".
aggregate() {
  python3 - "$@" <<'PY'
import json, sys
msgs = delivered = lost = sent = errors = 0
p99 = 0.0
for path in sys.argv[1:]:
    data = json.load(open(path))
    results = data if isinstance(data, list) else [data]
    for r in results:
        if r.get("skipped"):
            continue
        msgs += r["msgs_per_s"]; delivered += r["delivered"]; lost += r["lost"]
        sent += r["sent"]; errors += r["errors"]
        p99 = max(p99, r["latency"]["p99_us"])
print(f"{msgs:.0f} {delivered} {lost} {sent} {errors} {p99:.0f}")
PY
}

ROWS="$WORK/rows.md"
: >"$ROWS"
for n in $SIZES; do
  step "nexus dev: one region (bench) of $n gateway(s)"
  port=$((BASE_PORT + 20 * n))
  RUST_LOG=warn "$BIN/nexus" dev --regions bench --gateways-per-region "$n" \
    --dev-dir "$WORK/dev-$n" --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$((port + 10))" \
    --control-plane-listen "127.0.0.1:$((port + 8))" \
    --dns-listen "127.0.0.1:$((port + 9))" --console-listen off \
    >"$WORK/dev-$n.out" 2>"$WORK/dev-$n.err" &
  DEV=$!
  for i in $(seq 1 300); do
    grep -q 'Nexus dev cluster is up' "$WORK/dev-$n.out" 2>/dev/null && break
    [ "$i" = 300 ] && { echo "nexus dev did not come up" >&2; cat "$WORK/dev-$n.out" "$WORK/dev-$n.err" >&2; exit 1; }
    sleep 0.1
  done
  mapfile -t ADAPTERS < <(grep -E '^  region ' "$WORK/dev-$n.out" | sed -E 's#.*adapters http://([0-9.:]+).*#\1#')
  mapfile -t METRICS < <(grep -E '^  region ' "$WORK/dev-$n.out" | sed -E 's#.*metrics http://([0-9.:]+)/metrics.*#\1#')
  [ "${#ADAPTERS[@]}" = "$n" ] || { echo "expected $n gateways:" >&2; cat "$WORK/dev-$n.out" >&2; exit 1; }
  # Every gateway linked to the n-1 others.
  for m in "${METRICS[@]}"; do
    for i in $(seq 1 200); do
      peers=$(curl -sf "http://$m/v1/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("cluster") or []))' 2>/dev/null || echo 0)
      [ "$peers" -ge $((n - 1)) ] && break
      [ "$i" = 200 ] && { echo "gateway $m linked to $peers of $((n - 1)) peers" >&2; exit 1; }
      sleep 0.1
    done
  done
  for arrangement in local spread; do
    [ "$n" = 1 ] && [ "$arrangement" = spread ] && continue
    step "$n gateway(s), $arrangement: $n generator(s) at once"
    files=()
    PIDS=()
    for i in $(seq 0 $((n - 1))); do
      target="nexus://${ADAPTERS[$i]}"
      extra=()
      [ "$arrangement" = spread ] && extra=(--remote "nexus://${ADAPTERS[$(((i + 1) % n))]}")
      f="$WORK/$n-$arrangement-$i.json"
      files+=("$f")
      "$BIN/nexus-load" --json-out "$f" pubsub --target "$target" "${extra[@]}" \
        --duration "$DURATION" --payload "$PAYLOAD" >/dev/null &
      PIDS+=("$!")
    done
    for p in "${PIDS[@]}"; do wait "$p"; done
    PIDS=()
    read -r msgs delivered lost sent errors p99 < <(aggregate "${files[@]}")
    echo "| $n | $arrangement | $n | $msgs | $sent | $delivered | $lost | $errors | $p99 |" | tee -a "$ROWS" >&2
  done
  kill "$DEV" 2>/dev/null || true
  wait "$DEV" 2>/dev/null || true
  DEV=""
done

{
  echo "<!-- BEGIN CLUSTER-THROUGHPUT generated by load-tests/run-cluster-throughput.sh; edits inside are overwritten -->"
  echo "## Throughput of a region of 1, 2 and 3 gateways ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- \`nexus dev --gateways-per-region N\` ($PROFILE build), one region on loopback; N load"
  echo "  generators at once, one per gateway, each one publisher and one subscriber on its own"
  echo "  subject, unpaced, ${PAYLOAD}-byte payloads, ${DURATION} s. *local*: subscriber on the"
  echo "  publisher's gateway; *spread*: on the next gateway (one cluster hop per message)."
  echo "- Sums over the generators; p99 is the worst generator's. nexus"
  echo "  $(git describe --always --dirty 2>/dev/null || echo '?'), $(nproc) CPUs shared by every"
  echo "  gateway, the control plane and every generator: on this machine more gateways cannot add"
  echo "  CPU, so the rows show what a gateway and a hop cost, not how a region of N machines scales."
  echo
  echo "| gateways | arrangement | generators | delivered msgs/s | sent | delivered | lost | errors | p99 (us) |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  cat "$ROWS"
  echo "<!-- END CLUSTER-THROUGHPUT -->"
} >"$WORK/generated.md"

cat "$WORK/generated.md"
if [ "$PROFILE" != release ]; then
  echo "($PROFILE build: not written to $OUT)" >&2
  exit 0
fi
if [ -f "$OUT" ] && grep -q '^<!-- BEGIN CLUSTER-THROUGHPUT' "$OUT"; then
  awk -v gen="$WORK/generated.md" '
    /^<!-- BEGIN CLUSTER-THROUGHPUT/ {while ((getline l < gen) > 0) print l; skip=1; next}
    /^<!-- END CLUSTER-THROUGHPUT/ {skip=0; next}
    !skip {print}' "$OUT" >"$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
else
  { echo; cat "$WORK/generated.md"; } >>"$OUT"
fi
echo "wrote $OUT" >&2
