#!/bin/sh
# make run: start the bundled demo Milter on a free loopback port, filter each sample message in
# examples/messages through the library with the C loader (dlopen, as an MTA loads it), print
# what the Milter decided and the verdict the library made of it, and stop the Milter whatever
# happens. Needs nothing but what `make run` built.
set -eu
LIB=$1 LOADER=$2 DEMO=$3
WORK=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Port 0: the Milter binds a free port itself and prints it as its first line on stdout, once it
# accepts connections. The files exist before it starts, so the wait below can read them at once.
: >"$WORK/milter.port"
: >"$WORK/milter.log"
"$DEMO" 127.0.0.1:0 >"$WORK/milter.port" 2>"$WORK/milter.log" &
PID=$!

# Wait (at most 10 s) for that line.
i=0
PORT=
while :; do
    if [ "$(wc -l <"$WORK/milter.port")" -ge 1 ]; then
        PORT=$(sed -n '1{/^[0-9][0-9]*$/p;}' "$WORK/milter.port")
        [ -n "$PORT" ] && break
    fi
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$PID" 2>/dev/null; then
        echo "make run: the demo Milter did not start:" >&2
        cat "$WORK/milter.port" "$WORK/milter.log" >&2
        exit 1
    fi
    sleep 0.1
done

cat > "$WORK/milter.opt" <<OPT
! Option file for the demo: the Milter on loopback.
HOST=127.0.0.1
PORT=$PORT
TIMEOUT=500
OPT

echo "Demo Milter listening on 127.0.0.1:$PORT; option file:"
sed 's/^/    /' "$WORK/milter.opt"
status=0
for msg in examples/messages/*.eml; do
    echo
    echo "=== $(basename "$msg"): $(grep -m1 -i '^Subject:' "$msg" || true)"
    seen=$(wc -l <"$WORK/milter.log")
    if ! "$LOADER" --from alice@example.org --rcpt bob@example.net \
        --client-addr 192.0.2.10 --client-name mail.example.org --client-port 40000 \
        --helo mail.example.org --hostname mx.example.net --queue-id "demo$$" \
        "$LIB" "$WORK/milter.opt" "$msg" >"$WORK/out" 2>"$WORK/err"; then
        status=1
    fi
    # The Milter writes its line before it answers, so it is there by now.
    tail -n "+$((seen + 1))" "$WORK/milter.log" | sed 's/^demo_milter: /    milter: /'
    echo "    library (spamfilter-load):"
    sed 's/^/        /' "$WORK/out" "$WORK/err"
done
exit $status
