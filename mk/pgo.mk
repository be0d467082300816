# Profile-guided optimization: the library is compiled with the profile in pgo/ (LLVM's
# instrumentation profile of the message path, committed like Go's default.pgo), so that the
# compiler lays out and inlines the code a message runs as a message runs it. Every cargo call
# of this Makefile gets the same flag, so the library that `make test` tests, `make bench`
# measures and `make install` installs is one build. Nothing extra is needed to build: rustc
# reads the profile itself. `make pgo-profile` makes it anew (after changes to the message
# path; llvm-profdata of the compiler's LLVM needed). See docs/bench.md, "Profile-guided build".

PGO_PROFILE    := pgo/milter_spamfilter.profdata
PGO_INFO       := pgo/profile.info
# The LLVM that wrote the profile: a compiler whose LLVM is older may not read it.
PGO_LLVM       := $(shell sed -n 's/^llvm //p' $(PGO_INFO) 2>/dev/null)
RUSTC_LLVM     := $(shell rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PGO_GEN_DIR    := target/pgo-gen
# The llvm-profdata that reads what rustc's LLVM writes (looked for only by pgo-profile).
PGO_PROFDATA    = $(shell command -v llvm-profdata-$(RUSTC_LLVM) || command -v llvm-profdata)
PGO_MESSAGES   ?= 2000
# What the profile is made of: the bench's callgrind mode (one thread, no valgrind) through both
# faces, against the no-op Milter in both modes and opendkim, 2 KB, 100 KB and a streamed 10 MB
# message, fresh and kept connections.
PGO_CASES      := "--bmi --noreply" "--bmi" "--noreply" "" \
                  "--bmi --noreply --size 102400" "--size 102400" "--noreply --size 102400" \
                  "--opendkim" "--bmi --opendkim" "--reuse" "--noreply --reuse" \
                  "--noreply --size 10485760" "--bmi --noreply --size 10485760"

# Used only where it helps and can be read: x86_64 (the profile's code), a profile present, and
# a compiler whose LLVM is at least the one that wrote it. `make PGO=0` builds without it.
PGO ?= 1
PGO_USE := $(shell [ "$(PGO)" = 1 ] && [ "$$(uname -m)" = x86_64 ] && [ -f $(PGO_PROFILE) ] \
             && [ -n "$(PGO_LLVM)" ] && [ "$(RUSTC_LLVM)" -ge "$(PGO_LLVM)" ] 2>/dev/null && echo 1)
# A function changed since the profile was made has no profile (its hash differs) and is built
# as without one; the warning for each would only be noise in every build.
PGO_RUSTFLAGS  := $(if $(PGO_USE),-Cprofile-use=$(CURDIR)/$(PGO_PROFILE) -Cllvm-args=-no-pgo-warn-mismatch)
RUSTFLAGS_BASE := $(RUSTFLAGS)
ifneq ($(PGO_USE),)
export RUSTFLAGS := $(strip $(RUSTFLAGS_BASE) $(PGO_RUSTFLAGS))
endif

.PHONY: pgo-profile pgo-status

## pgo-profile: make pgo/milter_spamfilter.profdata anew from the working tree (about a minute):
## an instrumented library runs the bench's message cases, llvm-profdata merges what it counted.
pgo-profile: $(BENCH) $(NOOP_MILTER)
	@[ -n "$(PGO_PROFDATA)" ] && "$(PGO_PROFDATA)" --version | grep -q "LLVM version $(RUSTC_LLVM)\." || { \
		echo "pgo-profile: llvm-profdata of LLVM $(RUSTC_LLVM) (rustc's) missing: apt-get install llvm-$(RUSTC_LLVM)" >&2; exit 1; }
	@command -v opendkim >/dev/null || { echo "pgo-profile: opendkim missing: apt-get install opendkim opendkim-tools" >&2; exit 1; }
	RUSTFLAGS="$(RUSTFLAGS_BASE) -Cprofile-generate=$(CURDIR)/$(PGO_GEN_DIR)/profraw" \
		CARGO_TARGET_DIR=$(PGO_GEN_DIR) $(CARGO) build --release --lib
	@# After the build: its build script is instrumented too, and its counts are not the library's.
	rm -rf $(PGO_GEN_DIR)/profraw
	@set -e; for c in $(PGO_CASES); do \
		echo "pgo-profile: $(BENCH) --callgrind $(PGO_MESSAGES) $$c"; \
		$(BENCH) --callgrind $(PGO_MESSAGES) $$c $(PGO_GEN_DIR)/release/libmilter_spamfilter.so \
			$(NOOP_MILTER) > /dev/null; \
	done
	@made=$$(git rev-parse --short HEAD 2>/dev/null); \
	git diff --quiet HEAD -- src 2>/dev/null || made="$$made-dirty"; \
	mkdir -p pgo && "$(PGO_PROFDATA)" merge --sparse -o $(PGO_PROFILE) $(PGO_GEN_DIR)/profraw/*.profraw && \
	printf 'llvm %s\ncommit %s\n' "$(RUSTC_LLVM)" "$$made" > $(PGO_INFO)
	@echo "pgo-profile: wrote $(PGO_PROFILE) ($$(du -k $(PGO_PROFILE) | cut -f1) kB); commit it with $(PGO_INFO)"

## pgo-status: whether builds use the profile, and what of src/ changed since it was made.
pgo-status:
	@echo "profile-guided build: $(if $(PGO_USE),on ($(PGO_PROFILE), LLVM $(PGO_LLVM); rustc's LLVM $(RUSTC_LLVM)),off)"
	@c=$$(sed -n "s/^commit //p" $(PGO_INFO) 2>/dev/null); c=$${c%-dirty}; [ -z "$$c" ] || { \
		d=$$(git diff --shortstat $$c -- src 2>/dev/null | sed 's/^ *//'); \
		echo "profile made at $$c; src/ changed since: $${d:-nothing}"; }
