#!/bin/sh
# make run: start the bundled demo Milter on a free loopback port, filter each sample message in
# examples/messages through the library with the C loader (dlopen, as an MTA loads it), print
# each verdict, and stop the Milter whatever happens.
set -eu
LIB=$1 LOADER=$2 DEMO=$3
WORK=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# A free port: ask the kernel for one, then give it to the Milter.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
       || echo 18891)
"$DEMO" "127.0.0.1:$PORT" 2>"$WORK/milter.log" &
PID=$!

cat > "$WORK/milter.opt" <<OPT
! Option file for the demo: the Milter on loopback.
HOST=127.0.0.1
PORT=$PORT
TIMEOUT=500
OPT

# Wait (at most 10 s) until the Milter accepts connections.
i=0
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$PID" 2>/dev/null; then
        echo "make run: the demo Milter did not start:" >&2
        cat "$WORK/milter.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "Demo Milter listening on 127.0.0.1:$PORT; option file:"
sed 's/^/    /' "$WORK/milter.opt"
status=0
for msg in examples/messages/*.eml; do
    echo
    echo "=== $(basename "$msg"): $(grep -m1 -i '^Subject:' "$msg" || true)"
    rcpt=bob@example.net
    grep -qi '^X-Demo-Envelope-To: *discard@' "$msg" && rcpt=$(sed -n 's/^X-Demo-Envelope-To: *//Ip' "$msg" | head -1)
    "$LOADER" --from alice@example.org --rcpt "$rcpt" \
        --client-addr 192.0.2.10 --client-name mail.example.org --client-port 40000 \
        --helo mail.example.org --hostname mx.example.net --queue-id "demo$$" \
        "$LIB" "$WORK/milter.opt" "$msg" | sed 's/^/    /' || status=1
done
exit $status
