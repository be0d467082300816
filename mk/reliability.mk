# Reliability: `make memcheck` (the C tests under valgrind, against a real Milter) and
# `make fuzz` (every cargo-fuzz target for FUZZ_SECONDS). See docs/reliability.md.

ABUSE          := build/abuse
LOAD_MILTER    := tests/milters/load_milter.py
VALGRIND       ?= valgrind
VALGRIND_FLAGS ?= --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
                  --show-leak-kinds=definite --track-fds=no --num-callers=30
# The streamed message of the abuse suite (MB); 100 is the issue's size, and valgrind takes it.
MEMCHECK_BIG_MB ?= 100
FUZZ_SECONDS   ?= 60
FUZZ_TARGETS   := decode_reply decode_optneg config_parse verdict_build conversation
# cargo-fuzz passes -Z flags (sanitizers) that only nightly accepts; this machine has one stable
# toolchain, which accepts them with RUSTC_BOOTSTRAP=1.
FUZZ_CARGO     ?= RUSTC_BOOTSTRAP=1 $(CARGO) fuzz

.PHONY: memcheck fuzz fuzz-build

$(ABUSE): c_tests/abuse.c include/milter_spamfilter.h
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ c_tests/abuse.c -ldl -pthread

## memcheck: the C programs (c_tests/abuse.c, c_tests/loader.c) under valgrind memcheck against
## the pymilter load Milter: any memory error or definitely lost block fails.
memcheck: $(LIB) $(LOADER) $(ABUSE)
	@command -v $(VALGRIND) >/dev/null || { echo "memcheck: valgrind not found: apt-get install valgrind" >&2; exit 1; }
	@/usr/bin/python3 -c 'import Milter' 2>/dev/null || { echo "memcheck: pymilter missing: apt-get install python3-milter" >&2; exit 1; }
	@set -e; \
	work=$$(mktemp -d); \
	port=$$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); \
	/usr/bin/python3 $(LOAD_MILTER) $$port & milter=$$!; \
	trap 'kill $$milter 2>/dev/null; wait $$milter 2>/dev/null; rm -rf "$$work"' EXIT INT TERM; \
	for i in $$(seq 1 100); do \
		/usr/bin/python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$$port),1)" 2>/dev/null && break; \
		sleep 0.1; \
	done; \
	mkdir "$$work/abuse"; \
	echo "memcheck: abuse suite ($(MEMCHECK_BIG_MB) MB streamed message)"; \
	$(VALGRIND) $(VALGRIND_FLAGS) $(ABUSE) $(LIB) "$$work/abuse" $$port --big-mb $(MEMCHECK_BIG_MB) --cycles 10 --no-rss; \
	printf 'HOST=127.0.0.1\nPORT=%s\nTIMEOUT=3000\n' $$port > "$$work/load.opt"; \
	for n in 0 1 2 3; do \
		printf 'Subject: load %s\r\nFrom: a@example.org\r\n\r\nbody %s\r\n' $$n $$n > "$$work/msg$$n.eml"; \
		echo "memcheck: loader, message $$n (buffer and stream)"; \
		$(VALGRIND) $(VALGRIND_FLAGS) $(LOADER) --quiet --repeat 3 $(LIB) "$$work/load.opt" "$$work/msg$$n.eml"; \
		$(VALGRIND) $(VALGRIND_FLAGS) $(LOADER) --quiet --stream --repeat 3 $(LIB) "$$work/load.opt" "$$work/msg$$n.eml"; \
	done; \
	echo "memcheck: clean"

## fuzz-build: build every fuzz target (cargo install cargo-fuzz first).
fuzz-build:
	@command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz not found: cargo install cargo-fuzz" >&2; exit 1; }
	$(FUZZ_CARGO) build -O

## fuzz: run each target for FUZZ_SECONDS (default 60) from the committed corpus. New inputs go
## to build/fuzz-corpus/<target>, crashers to fuzz/artifacts/<target>/ (move a crasher to
## fuzz/regressions/<target>/ to make `cargo test` replay it for ever).
fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p build/fuzz-corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		$(FUZZ_CARGO) run -O $$t build/fuzz-corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done
