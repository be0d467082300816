/*
 * Loading a spam-filter library as Messaging Server does: dlopen by the path of a
 * spamfilterN_library option and dlsym of the Brightmail (BMI) client API names only
 * (include/bmi_api.h). Nothing here knows the library's own spamfilter_* names, so a program on
 * this loader proves that the BMI face alone is enough for the MTA.
 */
#ifndef SPAMFILTER_BMI_LOAD_H
#define SPAMFILTER_BMI_LOAD_H

#include "bmi_api.h"

#include <stddef.h>

/* The entry points the MTA calls, as function pointers typed from bmi_api.h. */
struct bmi_api {
    void *lib;
    BmiBoolean (*error_is_fatal)(BmiError);
    BmiErrorLocation (*error_get_location)(BmiError);
    BmiErrorType (*error_get_type)(BmiError);
    BmiError (*init_system)(int, const char *, BmiSystem **);
    void (*free_system)(BmiSystem *);
    BmiError (*init_message)(BmiSystem *, BmiMessage **);
    void (*free_message)(BmiMessage *);
    BmiError (*process_connection)(const char *, BmiMessage *);
    BmiError (*process_from)(const char *, BmiMessage *);
    BmiError (*accumulate_to)(const char *, BmiOptin *, BmiMessage *);
    BmiError (*end_to)(BmiMessage *);
    BmiError (*accumulate_headers)(const char *, int, BmiMessage *);
    BmiError (*end_headers)(BmiMessage *);
    BmiError (*accumulate_body)(const char *, int, BmiMessage *);
    BmiError (*end_body)(BmiMessage *);
    BmiError (*end_message)(BmiMessage *);
    BmiError (*optin_init)(BmiOptin **);
    BmiError (*optin_mset)(BmiOptin *, const void *, char);
    void (*optin_free)(BmiOptin *);
    BmiError (*access_first_verdict)(BmiMessage *, const BmiVerdict **);
    BmiError (*access_next_verdict)(BmiMessage *, const BmiVerdict *, const BmiVerdict **);
    BmiError (*verdict_error)(const BmiVerdict *);
    BmiBoolean (*verdict_destination_is_default)(const BmiVerdict *);
    const char *(*verdict_access_destination)(const BmiVerdict *);
    const BmiRecipient *(*verdict_first_recipient)(const BmiVerdict *);
    const BmiRecipient *(*verdict_next_recipient)(const BmiVerdict *, const BmiRecipient *);
    char *(*recipient_address)(const BmiRecipient *);
    BmiError (*create_str_from_verdict)(const BmiVerdict *, char **);
    void (*free_str)(char *);
    /* The rest of bmi_api.h, which this MTA never calls: looked up, NULL when missing (the C
     * tests, which call every function, check bmi_load_rest first). */
    BmiError (*create_verdict_from_str)(const char *, BmiVerdict **);
    void (*free_verdict)(BmiVerdict *);
    BmiError (*create_old_str_from_verdict)(const BmiVerdict *, void *);
    BmiBoolean (*verdict_rule_fired)(const BmiVerdict *, int);
};

/* Loads `path` for the option `option` (e.g. "spamfilter2_library"). On failure writes the reason
 * into `err` (naming the option, the path, and the dlerror or the missing symbol) and returns -1. */
int bmi_load(const char *option, const char *path, struct bmi_api *api, char *err, size_t errlen);

/* Whether `api` (loaded by bmi_load) has the functions this MTA never calls too, so that all of
 * bmi_api.h is there; if not, writes the first one missing into `err` and returns -1. */
int bmi_load_rest(const struct bmi_api *api, char *err, size_t errlen);

/* Our names (include/bmi_api.h) for a location and a type, as the MTA's 451 text shows them;
 * NULL for a number the header does not define. */
const char *bmi_location_name(BmiErrorLocation loc);
const char *bmi_type_name(BmiErrorType type);

#endif
