/*
 * spamfilter-check --compare-exports: the dynamic symbols one shared library defines that another
 * does not, read from the ELF .dynsym of each file (both ELF classes, both byte orders: a
 * vendor's library may come from a SPARC Solaris host). No binutils needed, no dlopen: the
 * vendor's library is only read, never loaded.
 */
#ifndef SPAMFILTER_EXPORTS_H
#define SPAMFILTER_EXPORTS_H

#include <stddef.h>

struct exports {
    char **names; /* sorted, no duplicates; linker-made symbols (_init, _end ...) left out */
    size_t count;
};

/* Reads the defined global and weak dynamic symbols of the ELF file `path`. On failure writes
 * why into `err` ("<path>: not an ELF file", "... has no .dynsym section" ...) and returns -1. */
int exports_read(const char *path, struct exports *out, char *err, size_t errlen);
void exports_free(struct exports *e);

/* Prints what `theirs` exports that `ours` does not, the reverse, and what both export. Returns
 * the exit code: 0 ours exports everything theirs does, 1 some of theirs are missing from ours,
 * 2 a file cannot be read as a shared library (said on stderr). */
int compare_exports(const char *prog, const char *ours, const char *theirs);

#endif
