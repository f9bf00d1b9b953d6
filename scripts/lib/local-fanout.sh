# Shared by scripts/demo and scripts/example (sourced, not run): a temporary
# folder with fanoutd on a socket there, an OpenAI-compatible stub server
# (no network needed), and cleanup of everything on exit.
#
#   BIN=<folder>   where the executables are (default .build/debug); a
#                  relative BIN is taken from the current folder if it exists
#                  there, else from the repository root
#
# The caller sets `name` (for messages) and calls: require_executables,
# make_temporary_folder, start_stub, start_fanoutd CONFIG, start_background CMD…

root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-.build/debug}
case $BIN in
  /*) ;;
  *) if [ -d "$PWD/$BIN" ]; then BIN="$PWD/$BIN"; else BIN="$root/$BIN"; fi ;;
esac

dir=
sock=
port=
pid=
background_pids=()

require_executables() {
  for exe in "$@"; do
    if [ ! -x "$BIN/$exe" ]; then
      echo "$name: $BIN/$exe not found; build first (swift build, or make $name)" >&2
      exit 1
    fi
  done
}

make_temporary_folder() {
  # sun_path holds 108 bytes; keep the socket path well under that.
  local tmp=${TMPDIR:-/tmp}
  tmp=${tmp%/}
  local suffix=/fanout-$name.XXXXXX/fanout.sock
  if [ $(( ${#tmp} + ${#suffix} )) -ge 100 ] || [ ! -d "$tmp" ] || [ ! -w "$tmp" ]; then tmp=/tmp; fi
  dir=$(mktemp -d "$tmp/fanout-$name.XXXXXX")
  sock="$dir/fanout.sock"
  if [ "${#sock}" -ge 100 ]; then
    echo "$name: socket path too long (${#sock} bytes): $sock" >&2
    rm -rf "$dir"
    exit 1
  fi
}

cleanup() {
  local status=$?
  trap - EXIT
  for background in "${background_pids[@]}"; do
    kill -TERM "$background" 2>/dev/null || true
    wait "$background" 2>/dev/null || true
  done
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # Give the daemon 10 s to shut down cleanly before forcing it.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name: fanoutd (pid $pid) did not stop within 10 s of SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  fi
  [ -n "$dir" ] && rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log_tail() {
  echo "---- last lines of fanoutd.log ----" >&2
  tail -n 40 "$dir/fanoutd.log" >&2 || true
  echo "-----------------------------------" >&2
}

# Runs a command in the background until cleanup.
start_background() {
  "$@" &
  background_pids+=($!)
}

# The stub answers like an OpenAI server after DELAY_MS (default 150), plus what a request asks for; sets `port`.
start_stub() {
  start_background "$BIN/fanout-openai-stub" --port 0 --delay-ms "${1:-150}" >"$dir/stub.out" 2>&1
  local stub_pid=${background_pids[-1]}
  for _ in $(seq 1 200); do
    port=$(sed -n 's/^listening on \([0-9]*\)$/\1/p' "$dir/stub.out")
    [ -n "$port" ] && return 0
    if ! kill -0 "$stub_pid" 2>/dev/null; then
      echo "$name: the OpenAI stub exited: $(cat "$dir/stub.out")" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$name: the OpenAI stub did not start within 20 s" >&2
  exit 1
}

# Starts fanoutd with the config file CONFIG (extra arguments follow) and waits for its socket.
start_fanoutd() {
  local config=$1
  shift
  "$BIN/fanoutd" --socket "$sock" --db "$dir/fanout.db" --config "$config" "$@" >"$dir/fanoutd.log" 2>&1 &
  pid=$!
  # Wait up to 20 s for the socket to appear.
  for _ in $(seq 1 200); do
    [ -S "$sock" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" && rc=0 || rc=$?
      pid=
      echo "$name: fanoutd exited (status $rc) before creating $sock" >&2
      log_tail
      exit 1
    fi
    sleep 0.1
  done
  echo "$name: fanoutd did not create $sock within 20 s" >&2
  log_tail
  exit 1
}
