#!/bin/sh
# make run: start the bundled demo Milter on a free loopback port, filter each sample message in
# examples/messages through the library with the C loader (dlopen, as an MTA loads it), print
# what the Milter decided and the verdict the library made of it, and stop the Milter whatever
# happens. Each message goes through both interfaces: the library's own (spamfilter_*), and the
# Brightmail (BMI) one as Messaging Server calls it (spamfilter-load --option-dat: an MTA option
# file with two slots, both run at once on the message, each slot's verdicts applied with its
# spamfilterN_*_action and spamfilterN_optional). Needs nothing but what `make run` built.
set -eu
LIB=$1 LOADER=$2 DEMO=$3
# The MTA option file names the library by its full path, as option.dat does.
case $LIB in /*) ;; *) LIB=$(pwd)/$LIB ;; esac
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

# Slot 2's option file: the same Milter, header edits addressed by position (CONTEXT_EDITS=0).
sed 's/^! Option file for the demo.*/! Slot 2: the same Milter, edits by position./' \
    "$WORK/milter.opt" >"$WORK/milter2.opt"
echo "CONTEXT_EDITS=0" >>"$WORK/milter2.opt"

# The MTA's option file (Messaging Server's option.dat), its spam-filter slots: slot 1 defers
# the message when its filter fails, slot 2 lets it pass unfiltered.
cat > "$WORK/option.dat" <<DAT
! option.dat for the demo: two spam-filter slots on the demo Milter.
spamfilter1_library=$LIB
spamfilter1_config_file=$WORK/milter.opt
spamfilter1_null_action=data:,discard;
spamfilter1_string_action=data:,\$U
spamfilter1_optional=0
spamfilter2_library=$LIB
spamfilter2_config_file=$WORK/milter2.opt
spamfilter2_null_action=data:,discard;
spamfilter2_string_action=data:,\$U
spamfilter2_optional=1
DAT

echo "Demo Milter listening on 127.0.0.1:$PORT; option file:"
sed 's/^/    /' "$WORK/milter.opt"
echo "The MTA option file of the Messaging Server path (option.dat):"
sed 's/^/    /' "$WORK/option.dat"
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
    # The same message as Messaging Server passes it: both slots at once, BMI names only.
    # Exit code 1 is a deferral (the demo's 04-defer), which is an answer, not a failure.
    rc=0
    "$LOADER" --from alice@example.org --rcpt bob@example.net --client-addr 192.0.2.10 \
        --option-dat "$WORK/option.dat" "$msg" >"$WORK/ms.out" 2>"$WORK/ms.err" || rc=$?
    [ $rc -le 1 ] || status=1
    # The Milter writes its line before it answers, so it is there by now.
    tail -n "+$((seen + 1))" "$WORK/milter.log" | sed 's/^demo_milter: /    milter: /'
    echo "    library, spamfilter_* interface (spamfilter-load):"
    sed 's/^/        /' "$WORK/out" "$WORK/err"
    echo "    library, BMI interface, as Messaging Server (spamfilter-load --option-dat):"
    sed 's/^/        /' "$WORK/ms.out" "$WORK/ms.err"
done
exit $status
