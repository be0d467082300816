/* See exports.h: ELF .dynsym reading, bounds-checked against the file's size throughout. */
#define _GNU_SOURCE
#include "exports.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The file, mapped, with how to read its integers. */
struct elf_file {
    const unsigned char *data;
    size_t size;
    int is64, big;
};

static uint64_t rd(const struct elf_file *f, size_t off, size_t width)
{
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++) {
        unsigned b = f->data[off + (f->big ? i : width - 1 - i)];
        v = (v << 8) | b;
    }
    return v;
}

/* A field of an ELF structure at `base`, by the layout of the 32- or 64-bit type. */
#define FIELD(f, base, T, field) rd((f), (base) + offsetof(T, field), sizeof(((T *)0)->field))
#define EFIELD(f, base, field)                                                              \
    ((f)->is64 ? FIELD(f, base, Elf64_Ehdr, field) : FIELD(f, base, Elf32_Ehdr, field))
#define SFIELD(f, base, field)                                                              \
    ((f)->is64 ? FIELD(f, base, Elf64_Shdr, field) : FIELD(f, base, Elf32_Shdr, field))

/* `off + len` lies inside the file (without overflow). */
static int inside(const struct elf_file *f, uint64_t off, uint64_t len)
{
    return off <= f->size && len <= f->size - off;
}

/* Checks the identification and the header; fills class and byte order. */
static int check_header(struct elf_file *f, const char *path, char *err, size_t errlen)
{
    if (f->size < EI_NIDENT || memcmp(f->data, ELFMAG, SELFMAG) != 0) {
        snprintf(err, errlen, "%s: not an ELF file (no ELF magic number)", path);
        return -1;
    }
    unsigned cls = f->data[EI_CLASS], enc = f->data[EI_DATA];
    if ((cls != ELFCLASS32 && cls != ELFCLASS64) || (enc != ELFDATA2LSB && enc != ELFDATA2MSB)) {
        snprintf(err, errlen, "%s: an ELF file of unknown class %u or byte order %u", path, cls,
                 enc);
        return -1;
    }
    f->is64 = cls == ELFCLASS64;
    f->big = enc == ELFDATA2MSB;
    if (!inside(f, 0, f->is64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr))) {
        snprintf(err, errlen, "%s: truncated ELF file (%zu bytes, shorter than its header)",
                 path, f->size);
        return -1;
    }
    if (EFIELD(f, 0, e_type) != ET_DYN) {
        snprintf(err, errlen, "%s: an ELF file but not a shared library (ELF type %u)", path,
                 (unsigned)EFIELD(f, 0, e_type));
        return -1;
    }
    return 0;
}

/* The offset of section header `i`, or 0 when it lies outside the file. */
static uint64_t section(const struct elf_file *f, uint64_t i)
{
    uint64_t shoff = EFIELD(f, 0, e_shoff), entsize = EFIELD(f, 0, e_shentsize);
    uint64_t need = f->is64 ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr);
    if (entsize < need || i > (f->size / entsize))
        return 0;
    uint64_t at = shoff + i * entsize;
    return at >= shoff && inside(f, at, need) ? at : 0;
}

