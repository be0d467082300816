# `make install` (PREFIX, DESTDIR): the library, its header, a pkg-config file, the man pages, an
# example option file and the check tool. `make uninstall` removes exactly those files.

LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/milter-spamfilter
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
INSTALL    ?= install

MAN_PAGES  := docs/man/spamfilter-check.1 docs/man/milter_spamfilter.3 docs/man/milter-spamfilter.opt.5

.PHONY: install uninstall

build/install/spamfilter-check: tools/check.c tools/exports.c tools/exports.h $(MTA_C) FORCE
	@mkdir -p build/install
	$(CC) $(CFLAGS) -Itools -DSPAMFILTER_LIBRARY='"$(LIBDIR)/libmilter_spamfilter.so"' -o $@ tools/check.c tools/exports.c tools/mta.c -ldl

build/install/milter-spamfilter.pc: Cargo.toml mk/install.mk FORCE
	@mkdir -p build/install
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCLUDEDIR)' '' \
		'Name: milter-spamfilter' \
		'Description: Milter client as a spam-filter plug-in library for Messaging Server-style MTAs' \
		'Version: $(VERSION)' \
		'Libs: -L$${libdir} -lmilter_spamfilter' \
		'Cflags: -I$${includedir}' > $@

## install: install everything under $(DESTDIR)$(PREFIX) (default /usr/local).
install: $(LIB) build/install/spamfilter-check build/install/milter-spamfilter.pc
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(DOCDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man5
	$(INSTALL) -m 0755 $(LIB) $(DESTDIR)$(LIBDIR)/libmilter_spamfilter.so
	$(INSTALL) -m 0644 include/milter_spamfilter.h $(DESTDIR)$(INCLUDEDIR)/milter_spamfilter.h
	$(INSTALL) -m 0644 build/install/milter-spamfilter.pc $(DESTDIR)$(PKGCONFIGDIR)/milter-spamfilter.pc
	$(INSTALL) -m 0755 build/install/spamfilter-check $(DESTDIR)$(BINDIR)/spamfilter-check
	$(INSTALL) -m 0644 docs/man/spamfilter-check.1 $(DESTDIR)$(MANDIR)/man1/spamfilter-check.1
	$(INSTALL) -m 0644 docs/man/milter_spamfilter.3 $(DESTDIR)$(MANDIR)/man3/milter_spamfilter.3
	$(INSTALL) -m 0644 docs/man/milter-spamfilter.opt.5 $(DESTDIR)$(MANDIR)/man5/milter-spamfilter.opt.5
	$(INSTALL) -m 0644 examples/milter.opt $(DESTDIR)$(DOCDIR)/milter.opt.example
	$(INSTALL) -m 0644 README.md docs/options.md docs/network.md $(DESTDIR)$(DOCDIR)/

## uninstall: remove what `make install` installed.
uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libmilter_spamfilter.so $(DESTDIR)$(INCLUDEDIR)/milter_spamfilter.h \
		$(DESTDIR)$(PKGCONFIGDIR)/milter-spamfilter.pc $(DESTDIR)$(BINDIR)/spamfilter-check \
		$(DESTDIR)$(MANDIR)/man1/spamfilter-check.1 $(DESTDIR)$(MANDIR)/man3/milter_spamfilter.3 \
		$(DESTDIR)$(MANDIR)/man5/milter-spamfilter.opt.5
	rm -rf $(DESTDIR)$(DOCDIR)
