/* See bmi_load.h: the BMI names looked up in a spamfilterN_library, and our names for errors. */
#define _GNU_SOURCE
#include "bmi_load.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int bmi_load(const char *option, const char *path, struct bmi_api *api, char *err, size_t errlen)
{
    memset(api, 0, sizeof *api);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(err, errlen, "%s=%s: cannot load the library: %s", option, path, dlerror());
        return -1;
    }
    api->lib = lib;
    /* Every name is required: the MTA calls each of them for every message, and a library that
     * lacks one is not a BMI library (or is of an older SDK this MTA cannot use). */
#define SYM(field, name)                                                                    \
    do {                                                                                    \
        *(void **)(&api->field) = dlsym(lib, name);                                         \
        if (api->field == NULL) {                                                           \
            snprintf(err, errlen,                                                           \
                     "%s=%s: the library has no symbol %s: it is not a Brightmail (BMI) "   \
                     "client library",                                                      \
                     option, path, name);                                                   \
            dlclose(lib);                                                                   \
            api->lib = NULL;                                                                \
            return -1;                                                                      \
        }                                                                                   \
    } while (0)
    SYM(error_is_fatal, "bmiErrorIsFatal");
    SYM(error_get_location, "bmiErrorGetLocation");
    SYM(error_get_type, "bmiErrorGetType");
    SYM(init_system, "bmiInitSystem");
    SYM(free_system, "bmiFreeSystem");
    SYM(init_message, "bmiInitMessage");
    SYM(free_message, "bmiFreeMessage");
    SYM(process_connection, "bmiProcessConnection");
    SYM(process_from, "bmiProcessFROM");
    SYM(accumulate_to, "bmiAccumulateTO");
    SYM(end_to, "bmiEndTO");
    SYM(accumulate_headers, "bmiAccumulateHeaders");
    SYM(end_headers, "bmiEndHeaders");
    SYM(accumulate_body, "bmiAccumulateBody");
    SYM(end_body, "bmiEndBody");
    SYM(end_message, "bmiEndMessage");
    SYM(optin_init, "bmiOptinInit");
    SYM(optin_mset, "bmiOptinMset");
    SYM(optin_free, "bmiOptinFree");
    SYM(access_first_verdict, "bmiAccessFirstVerdict");
    SYM(access_next_verdict, "bmiAccessNextVerdict");
    SYM(verdict_error, "bmiVerdictError");
    SYM(verdict_destination_is_default, "bmiVerdictDestinationIsDefault");
    SYM(verdict_access_destination, "bmiVerdictAccessDestination");
    SYM(verdict_first_recipient, "bmiVerdictAccessFirstRecipient");
    SYM(verdict_next_recipient, "bmiVerdictAccessNextRecipient");
    SYM(recipient_address, "bmiRecipientAccessAddress");
    SYM(create_str_from_verdict, "bmiCreateStrFromVerdict");
    SYM(free_str, "bmiFreeStr");
#undef SYM
    *(void **)(&api->create_verdict_from_str) = dlsym(lib, "bmiCreateVerdictFromStr");
    *(void **)(&api->free_verdict) = dlsym(lib, "bmiFreeVerdict");
    *(void **)(&api->create_old_str_from_verdict) = dlsym(lib, "bmiCreateOldStrFromVerdict");
    *(void **)(&api->verdict_rule_fired) = dlsym(lib, "bmiVerdictRuleFired");
    return 0;
}

int bmi_load_rest(const struct bmi_api *api, char *err, size_t errlen)
{
    const struct {
        const char *name;
        int present;
    } rest[] = {
        {"bmiCreateVerdictFromStr", api->create_verdict_from_str != NULL},
        {"bmiFreeVerdict", api->free_verdict != NULL},
        {"bmiCreateOldStrFromVerdict", api->create_old_str_from_verdict != NULL},
        {"bmiVerdictRuleFired", api->verdict_rule_fired != NULL},
    };
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++) {
        if (!rest[i].present) {
            snprintf(err, errlen, "the library has no symbol %s", rest[i].name);
            return -1;
        }
    }
    return 0;
}

const char *bmi_location_name(BmiErrorLocation loc)
{
    switch (loc) {
    case BMI_ERROR_LOCATION_NONE: return "none";
    case BMI_ERROR_LOCATION_SERVER: return "server";
    case BMI_ERROR_LOCATION_NETWORK: return "network";
    case BMI_ERROR_LOCATION_CLIENT: return "client";
    case BMI_ERROR_LOCATION_CONFIG: return "config";
    }
    return NULL;
}

const char *bmi_type_name(BmiErrorType type)
{
    switch (type) {
    case BMI_ERROR_TYPE_NONE: return "none";
    case BMI_ERROR_TYPE_MEMORY: return "memory";
    case BMI_ERROR_TYPE_CONFIG: return "config";
    case BMI_ERROR_TYPE_CONNECT: return "connect";
    case BMI_ERROR_TYPE_TIMEOUT: return "timeout";
    case BMI_ERROR_TYPE_IO: return "io";
    case BMI_ERROR_TYPE_INVALID_ARG: return "invalid argument";
    case BMI_ERROR_TYPE_PROTOCOL: return "protocol";
    case BMI_ERROR_TYPE_TEMPFAIL: return "tempfail";
    case BMI_ERROR_TYPE_STATE: return "state";
    case BMI_ERROR_TYPE_BAD_VERDICT: return "bad verdict";
    case BMI_ERROR_TYPE_INTERNAL: return "internal";
    }
    return NULL;
}
