# milter-spamfilter: `make run` (the main job) and `make test` (the whole suite) come first.

CARGO   ?= cargo
CC      ?= cc
CFLAGS  ?= -std=c11 -O2 -g
CFLAGS  += -Wall -Wextra -Werror -Iinclude
PREFIX  ?= /usr/local
DESTDIR ?=

LIB     := target/release/libmilter_spamfilter.so
LOADER  := build/spamfilter-load
DEMO    := target/release/examples/demo_milter

.PHONY: all run test header lib demo bench memcheck fmt lint clean FORCE

all: $(LIB) $(LOADER)

# Cargo decides what is stale; make only asks.
$(LIB): FORCE
	$(CARGO) build --release --lib

## header: regenerate include/milter_spamfilter.h from src/ffi.rs (then commit it).
header:
	MILTER_SPAMFILTER_WRITE_HEADER=1 $(CARGO) build --release --lib

$(LOADER): c_tests/loader.c include/milter_spamfilter.h
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ c_tests/loader.c -ldl

$(DEMO): FORCE
	$(CARGO) build --release --example demo_milter

## run: build the library, start the bundled demo Milter on loopback, run every sample message
## in examples/messages through the library as an MTA loads it, print each verdict.
run: all $(DEMO)
	@sh scripts/run-demo.sh $(LIB) $(LOADER) $(DEMO)

## test: the whole suite: Rust unit and integration tests against real Milters, the C tests
## (c_tests/, driven by tests/abi_abuse.rs), and the C programs under valgrind (make memcheck).
test: all
	$(CARGO) test --release --all-targets
	$(MAKE) --no-print-directory memcheck

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
