#!/bin/sh
# Runs the examples against a real fanoutd: examples/worker serves the agent
# fanout-c-demo (children on echo), examples/submit sends it 3 tasks and
# writes the results; then an OpenAI Batch file straight to echo, bad
# arguments, and the worker's drain on SIGTERM.
#
#   sh tests/examples.sh SUBMIT WORKER      ($FANOUTD: the daemon binary)
set -u
SUBMIT=$1
WORKER=$2
FANOUTD=${FANOUTD:-../../.build/debug/fanoutd}
pass=0
fail=0
check() { # check NAME COMMAND...
    name=$1
    shift
    if "$@"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: examples: $name"
    fi
}

dir=$(mktemp -d "${TMPDIR:-/tmp}/fanout-c-examples.XXXXXX") || exit 1
daemon=
worker=
cleanup() {
    [ -n "$worker" ] && kill -KILL "$worker" 2>/dev/null
    [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [ ! -x "$FANOUTD" ]; then
    echo "FAIL: examples: no fanoutd at $FANOUTD"
    echo "examples: 0 of 1 checks passed"
    exit 1
fi
sock=$dir/fanoutd.sock
# A short lease: the worker "works" 1.5 s per task and must heartbeat meanwhile.
printf '{"worker_lease_ms":900,"agents":[{"name":"echo","runner":"echo","concurrency":16}]}\n' > "$dir/config.json"
"$FANOUTD" --socket "$sock" --db "$dir/fanout.db" --config "$dir/config.json" --log-level warning \
    > "$dir/fanoutd.log" 2>&1 &
daemon=$!
i=0
while [ ! -S "$sock" ] && [ $i -lt 300 ]; do
    sleep 0.05
    i=$((i + 1))
done
check "fanoutd started" test -S "$sock"

# The worker, then 3 tasks for it.
"$WORKER" -s "$sock" -n 3 -d 1500 2> "$dir/worker.log" &
worker=$!
i=0
while ! grep -q 'worker: serving' "$dir/worker.log" 2>/dev/null && [ $i -lt 300 ]; do
    sleep 0.05
    i=$((i + 1))
done
check "worker registered" grep -q 'worker: serving' "$dir/worker.log"
cat > "$dir/in.jsonl" <<'EOF'
{"custom_id": "task-a", "payload": {"q": "alpha"}}

{"payload": "beta \u00e9", "custom_id": "task-\"b\""}
{"custom_id": "task-c", "payload": [1, 2, {"x": null}], "extra": true}
EOF
timeout 60 "$SUBMIT" -s "$sock" -o "$dir/out.jsonl" fanout-c-demo "$dir/in.jsonl" 2> "$dir/submit.log"
check "submit to the worker exits 0" test $? -eq 0
check "3 results, completed at the first attempt (heartbeats kept the lease)" \
    test "$(grep -c '"status":"completed","attempt":1,' "$dir/out.jsonl" 2>/dev/null)" = 3
check "no report refused" test -z "$(grep refused "$dir/worker.log")"
check "each combines 3 child results" \
    test "$(grep -c '"children":\[{"index":0,.*{"index":1,.*{"index":2,.*\],"completed":3,"failed":0}' \
        "$dir/out.jsonl" 2>/dev/null)" = 3
check "children carry the parent payload" grep -q '"custom_id":"task-a".*"parent":{"q": "alpha"}' "$dir/out.jsonl"
check "escaped custom_id round-trips" grep -q '"custom_id":"task-\\"b\\""' "$dir/out.jsonl"
check "progress reaches 3/3" grep -q '100.0%  3/3 done' "$dir/submit.log"

# OpenAI Batch input, straight to echo, results on stdout.
printf '%s\n' '{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}' \
    > "$dir/openai.jsonl"
timeout 60 "$SUBMIT" -s "$sock" echo "$dir/openai.jsonl" > "$dir/openai.out" 2> "$dir/openai.log"
check "OpenAI Batch submit exits 0" test $? -eq 0
check "OpenAI Batch output line" \
    grep -q '^{"id":"fanout-task-[0-9]*","custom_id":"r1","response":{"status_code":200,.*"body":{"model":"m","messages":\[\]}},"error":null}$' \
    "$dir/openai.out"

# Bad arguments and bad input.
"$SUBMIT" > /dev/null 2> "$dir/usage.log"
check "submit without arguments: usage, exit 2" test $? -eq 2 -a -n "$(grep usage: "$dir/usage.log")"
printf '{"custom_id": "x"}\n' > "$dir/bad.jsonl"
"$SUBMIT" -s "$sock" echo "$dir/bad.jsonl" 2> "$dir/bad.log"
check "a line without payload is refused" test $? -eq 2 -a -n "$(grep 'bad.jsonl:1: no "payload"' "$dir/bad.log")"
"$WORKER" -n x > /dev/null 2>&1
check "worker with a bad -n: exit 2" test $? -eq 2

# SIGTERM drains the worker, which exits 0.
kill -TERM "$worker"
wait "$worker"
status=$?
worker=
check "worker drains and exits 0 on SIGTERM" test $status -eq 0 -a -n "$(grep 'worker: stopped' "$dir/worker.log")"

if [ $fail -ne 0 ]; then
    for f in submit.log worker.log out.jsonl openai.out fanoutd.log; do
        echo "--- $f"
        tail -n 20 "$dir/$f" 2>/dev/null
    done
fi
echo "examples: $pass of $((pass + fail)) checks passed"
[ $fail -eq 0 ]
