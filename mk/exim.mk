# Exim 4.96 with its Brightmail support, the real BMI caller of tests/exim.rs (issue 17, item 4).
# tests/exim.rs builds it itself (the same script), so `make test` needs nothing from here; this
# target is for a look by hand (build/exim/bin/exim, docs/exim.md).

.PHONY: exim

## exim: build Exim with EXPERIMENTAL_BRIGHTMAIL against include/bmi_api.h, our library linked as
## build/exim/lib/libbmiclient_single.so (built once, kept under build/exim/).
exim: $(LIB)
	bash scripts/exim-build.sh $(CURDIR)/$(LIB)
