/*
 * spamfilter-load --option-dat: one message through every spam-filter slot of an MTA option file,
 * as Messaging Server runs them: each slot's library loaded by its spamfilterN_library path
 * through the BMI names only (bmi_load.h), every slot's whole BMI call sequence on a thread of its
 * own, all slots at once on the same message; then each slot's verdicts applied: default delivers,
 * a NULL destination runs spamfilterN_null_action, a string runs spamfilterN_string_action with
 * $U replaced by it; a fatal error defers the message with the MTA's 451 text naming the slot
 * (spamfilterN_optional=0) or lets it pass unfiltered (=1).
 */
#ifndef SPAMFILTER_MSGSERVER_H
#define SPAMFILTER_MSGSERVER_H

#include <stddef.h>

/* What a BMI caller knows of the envelope: no HELO, no client name, no macros. */
struct ms_envelope {
    const char *client_ip; /* "127.0.0.1" for a local submission, as the MTA passes it */
    const char *from;
    const char *const *rcpt;
    size_t nrcpt;
    const char *optin; /* opt-in values for every recipient ("spam:virus"), or NULL */
};

/* Runs the message `repeat` times (the results of the last run are printed unless `quiet`).
 * Returns the exit code: 0 the MTA accepts the message (acting on the verdicts), 1 it defers
 * it, 2 the option file, a library or the message cannot be used (said on stderr). */
int ms_run(const char *prog, const char *option_dat, const char *message_file,
           const struct ms_envelope *env, long repeat, int quiet);

#endif
