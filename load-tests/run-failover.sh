#!/usr/bin/env bash
# How fast a region that dies is noticed, and what it costs requesters: three federated
# regions on this machine with the WAN emulator on every link (A-B 5 ms one way, A-C 20 ms),
# responders in B (nearest) and C, requests from A at 2, 50 and 500 per second on a
# `local_first` route, then `kill -9` of B's gateway. For each run: when A's status showed B
# down, the gap until requests were answered again (by C), how many failed, and how many
# failed although sent after the detection (the goal is none). Writes the table into
# docs/federation.md between the FAILOVER markers. Everything runs on 127.0.0.1 and is
# stopped at the end (the test harness kills every process it started).
#
# Knobs (environment): RUNS per rate (default 3), OUT (default docs/federation.md), PROFILE
# (release or debug, default release: detection is timer-bound, so a debug build measures the
# same detection but slower request handling).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-docs/federation.md}"
export NEXUS_CACHE="${NEXUS_CACHE:-$HOME/.cache/nexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NEXUS_CACHE/target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

table="$(mktemp)"
trap 'rm -f "$table"' EXIT
echo "==> measuring failover after kill -9 ($RUNS runs per rate, $PROFILE build)" >&2
flags=(--quiet); [ "$PROFILE" = release ] && flags+=(--release)
RUNS="$RUNS" cargo test "${flags[@]}" --test federation_failures failover_measurement \
  -- --ignored --nocapture --test-threads 1 2>/dev/null | grep '^|' > "$table"
cat "$table"

commit="$(git rev-parse --short HEAD)"
python3 - "$OUT" "$table" "$commit" "$(nproc)" "$PROFILE" <<'PY'
import sys, datetime
out, table, commit, cores, profile = sys.argv[1:]
doc = open(out).read()
begin, end = "<!-- FAILOVER:BEGIN -->", "<!-- FAILOVER:END -->"
if begin not in doc or end not in doc:
    sys.exit(f"{out} has no {begin} ... {end} markers")
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
body = f"{begin}\nMeasured by `load-tests/run-failover.sh` at {commit}, {when}, {profile} build, on {cores} cores:\n\n{open(table).read()}{end}"
head, rest = doc.split(begin, 1)
open(out, "w").write(head + body + rest.split(end, 1)[1])
PY
echo "==> table written to $OUT" >&2
