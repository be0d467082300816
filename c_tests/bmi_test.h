/*
 * bmi_test.h: what the BMI C tests (c_tests/bmi_*.c) share. The library is loaded by the MTA's
 * own loader (tools/bmi_load.c: dlopen by path, the BMI names only) into `bmi`, with every
 * function of include/bmi_api.h required, even those an MTA never calls; and p_last_error is
 * spamfilter_last_error, the one non-BMI name, for the text of a failure.
 */
#ifndef BMI_TEST_H
#define BMI_TEST_H

#include "bmi_load.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static struct bmi_api bmi;
static const char *(*p_last_error)(void);

/* Loads `path`; exits 1 saying why when it cannot be loaded or lacks a name. The library stays
 * loaded for the process, as in an MTA. */
static void bmi_test_load(const char *path)
{
    char err[1024];
    if (bmi_load("library", path, &bmi, err, sizeof err) != 0 ||
        bmi_load_rest(&bmi, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", path, err);
        exit(1);
    }
    *(void **)(&p_last_error) = dlsym(bmi.lib, "spamfilter_last_error");
    if (p_last_error == NULL) {
        fprintf(stderr, "%s does not export spamfilter_last_error\n", path);
        exit(1);
    }
}

#endif
