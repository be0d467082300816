# Performance: `make bench` (the library against the ideal client, docs/bench.md) and
# `make callgrind` (the library's own instructions per message).

BENCH          := build/bench
NOOP_MILTER    := build/noop_milter
# Extra arguments for the bench: `make bench BENCH_ARGS=--quick` (a fifth of the messages).
BENCH_ARGS     ?=
CALLGRIND_MSGS ?= 200
# e.g. CALLGRIND_ARGS="--size 10485760 --noreply": one size (streamed above 1 MiB), NR_* Milter;
# --bmi: through the BMI face.
CALLGRIND_ARGS ?=
CALLGRIND_OUT  := build/callgrind.out

.PHONY: callgrind

# The bench's sources (bench/README.md: one concern per file) and the MTA-side code it shares
# with the loader (MTA_C, wherever the Makefile keeps it).
BENCH_SRC      := $(wildcard bench/*.c) $(filter %.c,$(MTA_C)) tools/bmi_load.c
BENCH_HDR      := $(wildcard bench/*.h) $(filter %.h,$(MTA_C)) tools/bmi_load.h
BENCH_MTA_DIR  := $(filter-out include,$(sort $(patsubst %/,%,$(dir $(filter %.h,$(MTA_C))))))
BENCH_INC      := $(addprefix -I,bench build $(BENCH_MTA_DIR))
# What the library offers in OPTNEG and its default macro lists, printed from the crate by
# bench/consts.rs, so that the ideal client never holds a stale hand-made copy. Rewritten only
# when it changes, so that the bench is not rebuilt for nothing.
BENCH_CONSTS   := build/bench-consts.h

$(BENCH_CONSTS): FORCE
	@mkdir -p build
	$(CARGO) build --release --example bench_consts
	@target/release/examples/bench_consts > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi

# -rdynamic: the library (dlopen'ed) must resolve send/recv/... to the bench's counting wrappers.
$(BENCH): $(BENCH_SRC) $(BENCH_HDR) $(BENCH_CONSTS)
	@mkdir -p build
	$(CC) $(CFLAGS) $(BENCH_INC) -rdynamic -o $@ $(BENCH_SRC) -ldl -pthread -lm

$(NOOP_MILTER): tests/milters/noop_milter.c
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ tests/milters/noop_milter.c -lmilter -pthread

## bench: messages per second and latency at 1, 4 and 16 threads, 2 KB and 100 KB, against the
## no-op Milter (both modes) and opendkim, beside the ideal client; round trips and writes
## counted; the 100 MiB streamed message. About 3 minutes on 2 cores. See docs/bench.md.
bench: $(LIB) $(BENCH) $(NOOP_MILTER)
	@test -e /usr/include/libmilter/mfapi.h || { echo "bench: libmilter-dev missing: apt-get install libmilter-dev" >&2; exit 1; }
	@command -v opendkim >/dev/null && command -v opendkim-genkey >/dev/null || { echo "bench: opendkim missing: apt-get install opendkim opendkim-tools" >&2; exit 1; }
	@$(MAKE) --no-print-directory pgo-status
	$(BENCH) $(BENCH_ARGS) $(LIB) $(NOOP_MILTER)

## callgrind: the library's own CPU cost: CALLGRIND_MSGS messages (2 KB, 1 thread, no-op Milter
## answering every stage) under callgrind, counting only inside the bench's message loop; the
## instructions attributed to libmilter_spamfilter.so (its own, inlined code included, from the
## raw callgrind file) divided by the messages. callgrind_annotate's listing is kept in build/.
callgrind: $(LIB) $(BENCH) $(NOOP_MILTER)
	@command -v valgrind >/dev/null || { echo "callgrind: valgrind not found: apt-get install valgrind" >&2; exit 1; }
	@set -e; rm -f $(CALLGRIND_OUT) build/callgrind.log; \
	valgrind --tool=callgrind --collect-atstart=no --toggle-collect=callgrind_messages \
		--callgrind-out-file=$(CALLGRIND_OUT) --log-file=build/callgrind.log \
		$(BENCH) --callgrind $(CALLGRIND_MSGS) $(CALLGRIND_ARGS) $(LIB) $(NOOP_MILTER) | tee build/callgrind.txt; \
	msgs=$$(sed -n 's/^messages: //p' build/callgrind.txt); \
	callgrind_annotate --inclusive=no --threshold=100 $(CALLGRIND_OUT) \
		> build/callgrind.annotate 2> build/callgrind.annotate.log; \
	echo "callgrind_annotate: $$(sed -n 's/ *(100.0%) *PROGRAM TOTALS//p' build/callgrind.annotate) instructions in all (listing: build/callgrind.annotate)"; \
	$(BENCH) --callgrind-report $(CALLGRIND_OUT) $$msgs libmilter_spamfilter.so
