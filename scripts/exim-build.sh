#!/usr/bin/env bash
# Builds Exim 4.96 (Debian 12's exim4 source package) with its Brightmail support
# (EXPERIMENTAL_BRIGHTMAIL) against our include/bmi_api.h and our library under the name the
# Brightmail SDK has, libbmiclient_single.so: the real MTA that tests/exim.rs drives.
#
# Usage: scripts/exim-build.sh [LIBRARY]
#   LIBRARY: the .so that provides the bmi* functions (default: target/release/
#   libmilter_spamfilter.so, which must be built first). BMI_LIBRARY in the environment does the
#   same.
#
# Output, under build/exim/:
#   bin/exim                      the Exim binary (exim -bV lists Experimental_Brightmail)
#   lib/libbmiclient_single.so    a symlink to LIBRARY; the binary finds it through its rpath
#   stamp                         what the binary was built from
#
# Built once: the binary is kept while this script, include/bmi_api.h and the checkout's place
# are unchanged. The library is not part of that: Exim links to it by the symlink's name, so a
# rebuilt library is picked up without rebuilding Exim. The symlink is refreshed on every run.
#
# Needs: the deb-src sources enabled (.ci/run writes them from the machine's own apt sources),
# and the build dependencies dpkg-dev (dpkg-source), libpcre2-dev, libdb-dev, gcc, make,
# pkg-config. Exim's compiled-in user is `mail` (it exists on every Debian system): its uid goes
# into the binary, and every bmi* call runs as that user.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/exim
LIBRARY=${1:-${BMI_LIBRARY:-$ROOT/target/release/libmilter_spamfilter.so}}
EXIM_USER=mail
SUITE=bookworm

die() {
    echo "exim-build: $*" >&2
    exit 1
}

# The library must exist and export the BMI functions, or the link fails with a wall of
# undefined references; say so in one line instead.
[ -f "$LIBRARY" ] || die "no library at $LIBRARY (run: cargo build --release --lib)"
LIBRARY=$(cd "$(dirname "$LIBRARY")" && pwd)/$(basename "$LIBRARY")
nm -D --defined-only "$LIBRARY" 2>/dev/null | grep -qw bmiInitSystem \
    || die "$LIBRARY does not export the BMI functions (bmiInitSystem ...): issue 17 item 1"

mkdir -p "$OUT/lib" "$OUT/bin"
ln -sfn "$LIBRARY" "$OUT/lib/libbmiclient_single.so"

stamp=$( { sha256sum "$0" "$ROOT/include/bmi_api.h" | cut -d' ' -f1; echo "$ROOT"; } | sha256sum | cut -d' ' -f1)
if [ -x "$OUT/bin/exim" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi

for tool in dpkg-source:dpkg-dev pcre2-config:libpcre2-dev make:make gcc:gcc pkg-config:pkg-config; do
    command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} is missing: apt-get install ${tool##*:}"
done
[ -f /usr/include/db.h ] || die "/usr/include/db.h is missing: apt-get install libdb-dev"
getent passwd "$EXIM_USER" >/dev/null || die "user $EXIM_USER does not exist (Exim's uid is compiled in)"

# The Debian source package, fetched with the ordinary apt client and kept: a rebuild (the
# script or the header changed) needs no download.
DL=$OUT/download
mkdir -p "$DL"
if ! ls "$DL"/exim4_4.96-*.dsc >/dev/null 2>&1; then
    echo "exim-build: fetching the exim4 source package ($SUITE)"
    (cd "$DL" && apt-get source --download-only -qq "exim4/$SUITE") \
        || die "apt-get source exim4/$SUITE failed: enable deb-src sources (see .ci/run) and run apt-get update"
fi
dsc=$(ls "$DL"/exim4_4.96-*.dsc | tail -n 1)

SRC=$OUT/src
rm -rf "$SRC"
# From the download folder: dpkg-source leaves a copy of the upstream tarball in its working
# folder. --no-check: apt already checked every file against the signed archive's hashes; the
# .dsc's own signature would need debian-keyring.
(cd "$DL" && dpkg-source --no-check -x "$dsc" "$SRC" >/dev/null)
[ -f "$SRC/src/bmi_spam.c" ] || die "$dsc has no src/bmi_spam.c: not an Exim with Brightmail support"

# The smallest Exim that receives over SMTP, runs BMI and delivers to maildirs. Paths compiled
# in are only defaults: the tests pass their own configuration (-C) with their own spool and logs.
# SUPPORT_PROXY (the PROXY protocol, hosts_proxy) lets a test on loopback present another client
# address, the one Exim hands to bmiProcessConnection.
cat > "$SRC/Local/Makefile" <<EOF
BIN_DIRECTORY=$OUT/bin
CONFIGURE_FILE=$OUT/configure
EXIM_USER=$EXIM_USER
SPOOL_DIRECTORY=$OUT/spool
ROUTER_ACCEPT=yes
ROUTER_REDIRECT=yes
TRANSPORT_APPENDFILE=yes
SUPPORT_MAILDIR=yes
LOOKUP_LSEARCH=yes
DISABLE_TLS=yes
SUPPORT_PROXY=yes
EXPERIMENTAL_BRIGHTMAIL=yes
CFLAGS += -I$ROOT/include
EXTRALIBS_EXIM=-L$OUT/lib -lbmiclient_single -Wl,-rpath,$OUT/lib
EOF

echo "exim-build: building Exim with EXPERIMENTAL_BRIGHTMAIL (about a minute)"
log=$OUT/build.log
if ! make -C "$SRC" -j"$(nproc)" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building Exim failed; the whole log is in $log"
fi
# include/bmi_api.h is reconstructed from these very call sites (src/bmi_spam.c): a compiler
# warning about one of its functions, or pointing into it, means that it disagrees with them.
if grep -E "(warning|error):.*[^a-z_]bmi[A-Z]|bmi_api\.h:[0-9]+" "$log" >&2; then
    die "include/bmi_api.h disagrees with Exim's calls (above; the whole log is in $log)"
fi
install -m 0755 "$SRC"/build-Linux-*/exim "$OUT/bin/exim"
version=$("$OUT/bin/exim" -C /dev/null -bV 2>&1 || true)
grep -q Experimental_Brightmail <<<"$version" \
    || die "$OUT/bin/exim was built without Experimental_Brightmail"
echo "$stamp" > "$OUT/stamp"
echo "exim-build: $OUT/bin/exim"
