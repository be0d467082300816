/*
 * bmi_signatures: compiled, not run, by tests/bmi.rs. bmi_declarations.h is what cbindgen makes
 * of the Rust functions in src/bmi.rs (build.rs writes it into OUT_DIR); declaring a function
 * twice with different types is a "conflicting types" error, so this compiles only while every
 * Rust signature is the header's. The two typedefs it repeats (BmiBoolean, BmiError) must be
 * the same types too; the two enums, which Rust takes as unsigned int, are checked here.
 */
#include "bmi_api.h"
#include "bmi_declarations.h"

_Static_assert(_Generic((BmiErrorLocation)0, unsigned int: 1, default: 0),
               "BmiErrorLocation is not compatible with unsigned int, which Rust returns");
_Static_assert(_Generic((BmiErrorType)0, unsigned int: 1, default: 0),
               "BmiErrorType is not compatible with unsigned int, which Rust returns");
_Static_assert(BMI_TRUE == 1 && BMI_FALSE == 0, "BMI_TRUE and BMI_FALSE as src/bmi.rs has them");

int main(void) { return 0; }
