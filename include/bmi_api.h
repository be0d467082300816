/*
 * bmi_api.h: the Brightmail client API (BMI) as milter-spamfilter implements it.
 *
 * A RECONSTRUCTION. The vendor's bmi_api.h was never published. This header was written from the
 * public call sites of that API (Exim's src/bmi_spam.c, 4.x up to 4.99, built with
 * EXPERIMENTAL_BRIGHTMAIL) and from public error texts (the README's deployment section lists the
 * evidence). The function names and the argument order are
 * those of the call sites. OUR CHOICES, not the vendor's, and not to be relied on by an MTA built
 * against the vendor's header:
 *   - the numeric values of BMI_VERSION, BMI_TRUE / BMI_FALSE, every BmiErrorLocation and every
 *     BmiErrorType (location 3 "client" and type 6 "invalid argument" follow one public error
 *     text, 0x3000006; the rest are ours);
 *   - the packing of a BmiError: location in bits 24..31, BMI_ERROR_WARNING (bit 23) for an error
 *     that is not fatal, type in bits 0..22; 0 is success;
 *   - void for the free functions, int for the lengths, and void / const void pointers where Exim
 *     passes unsigned strings (bmiOptinMset, bmiCreateOldStrFromVerdict), so that its build draws
 *     no pointer-sign warnings.
 * Any BMI_VERSION is accepted.
 *
 * The library behind it is the same libmilter_spamfilter.so that exports the spamfilter_* API
 * (include/milter_spamfilter.h), installed also as libbmiclient_single.so. Both faces drive the
 * same Milter conversation engine and give the same verdicts.
 *
 * Life cycle, per message (Exim calls bmiInitSystem for every message; it is cheap: the option
 * file is read once per path and read again only when it changes, and Milter connections and
 * negotiations are kept across bmiInitSystem / bmiFreeSystem pairs):
 *   bmiInitSystem(BMI_VERSION, option_file, &system);  bmiInitMessage(system, &message);
 *   bmiProcessConnection(client_ip, message);  bmiProcessFROM(sender, message);
 *   bmiAccumulateTO(recipient, optin_or_NULL, message) for each recipient;  bmiEndTO(message);
 *   bmiAccumulateHeaders(field, length, message) for each header field;  bmiEndHeaders(message);
 *   bmiAccumulateBody(chunk, length, message) for each chunk;  bmiEndBody(message);
 *   bmiEndMessage(message);  then bmiAccessFirstVerdict / bmiAccessNextVerdict.
 * Each call advances the Milter conversation as far as its data allows; none holds the whole
 * message. A call that fails returns a fatal BmiError and spamfilter_last_error() (per thread,
 * from milter_spamfilter.h) explains it; the Milter connection is finished by bmiEndMessage or by
 * the call that failed, never left for bmiFreeMessage.
 *
 * Verdicts: one per group of recipients with the same outcome. A verdict's destination is
 * default (deliver normally: bmiVerdictDestinationIsDefault is BMI_TRUE), NULL (do not deliver),
 * or a string: the Sieve scriptlet that the spamfilter_* API returns as its verdict, for
 * spamfilterN_string_action=data:,$U.
 */
#ifndef BMI_API_H
#define BMI_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Our choice; any value is accepted by bmiInitSystem. */
#define BMI_VERSION 1

typedef int BmiBoolean;
#define BMI_FALSE 0
#define BMI_TRUE 1

/* 0 is success; see the packing above. */
typedef uint32_t BmiError;
#define BMI_OK ((BmiError)0)
#define BMI_ERROR_WARNING ((BmiError)0x00800000u)

/* Where an error arose (bits 24..31 of a BmiError). */
typedef enum BmiErrorLocation {
    BMI_ERROR_LOCATION_NONE = 0,
    /* The Milter server: it refused, deferred, or broke the protocol. */
    BMI_ERROR_LOCATION_SERVER = 1,
    /* Reaching the Milter: name resolution, connect, SOCKS, a timeout. */
    BMI_ERROR_LOCATION_NETWORK = 2,
    /* This library, called wrongly (an argument, the order of calls) or out of memory. */
    BMI_ERROR_LOCATION_CLIENT = 3,
    /* The option file named in bmiInitSystem. */
    BMI_ERROR_LOCATION_CONFIG = 4
} BmiErrorLocation;

