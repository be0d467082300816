# milter-spamfilter: `make run` (the main job) and `make test` (the whole suite) come first.

SHELL   := /bin/bash
CARGO   ?= cargo
CC      ?= cc
CFLAGS  ?= -std=c11 -O2 -g
CFLAGS  += -Wall -Wextra -Werror -Iinclude
PREFIX  ?= /usr/local
DESTDIR ?=

LIB     := target/release/libmilter_spamfilter.so
LOADER  := build/spamfilter-load
CHECK   := build/spamfilter-check
DEMO    := target/release/examples/demo_milter

.PHONY: all run test header lib demo bench memcheck fmt lint clean FORCE

all: $(LIB) $(LOADER) $(CHECK)

# Cargo decides what is stale; make only asks.
$(LIB): FORCE
	$(CARGO) build --release --lib

## header: regenerate include/milter_spamfilter.h from src/ffi.rs (then commit it).
header:
	MILTER_SPAMFILTER_WRITE_HEADER=1 $(CARGO) build --release --lib

MTA_C   := tools/mta.c tools/mta.h include/milter_spamfilter.h
# The Messaging Server path of the loader (--option-dat): BMI names only, slots on threads.
MS_C    := tools/msgserver.c tools/ms_slot.c tools/bmi_load.c tools/bmi_feed.c tools/optiondat.c
MS_H    := $(MS_C:.c=.h) include/bmi_api.h

$(LOADER): tools/loader.c $(MTA_C) $(MS_C) $(MS_H)
	@mkdir -p build
	$(CC) $(CFLAGS) -Itools -o $@ tools/loader.c tools/mta.c $(MS_C) -ldl -pthread

# The check tool: in the build tree it defaults to the library built here; `make install`
# builds its own copy pointing at the installed library (always anew: PREFIX may have changed).
$(CHECK): tools/check.c tools/exports.c tools/exports.h $(MTA_C)
	@mkdir -p build
	$(CC) $(CFLAGS) -Itools -DSPAMFILTER_LIBRARY='"$(CURDIR)/$(LIB)"' -o $@ tools/check.c tools/exports.c tools/mta.c -ldl

$(DEMO): FORCE
	$(CARGO) build --release --example demo_milter

## run: build the library, start the bundled demo Milter on loopback, run every sample message
## in examples/messages through the library as an MTA loads it, print each verdict.
run: all $(DEMO)
	@sh scripts/run-demo.sh $(LIB) $(LOADER) $(DEMO)

## test: the whole suite: Rust unit and integration tests against real Milters, the C tests
## (c_tests/, driven by tests/abi_abuse.rs), the daemon tests again with the clock a year ahead
## (make test-future), and the C programs under valgrind (make memcheck).
test: all
	@mkdir -p build
	@set -o pipefail; $(CARGO) test --release --all-targets 2>&1 | tee build/test.log
	@set -o pipefail; $(MAKE) --no-print-directory test-future 2>&1 | tee -a build/test.log
	$(MAKE) --no-print-directory memcheck
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "total: %d passed, %d failed\n", p, f }' build/test.log

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf build

FORCE:

# Further targets (memcheck, bench, install, fuzz ...) live in mk/*.mk, one file per concern.
-include mk/*.mk
