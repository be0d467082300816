/*
 * One spam-filter slot's whole BMI call sequence for one message, as Messaging Server makes it
 * (bmi-interface.md §2), meant to run on a thread of its own: bmiInitSystem .. bmiEndMessage,
 * then the verdict list copied out, then bmiFreeMessage and bmiFreeSystem. What the library
 * answered is kept in a struct slot_result for the caller to apply once every slot is done.
 */
#ifndef SPAMFILTER_MS_SLOT_H
#define SPAMFILTER_MS_SLOT_H

#include "bmi_load.h"
#include "msgserver.h"

enum ms_destination { MS_DEFAULT, MS_NULL, MS_STRING, MS_ERROR };

struct ms_verdict {
    enum ms_destination kind;
    char *destination; /* MS_STRING: the library's string (malloc'd copy) */
    BmiError error;    /* MS_ERROR: bmiVerdictError's fatal error */
    char **rcpt;       /* the recipients it covers (copies) */
    size_t nrcpt;
};

struct slot_result {
    /* A fatal BmiError from a call: which call (its C name, and the MTA's words for it). */
    int failed;
    const char *function, *words;
    BmiError error;
    BmiError warning; /* the first non-fatal error, if any */
    const char *warning_function;
    /* A failure of this program (the message file, memory, a verdict list that never ends). */
    char harness_error[512];
    struct ms_verdict *verdicts;
    size_t nverdicts;
};

/* What a slot's thread gets. */
struct slot_job {
    int n;
    const char *config_file;
    const struct bmi_api *api;
    const char *message_file;
    const struct ms_envelope *env;
    struct slot_result result;
};

/* The thread body: runs the slot's calls and fills job->result. */
void *ms_slot_run(void *job);
void ms_slot_result_free(struct slot_result *r);

#endif
