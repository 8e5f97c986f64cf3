# Shared by the load-test scripts (sourced, never run): a scratch directory and the
# processes a script starts, both cleaned up on exit however it exits, and small helpers.
#
#   WORK   a fresh temporary directory, removed on exit
#   PIDS   add every process started in the background; each is killed and reaped on exit
#   NEXUS  the scheme Nexus targets use, from load-tests/scheme.sh (NEXUS_TRANSPORT)

# shellcheck source=load-tests/scheme.sh
. "$(dirname "${BASH_SOURCE[0]}")/scheme.sh"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step TEXT: a progress line on stderr.
step() { printf '\n==> %s\n' "$*" >&2; }

# wait_for FILE PATTERN: waits up to 15 s for a line matching PATTERN, prints it.
wait_for() {
  local i
  for i in $(seq 1 150); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

# find_nats: the path of nats-server, or nothing.
find_nats() { command -v nats-server || ls /usr/sbin/nats-server /usr/bin/nats-server 2>/dev/null | head -n1 || true; }