/* The linker makes these in every shared library; they are no part of an interface. */
static int linker_made(const char *name)
{
    static const char *const names[] = {
        "_init", "_fini", "_edata", "_end", "__bss_start", "_etext", "_DYNAMIC",
        "_GLOBAL_OFFSET_TABLE_", "_PROCEDURE_LINKAGE_TABLE_", "_lib_version", "__data_start",
        "_start", "__end__", "_END_", "_START_",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

static int add_name(struct exports *out, const char *name, size_t len)
{
    char **more = realloc(out->names, (out->count + 1) * sizeof *more);
    if (more == NULL)
        return -1;
    out->names = more;
    if ((out->names[out->count] = strndup(name, len)) == NULL)
        return -1;
    out->count++;
    return 0;
}

/* The symbols of the .dynsym section at header `sh`, its strings in the section it links to. */
static int read_symbols(const struct elf_file *f, uint64_t sh, struct exports *out,
                        const char *path, char *err, size_t errlen)
{
    uint64_t off = SFIELD(f, sh, sh_offset), size = SFIELD(f, sh, sh_size);
    uint64_t ent = SFIELD(f, sh, sh_entsize), link = SFIELD(f, sh, sh_link);
    uint64_t need = f->is64 ? sizeof(Elf64_Sym) : sizeof(Elf32_Sym);
    uint64_t str = link < EFIELD(f, 0, e_shnum) ? section(f, link) : 0;
    uint64_t str_off = str ? SFIELD(f, str, sh_offset) : 0, str_size = str ? SFIELD(f, str, sh_size) : 0;
    if (ent < need || !inside(f, off, size) || str == 0 || !inside(f, str_off, str_size)) {
        snprintf(err, errlen, "%s: damaged ELF file: its .dynsym section or its strings lie "
                 "outside the file", path);
        return -1;
    }
    for (uint64_t at = off + ent; at + need <= off + size; at += ent) { /* 0 is the null symbol */
        uint64_t name = f->is64 ? FIELD(f, at, Elf64_Sym, st_name) : FIELD(f, at, Elf32_Sym, st_name);
        unsigned info = (unsigned)(f->is64 ? FIELD(f, at, Elf64_Sym, st_info) : FIELD(f, at, Elf32_Sym, st_info));
        unsigned shndx = (unsigned)(f->is64 ? FIELD(f, at, Elf64_Sym, st_shndx) : FIELD(f, at, Elf32_Sym, st_shndx));
        unsigned bind = info >> 4, type = info & 0xf;
        if (shndx == SHN_UNDEF || (bind != STB_GLOBAL && bind != STB_WEAK && bind != STB_GNU_UNIQUE) ||
            type == STT_SECTION || type == STT_FILE || name >= str_size)
            continue;
        const char *s = (const char *)f->data + str_off + name;
        size_t len = strnlen(s, str_size - name);
        if (len == 0 || len == str_size - name) /* empty, or not NUL-terminated in the table */
            continue;
        if (!linker_made(s) && add_name(out, s, len) != 0) {
            snprintf(err, errlen, "%s: out of memory", path);
            return -1;
        }
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts and drops duplicates (a name defined twice, e.g. in two versions). */
static void sort_unique(struct exports *e)
{
    qsort(e->names, e->count, sizeof *e->names, by_name);
    size_t w = 0;
    for (size_t r = 0; r < e->count; r++) {
        if (w > 0 && strcmp(e->names[w - 1], e->names[r]) == 0)
            free(e->names[r]);
        else
            e->names[w++] = e->names[r];
    }
    e->count = w;
}

static int read_mapped(struct elf_file *f, const char *path, struct exports *out, char *err,
                       size_t errlen)
{
    if (check_header(f, path, err, errlen) != 0)
        return -1;
    uint64_t shnum = EFIELD(f, 0, e_shnum);
    for (uint64_t i = 1; i < shnum; i++) {
        uint64_t sh = section(f, i);
        if (sh == 0) {
            snprintf(err, errlen, "%s: damaged ELF file: section header %llu lies outside the "
                     "file", path, (unsigned long long)i);
            return -1;
        }
        if (SFIELD(f, sh, sh_type) == SHT_DYNSYM) {
            if (read_symbols(f, sh, out, path, err, errlen) != 0)
                return -1;
            sort_unique(out);
            return 0;
        }
    }
    snprintf(err, errlen, "%s: has no .dynsym section (no dynamic symbols, or its section "
             "headers were stripped)", path);
    return -1;
}

int exports_read(const char *path, struct exports *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size == 0) {
        snprintf(err, errlen, "%s: not an ELF file (empty)", path);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    struct elf_file f = {map, (size_t)st.st_size, 0, 0};
    int rc = read_mapped(&f, path, out, err, errlen);
    munmap(map, (size_t)st.st_size);
    if (rc != 0)
        exports_free(out);
    return rc;
}

void exports_free(struct exports *e)
{
    for (size_t i = 0; i < e->count; i++)
        free(e->names[i]);
    free(e->names);
    e->names = NULL;
    e->count = 0;
}

static int has(const struct exports *e, const char *name)
{
    return bsearch(&name, e->names, e->count, sizeof *e->names, by_name) != NULL;
}

/* Prints the names of `a` that `b` lacks (or has, with `want` 1) under `title`; returns how many. */
static size_t list(const char *title, const struct exports *a, const struct exports *b, int want)
{
    size_t n = 0;
    for (size_t i = 0; i < a->count; i++)
        n += has(b, a->names[i]) == want;
    printf("%s (%zu):\n", title, n);
    for (size_t i = 0; i < a->count; i++)
        if (has(b, a->names[i]) == want)
            printf("    %s\n", a->names[i]);
    return n;
}

int compare_exports(const char *prog, const char *ours, const char *theirs)
{
    struct exports o, t;
    char err[1024];
    if (exports_read(ours, &o, err, sizeof err) != 0) {
        fprintf(stderr, "%s: --compare-exports: ours: %s\n", prog, err);
        return 2;
    }
    if (exports_read(theirs, &t, err, sizeof err) != 0) {
        fprintf(stderr, "%s: --compare-exports: %s\n", prog, err);
        exports_free(&o);
        return 2;
    }
    printf("ours:   %s (%zu exported symbols)\n", ours, o.count);
    printf("theirs: %s (%zu exported symbols)\n", theirs, t.count);
    printf("(linker-made symbols such as _init, _fini, _edata, _end are left out)\n");
    size_t missing = list("only in theirs: the MTA may look these up, ours lacks them", &t, &o, 0);
    list("only in ours", &o, &t, 0);
    list("in both", &t, &o, 1);
    if (missing == 0)
        printf("PASS: ours exports every symbol of %s\n", theirs);
    else
        printf("DIFFER: %zu symbol(s) of %s are not in ours: if the MTA looks one of them up, "
               "it cannot use ours in that slot\n",
               missing, theirs);
    exports_free(&o);
    exports_free(&t);
    return missing == 0 ? 0 : 1;
}
