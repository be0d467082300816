/*
 * bmi_load.h: the BMI functions looked up by name in a dlopened library, as an MTA loads a
 * spamfilterN_library: p_bmiInitSystem and so on, typed from include/bmi_api.h, and
 * p_last_error (spamfilter_last_error, the one non-BMI name, for the text of a failure).
 * For the C programs c_tests/bmi_*.c.
 */
#ifndef BMI_LOAD_H
#define BMI_LOAD_H

#include "bmi_api.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

/* Every function of bmi_api.h: 33. */
#define BMI_FUNCTIONS(X)                                                                         \
    X(bmiErrorIsFatal) X(bmiErrorGetLocation) X(bmiErrorGetType) X(bmiInitSystem)                \
    X(bmiFreeSystem) X(bmiInitMessage) X(bmiFreeMessage) X(bmiProcessConnection)                 \
    X(bmiProcessFROM) X(bmiAccumulateTO) X(bmiEndTO) X(bmiAccumulateHeaders) X(bmiEndHeaders)    \
    X(bmiAccumulateBody) X(bmiEndBody) X(bmiEndMessage) X(bmiOptinInit) X(bmiOptinMset)          \
    X(bmiOptinFree) X(bmiAccessFirstVerdict) X(bmiAccessNextVerdict) X(bmiCreateStrFromVerdict)  \
    X(bmiFreeStr) X(bmiCreateVerdictFromStr) X(bmiFreeVerdict) X(bmiCreateOldStrFromVerdict)     \
    X(bmiVerdictError) X(bmiVerdictDestinationIsDefault) X(bmiVerdictAccessDestination)          \
    X(bmiVerdictRuleFired) X(bmiVerdictAccessFirstRecipient) X(bmiVerdictAccessNextRecipient)    \
    X(bmiRecipientAccessAddress)

#define BMI_DECLARE(name) static __typeof__(&name) p_##name;
BMI_FUNCTIONS(BMI_DECLARE)
static const char *(*p_last_error)(void);

/* Loads `path` and looks every BMI name up; exits 1 naming the first one missing. The library
 * stays loaded for the process, as in an MTA. */
static void bmi_load(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
#define BMI_LOOKUP(name)                                                                         \
    *(void **)(&p_##name) = dlsym(lib, #name);                                                   \
    if (!p_##name) {                                                                             \
        fprintf(stderr, "%s does not export %s\n", path, #name);                                 \
        exit(1);                                                                                 \
    }
    BMI_FUNCTIONS(BMI_LOOKUP)
    *(void **)(&p_last_error) = dlsym(lib, "spamfilter_last_error");
    if (!p_last_error) {
        fprintf(stderr, "%s does not export spamfilter_last_error\n", path);
        exit(1);
    }
}

#endif
