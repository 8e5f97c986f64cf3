#!/usr/bin/env bash
# Starts and stops the example's processes for Terraform (terraform_data + local-exec):
#   nexus-proc.sh start NAME DIR HOST:PORT -- COMMAND...   start COMMAND detached, its pid in
#       DIR/NAME.pid and its output in DIR/NAME.log; wait until HOST:PORT accepts connections
#       and, if READY_FILE is set, that file exists (fails, with the log's tail, if it exits or
#       is not up within 60 s). Before starting, the
#       files named by WRITE_PATH_<n> / WRITE_CONTENT_<n> / WRITE_MODE_<n> (n = 0..9) are written.
#   nexus-proc.sh stop NAME DIR    SIGTERM, then SIGKILL after 20 s; waits until it is gone.
#   nexus-proc.sh clean DIR        removes what start left in DIR (pid files, logs, cp/, etc/,
#       state/) and DIR itself when it is then empty.
set -euo pipefail

die() { echo "nexus-proc: $*" >&2; exit 1; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

case "${1:-}" in
start)
    [[ $# -ge 6 && "$5" == "--" ]] || die "usage: $0 start NAME DIR HOST:PORT -- COMMAND..."
    name=$2 dir=$3 ready=$4
    shift 5
    mkdir -p "$dir"
    pidfile="$dir/$name.pid" log="$dir/$name.log"
    if [[ -f "$pidfile" ]] && alive "$(cat "$pidfile")"; then
        echo "$name already running (pid $(cat "$pidfile"))"
        exit 0
    fi
    for n in 0 1 2 3 4 5 6 7 8 9; do
        path_var="WRITE_PATH_$n" content_var="WRITE_CONTENT_$n" mode_var="WRITE_MODE_$n"
        [[ -n "${!path_var:-}" ]] || continue
        mkdir -p "$(dirname "${!path_var}")"
        (umask 077; printf '%s' "${!content_var}" > "${!path_var}")
        chmod "${!mode_var:-0600}" "${!path_var}"
    done
    RUST_LOG=${RUST_LOG:-info} setsid "$@" >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    host=${ready%:*} port=${ready##*:}
    for _ in $(seq 1 600); do
        if ! alive "$pid"; then
            tail -n 20 "$log" >&2 || true
            die "$name exited during start (log: $log)"
        fi
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && [[ -z "${READY_FILE:-}" || -s "${READY_FILE:-}" ]]; then
            echo "$name up (pid $pid, $ready)"
            exit 0
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
    die "$name did not accept connections on $ready within 60 s (log: $log)"
    ;;
stop)
    [[ $# -eq 3 ]] || die "usage: $0 stop NAME DIR"
    name=$2 dir=$3
    pidfile="$dir/$name.pid"
    [[ -f "$pidfile" ]] || { echo "$name: no pid file, nothing to stop"; exit 0; }
    pid=$(cat "$pidfile")
    # Only our process: a recycled pid running something else is left alone.
    if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nexus; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 200); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "$name did not stop within 20 s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$pidfile"
    echo "$name stopped"
    ;;
clean)
    [[ $# -eq 2 ]] || die "usage: $0 clean DIR"
    dir=$2
    [[ -d "$dir" ]] || exit 0
    rm -rf "$dir"/cp "$dir"/etc "$dir"/state
    rm -f "$dir"/*.pid "$dir"/*.log
    rmdir "$dir" 2>/dev/null || echo "left $dir: it holds files this script did not make"
    ;;
*)
    die "usage: $0 start NAME DIR HOST:PORT -- COMMAND... | stop NAME DIR | clean DIR"
    ;;
esac