/* What went wrong (bits 0..22 of a BmiError). */
typedef enum BmiErrorType {
    BMI_ERROR_TYPE_NONE = 0,
    /* Memory could not be had. */
    BMI_ERROR_TYPE_MEMORY = 1,
    /* The option file is missing, unreadable or has a bad value. */
    BMI_ERROR_TYPE_CONFIG = 2,
    /* The Milter could not be reached. */
    BMI_ERROR_TYPE_CONNECT = 3,
    /* The Milter did not answer in time. */
    BMI_ERROR_TYPE_TIMEOUT = 4,
    /* Reading from or writing to the Milter failed, or it closed the connection. */
    BMI_ERROR_TYPE_IO = 5,
    /* An argument was NULL, too long or otherwise unusable. */
    BMI_ERROR_TYPE_INVALID_ARG = 6,
    /* The Milter broke the Milter protocol (or one of the library's limits). */
    BMI_ERROR_TYPE_PROTOCOL = 7,
    /* The Milter asked for the message to be deferred (a tempfail, or a 4xx reply). */
    BMI_ERROR_TYPE_TEMPFAIL = 8,
    /* A call out of order (bmiEndMessage before bmiEndBody, a call after a failure). */
    BMI_ERROR_TYPE_STATE = 9,
    /* A verdict string that is not one this library made (bmiCreateVerdictFromStr). */
    BMI_ERROR_TYPE_BAD_VERDICT = 10,
    /* A fault inside the library, caught before it reached the caller. */
    BMI_ERROR_TYPE_INTERNAL = 11
} BmiErrorType;

typedef struct BmiSystem BmiSystem;
typedef struct BmiMessage BmiMessage;
typedef struct BmiOptin BmiOptin;
typedef struct BmiVerdict BmiVerdict;
typedef struct BmiRecipient BmiRecipient;

/* Errors. */
BmiBoolean bmiErrorIsFatal(BmiError error);
BmiErrorLocation bmiErrorGetLocation(BmiError error);
BmiErrorType bmiErrorGetType(BmiError error);

/* The system: one option file. */
BmiError bmiInitSystem(int version, const char *config_file, BmiSystem **system);
void bmiFreeSystem(BmiSystem *system);

/* One message. */
BmiError bmiInitMessage(BmiSystem *system, BmiMessage **message);
void bmiFreeMessage(BmiMessage *message);
BmiError bmiProcessConnection(const char *client_ip, BmiMessage *message);
BmiError bmiProcessFROM(const char *sender, BmiMessage *message);
BmiError bmiAccumulateTO(const char *recipient, BmiOptin *optin, BmiMessage *message);
BmiError bmiEndTO(BmiMessage *message);
BmiError bmiAccumulateHeaders(const char *field, int length, BmiMessage *message);
BmiError bmiEndHeaders(BmiMessage *message);
BmiError bmiAccumulateBody(const char *chunk, int length, BmiMessage *message);
BmiError bmiEndBody(BmiMessage *message);
BmiError bmiEndMessage(BmiMessage *message);

/* A recipient's opt-in values ("a:b" with separator ':'). */
BmiError bmiOptinInit(BmiOptin **optin);
BmiError bmiOptinMset(BmiOptin *optin, const void *values, char separator);
void bmiOptinFree(BmiOptin *optin);

/* The verdicts of a message, after bmiEndMessage; *verdict is NULL past the last. */
BmiError bmiAccessFirstVerdict(BmiMessage *message, const BmiVerdict **verdict);
BmiError bmiAccessNextVerdict(BmiMessage *message, const BmiVerdict *current,
                              const BmiVerdict **verdict);

/* A verdict as a printable string (no ':', no line break) and back. */
BmiError bmiCreateStrFromVerdict(const BmiVerdict *verdict, char **text);
void bmiFreeStr(char *text);
BmiError bmiCreateVerdictFromStr(const char *text, BmiVerdict **verdict);
void bmiFreeVerdict(BmiVerdict *verdict);
/* The older tracking string: *text (a char *) is set to a static string, never to be freed
 * (Exim never frees it, and uses it after bmiFreeVerdict). */
BmiError bmiCreateOldStrFromVerdict(const BmiVerdict *verdict, void *text);

/* One verdict. */
BmiError bmiVerdictError(const BmiVerdict *verdict);
BmiBoolean bmiVerdictDestinationIsDefault(const BmiVerdict *verdict);
const char *bmiVerdictAccessDestination(const BmiVerdict *verdict);
BmiBoolean bmiVerdictRuleFired(const BmiVerdict *verdict, int rule);
const BmiRecipient *bmiVerdictAccessFirstRecipient(const BmiVerdict *verdict);
const BmiRecipient *bmiVerdictAccessNextRecipient(const BmiVerdict *verdict,
                                                  const BmiRecipient *current);
/* The address, in writable memory owned by the verdict (Exim writes a NUL over its '@'). */
char *bmiRecipientAccessAddress(const BmiRecipient *recipient);

#ifdef __cplusplus
}
#endif

#endif /* BMI_API_H */
