# Reliability: `make memcheck` (the C tests under valgrind, against a real Milter) and
# `make fuzz` (every cargo-fuzz target for FUZZ_SECONDS). See docs/reliability.md.

ABUSE          := build/abuse
GUARD          := build/guard
BMI_ABUSE      := build/bmi_abuse
BMI_MTA        := build/bmi_mta
LOAD_MILTER    := tests/milters/load_milter.py
VALGRIND       ?= valgrind
VALGRIND_FLAGS ?= --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
                  --show-leak-kinds=definite --track-fds=no --num-callers=30
# The streamed message of the abuse suite (MB); 100 is the issue's size, and valgrind takes it.
MEMCHECK_BIG_MB ?= 100
# The generated body bmi_mta pushes in 4 KB chunks under valgrind (MB).
MEMCHECK_BMI_MB ?= 20
FUZZ_SECONDS   ?= 60
FUZZ_TARGETS   := decode_reply decode_optneg config_parse verdict_build conversation bmi_verdict_str
# cargo-fuzz passes -Z flags (sanitizers) that only nightly accepts; this machine has one stable
# toolchain, which accepts them with RUSTC_BOOTSTRAP=1.
# The fuzz builds are instrumented by cargo-fuzz: without the profile-guided flag (mk/pgo.mk).
FUZZ_CARGO     ?= RUSTC_BOOTSTRAP=1 RUSTFLAGS="$(RUSTFLAGS_BASE)" $(CARGO) fuzz

.PHONY: memcheck fuzz fuzz-build

# The C tests load the library through the MTA-side loaders of tools/ (MTA_C: tools/mta.c for
# the spamfilter_* names; BMI_C: tools/bmi_load.c for the BMI ones), as spamfilter-load does.
$(ABUSE): c_tests/abuse.c $(MTA_C)
	@mkdir -p build
	$(CC) $(CFLAGS) -Itools -o $@ c_tests/abuse.c tools/mta.c -ldl -pthread

$(GUARD): c_tests/guard.c $(MTA_C)
	@mkdir -p build
	$(CC) $(CFLAGS) -Itools -o $@ c_tests/guard.c tools/mta.c -ldl

BMI_C := tools/bmi_load.c tools/bmi_load.h c_tests/bmi_test.h include/bmi_api.h

$(BMI_ABUSE): c_tests/bmi_abuse.c $(BMI_C)
	@mkdir -p build
	$(CC) $(CFLAGS) -Itools -o $@ c_tests/bmi_abuse.c tools/bmi_load.c -ldl

$(BMI_MTA): c_tests/bmi_mta.c $(BMI_C)
	@mkdir -p build
	$(CC) $(CFLAGS) -Itools -o $@ c_tests/bmi_mta.c tools/bmi_load.c -ldl

## memcheck: the C programs (c_tests/abuse.c, c_tests/guard.c, tools/loader.c, also with
## --option-dat: the BMI path as Messaging Server, two slots on threads, and the BMI ones
## c_tests/bmi_abuse.c, c_tests/bmi_mta.c) under valgrind memcheck against the pymilter
## load Milter: any memory error or definitely lost block fails.
## (With --option-dat, message 2 is a Milter tempfail: slot 1, optional=0, defers it: exit 1.)
memcheck: $(LIB) $(LOADER) $(ABUSE) $(GUARD) $(BMI_ABUSE) $(BMI_MTA)
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
	echo "memcheck: short structs before a guard page (no self-check: its fault is deliberate)"; \
	$(VALGRIND) $(VALGRIND_FLAGS) $(GUARD) $(LIB) "$$work/load.opt" --no-self-check; \
	for n in 0 1 2 3; do \
		printf 'Subject: load %s\r\nFrom: a@example.org\r\n\r\nbody %s\r\n' $$n $$n > "$$work/msg$$n.eml"; \
		echo "memcheck: loader, message $$n (buffer and stream)"; \
		$(VALGRIND) $(VALGRIND_FLAGS) $(LOADER) --quiet --repeat 3 $(LIB) "$$work/load.opt" "$$work/msg$$n.eml"; \
		$(VALGRIND) $(VALGRIND_FLAGS) $(LOADER) --quiet --stream --repeat 3 $(LIB) "$$work/load.opt" "$$work/msg$$n.eml"; \
		echo "memcheck: BMI, message $$n (three Init/Free pairs)"; \
		$(VALGRIND) $(VALGRIND_FLAGS) $(BMI_MTA) $(LIB) "$$work/load.opt" "$$work/msg$$n.eml" \
			--to a@example.org --to b@example.org --optin spam:virus --repeat 3 >/dev/null; \
	done; \
	printf 'spamfilter1_library=%s\nspamfilter1_config_file=%s\nspamfilter1_string_action=data:,$$U\nspamfilter2_library=%s\nspamfilter2_config_file=%s\nspamfilter2_null_action=data:,discard;\nspamfilter2_optional=1\n' \
		"$(CURDIR)/$(LIB)" "$$work/load.opt" "$(CURDIR)/$(LIB)" "$$work/load.opt" > "$$work/option.dat"; \
	for n in 0 1 2 3; do \
		echo "memcheck: loader as Messaging Server (BMI, two slots at once), message $$n"; \
		rc=0; \
		$(VALGRIND) $(VALGRIND_FLAGS) --error-exitcode=99 $(LOADER) --repeat 3 \
			--rcpt a@example.net --rcpt b@example.net \
			--option-dat "$$work/option.dat" "$$work/msg$$n.eml" > /dev/null || rc=$$?; \
		[ $$rc -eq 0 ] || { [ $$n -eq 2 ] && [ $$rc -eq 1 ]; } || \
			{ echo "memcheck: loader --option-dat, message $$n: exit $$rc" >&2; exit 1; }; \
	done; \
	closed=$$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); \
	mkdir "$$work/bmi"; \
	echo "memcheck: BMI bad calls"; \
	$(VALGRIND) $(VALGRIND_FLAGS) $(BMI_ABUSE) $(LIB) "$$work/bmi" $$closed $$port; \
	echo "memcheck: BMI, $(MEMCHECK_BMI_MB) MB body in 4 KB chunks"; \
	$(VALGRIND) $(VALGRIND_FLAGS) $(BMI_MTA) $(LIB) "$$work/load.opt" "$$work/msg0.eml" \
		--to a@example.org --body-mb $(MEMCHECK_BMI_MB) >/dev/null; \
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

# ---------------------------------------------------------------------------------------------
# test-future: the daemon tests (tests/daemons.rs) with every clock moved FUTURE_DAYS ahead, so
# that a fixture whose outcome depends on its age shows now rather than in a year. The test
# binary and every daemon it starts run under libfaketime (Debian: libfaketime); rspamd, which
# cannot (see tests/support/clock_offset.c), runs under our clock_offset.so with the same offset.
FUTURE_DAYS    ?= 365
FAKETIME_LIB   ?= /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
CLOCK_OFFSET_SO := build/clock_offset.so

.PHONY: test-future

$(CLOCK_OFFSET_SO): tests/support/clock_offset.c
	@mkdir -p build
	$(CC) $(CFLAGS) -shared -fPIC -o $@ $<

test-future: $(CLOCK_OFFSET_SO)
	@test -r $(FAKETIME_LIB) || { echo "test-future: $(FAKETIME_LIB) not found: apt-get install libfaketime" >&2; exit 1; }
	@set -eo pipefail; \
	bin=$$($(CARGO) test --release --test daemons --no-run 2>&1 | sed -n 's/.*Executable tests\/daemons.rs (\(.*\))/\1/p'); \
	test -x "$$bin" || { echo "test-future: no daemons test binary" >&2; exit 1; }; \
	echo "test-future: $$bin with the clock $(FUTURE_DAYS) days ahead"; \
	LD_PRELOAD=$(FAKETIME_LIB) FAKETIME=+$(FUTURE_DAYS)d DONT_FAKE_MONOTONIC=1 \
	CLOCK_OFFSET=$$(( $(FUTURE_DAYS) * 86400 )) RSPAMD_LD_PRELOAD=$(CURDIR)/$(CLOCK_OFFSET_SO) \
		"$$bin" --test-threads=2
