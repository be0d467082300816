//! The Brightmail client API (BMI), the second C face of the library (include/bmi_api.h, a
//! reconstruction: docs/bmi.md). Thin: every function checks its pointers, runs inside `guard`
//! (a panic becomes a fatal CLIENT/INTERNAL error, never an unwind into the MTA) and hands the
//! work to `bmi/`: `system` (option files cached per path), `message` (the calls as pushes of
//! the engine), `verdict` (the per-recipient verdicts), `verdict_str` (verdicts as strings),
//! `optin`, `error` (the BmiError packing). A failing call sets the thread's
//! `spamfilter_last_error()` text, shared with the spamfilter_* face.
//!
//! None of this is in include/milter_spamfilter.h: cbindgen reads src/ffi.rs only. build.rs
//! generates the declarations of this file into OUT_DIR/bmi_declarations.h, which tests/bmi.rs
//! compiles together with include/bmi_api.h, so that a Rust signature that differs from the
//! header is a compile error there.

pub mod error;
pub mod message;
pub mod optin;
pub mod system;
pub mod verdict;
pub mod verdict_str;

use self::error::{Code, Failure};
use self::message::Push;
use crate::ffi::set_last_error;
use crate::handle::Handle;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

/// `BmiBoolean`: `BMI_TRUE` (1) or `BMI_FALSE` (0).
pub type BmiBoolean = c_int;
pub const BMI_TRUE: BmiBoolean = 1;
pub const BMI_FALSE: BmiBoolean = 0;
/// `BmiError`: see `error` for the packing.
pub type BmiError = u32;
/// `BmiErrorLocation` and `BmiErrorType`: C enums, which gcc and clang make `unsigned int`
/// (no negative values); plain integers here, so that any value a caller passes is valid.
pub type BmiErrorLocation = c_uint;
pub type BmiErrorType = c_uint;

/// `BmiSystem`: a reference to a cached option file (`system`): the pointer the caller holds is
/// the `Arc<Handle>` itself (`Arc::into_raw`), so a system costs no allocation of its own (Exim
/// makes one per message).
pub type BmiSystem = Handle;

/// `BmiMessage`.
pub type BmiMessage = message::Message;
/// `BmiOptin`.
pub type BmiOptin = optin::Optin;
/// `BmiVerdict`.
pub type BmiVerdict = verdict::Verdict;
/// `BmiRecipient`.
pub type BmiRecipient = verdict::Recipient;

/// The panic's text, for the last error.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Records `f` as this thread's last error and returns its code.
fn report(f: &Failure) -> Code {
    set_last_error(&format!(
        "{} (BMI error 0x{:08x}: {})",
        f.message,
        f.code,
        error::describe(f.code)
    ));
    f.code
}

/// Runs `f` for the BMI call `name`: its failure or panic becomes a BmiError and the last
/// error text.
fn guard(name: &str, f: impl FnOnce() -> Result<(), Failure>) -> BmiError {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => error::OK,
        Ok(Err(failure)) => report(&failure),
        Err(payload) => report(&Failure::new(
            error::INTERNAL,
            format!("{name}: internal error: {}", panic_text(&*payload)),
        )),
    }
}

/// Runs `f` for a BMI call that returns a value rather than a BmiError: a panic gives
/// `fallback` (and the last error text).
fn guard_value<T>(name: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        report(&Failure::new(
            error::INTERNAL,
            format!("{name}: internal error: {}", panic_text(&*payload)),
        ));
        fallback
    })
}

fn null(what: &str) -> Failure {
    Failure::new(error::INVALID_ARG, format!("{what} is NULL"))
}

/// A pointer type an out-parameter holds.
trait Pointer: Copy {
    const NULL: Self;
}

impl<T> Pointer for *mut T {
    const NULL: Self = std::ptr::null_mut();
}

impl<T> Pointer for *const T {
    const NULL: Self = std::ptr::null();
}

/// Runs the BMI call `name` that hands out one pointer through its out-parameter `out` (named
/// `what` in the header): `*out` is NULL first, whatever happens next, then what `make` gives
/// (None: it stays NULL). A NULL `out` is a fatal CLIENT/INVALID_ARG error, and nothing is
/// done.
///
/// # Safety
/// `out` NULL or writable.
unsafe fn hand_out<P: Pointer>(
    name: &str,
    what: &str,
    out: *mut P,
    make: impl FnOnce() -> Result<Option<P>, Failure>,
) -> BmiError {
    guard(name, || {
        if out.is_null() {
            return Err(null(&format!("{name}: {what}")));
        }
        // SAFETY: non-NULL and writable (caller's promise).
        unsafe { out.write(P::NULL) };
        if let Some(p) = make()? {
            // SAFETY: as above.
            unsafe { out.write(p) };
        }
        Ok(())
    })
}

/// Runs the BMI call `name` that releases `p` with `free`; NULL is allowed (nothing is done).
fn release<T>(name: &str, p: *mut T, free: impl FnOnce(*mut T)) {
    guard_value(name, (), || {
        if !p.is_null() {
            free(p)
        }
    })
}

/// The bytes of a C string.
///
/// # Safety
/// `s` NULL or NUL-terminated.
unsafe fn c_bytes<'a>(s: *const c_char, what: &str) -> Result<&'a [u8], Failure> {
    if s.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL, NUL-terminated (caller's promise).
    Ok(unsafe { CStr::from_ptr(s) }.to_bytes())
}

/// The position of `p` in `items`, when it points at one of them.
fn index_in<T>(items: &[T], p: *const T) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let offset = (p as usize).checked_sub(items.as_ptr() as usize)?;
    (offset % size == 0 && offset / size < items.len()).then_some(offset / size)
}

// ---- Errors ---------------------------------------------------------------------------------

/// `BMI_TRUE` when `error` is fatal (not 0, and not marked as a warning).
#[no_mangle]
pub extern "C" fn bmiErrorIsFatal(error: BmiError) -> BmiBoolean {
    if error::is_fatal(error) {
        BMI_TRUE
    } else {
        BMI_FALSE
    }
}

/// Where `error` arose (bits 24..31).
#[no_mangle]
pub extern "C" fn bmiErrorGetLocation(error: BmiError) -> BmiErrorLocation {
    error::location_of(error)
}

/// What `error` was (bits 0..22).
#[no_mangle]
pub extern "C" fn bmiErrorGetType(error: BmiError) -> BmiErrorType {
    error::kind_of(error)
}

// ---- The system -----------------------------------------------------------------------------

/// Opens the option file `config_file` (the one `spamfilter_init` reads), read once per path
/// and process and again when it changes (a thread looks at it at most once a second); any
/// `version` is accepted. `*system` is NULL on
/// failure: a bad file is a fatal CONFIG/CONFIG error naming file, line, option and value.
///
/// # Safety
/// `config_file` NULL or NUL-terminated; `system` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bmiInitSystem(
    version: c_int,
    config_file: *const c_char,
    system: *mut *mut BmiSystem,
) -> BmiError {
    let _ = version;
    let make = || {
        // SAFETY: NULL or NUL-terminated (caller's promise).
        let path = unsafe { c_bytes(config_file, "bmiInitSystem: config_file") }?;
        let path = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path));
        let handle = system::open(path).map_err(|e| {
            Failure::new(error::code_of(&e), format!("bmiInitSystem: {}", e.message))
        })?;
        Ok(Some(Arc::into_raw(handle).cast_mut()))
    };
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiInitSystem", "system", system, make) }
}

/// Releases a system (the option file stays cached). NULL is allowed.
///
/// # Safety
/// `system` NULL or from bmiInitSystem, released once.
#[no_mangle]
pub unsafe extern "C" fn bmiFreeSystem(system: *mut BmiSystem) {
    release("bmiFreeSystem", system, |s| {
        // SAFETY: from Arc::into_raw in bmiInitSystem, released once (caller's promise).
        drop(unsafe { Arc::from_raw(s.cast_const()) })
    })
}

// ---- The message ----------------------------------------------------------------------------

/// A new message filtered with `system`'s options; `*message` is NULL on failure. The message
/// does not depend on `system` afterwards (it may be freed first).
///
/// # Safety
/// `system` NULL or from bmiInitSystem; `message` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bmiInitMessage(
    system: *mut BmiSystem,
    message: *mut *mut BmiMessage,
) -> BmiError {
    let make = || {
        if system.is_null() {
            return Err(null("bmiInitMessage: system"));
        }
        // SAFETY: non-NULL, from Arc::into_raw in bmiInitSystem and not freed (caller's
        // promise): one more count for the message; the system's own stays the caller's.
        let handle = unsafe {
            Arc::increment_strong_count(system.cast_const());
            Arc::from_raw(system.cast_const())
        };
        Ok(Some(Box::into_raw(Box::new(message::Message::new(handle)))))
    };
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiInitMessage", "message", message, make) }
}

/// Releases a message, aborting its Milter conversation if it has not ended. NULL is allowed.
///
/// # Safety
/// `message` NULL or from bmiInitMessage, released once; nothing it handed out (verdicts,
/// recipients, destinations) is used afterwards.
#[no_mangle]
pub unsafe extern "C" fn bmiFreeMessage(message: *mut BmiMessage) {
    release("bmiFreeMessage", message, |m| {
        // SAFETY: from Box::into_raw in bmiInitMessage, released once (caller's promise).
        drop(unsafe { Box::from_raw(m) })
    })
}

/// One push to `message` whose argument is a C string (`what` names it in errors).
///
/// # Safety
/// `message` NULL or from bmiInitMessage, used by one thread at a time; `text` NULL or
/// NUL-terminated.
unsafe fn push_text(
    name: &str,
    what: &str,
    message: *mut BmiMessage,
    text: *const c_char,
    push: fn(&[u8]) -> Push<'_>,
) -> BmiError {
    guard(name, || {
        if message.is_null() {
            return Err(null(&format!("{name}: message")));
        }
        // SAFETY: non-NULL, from bmiInitMessage, not shared (caller's promise).
        let m = unsafe { &mut *message };
        // The error's text is made only when there is one: this runs for every envelope
        // call of every message.
        if text.is_null() {
            return Err(m.fail_with(null(&format!("{name}: {what}"))));
        }
        // SAFETY: non-NULL, NUL-terminated (caller's promise).
        m.push(push(unsafe { CStr::from_ptr(text) }.to_bytes()))
    })
}

/// One push to `message` whose argument is `length` bytes at `data` (`max` at most).
///
/// # Safety
/// As `push_text`; `data` readable for `length` bytes when non-NULL.
unsafe fn push_bytes(
    name: &str,
    message: *mut BmiMessage,
    data: *const c_char,
    length: c_int,
    max: usize,
    push: fn(&[u8]) -> Push<'_>,
) -> BmiError {
    guard(name, || {
        if message.is_null() {
            return Err(null(&format!("{name}: message")));
        }
        // SAFETY: non-NULL, from bmiInitMessage, not shared (caller's promise).
        let m = unsafe { &mut *message };
        let bad = |why: String| Failure::new(error::INVALID_ARG, format!("{name}: {why}"));
        let bytes = if data.is_null() {
            Err(bad("the text is NULL".to_string()))
        } else if length < 0 {
            Err(bad(format!("length {length} is negative")))
        } else if length as usize > max {
            Err(bad(format!("length {length} is more than {max}")))
        } else {
            // SAFETY: `length` readable bytes at `data` (caller's promise).
            Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length as usize) })
        };
        match bytes {
            Ok(b) => m.push(push(b)),
            Err(f) => Err(m.fail_with(f)),
        }
    })
}

/// One push without an argument.
///
/// # Safety
/// As `push_text`.
unsafe fn push_mark(name: &str, message: *mut BmiMessage, push: Push<'static>) -> BmiError {
    guard(name, || {
        if message.is_null() {
            return Err(null(&format!("{name}: message")));
        }
        // SAFETY: non-NULL, from bmiInitMessage, not shared (caller's promise).
        unsafe { &mut *message }.push(push)
    })
}

/// The SMTP client's IP address as text ("127.0.0.1" for a local submission; "" unknown):
/// connects to the Milter and sends CONNECT.
///
/// # Safety
/// `client_ip` NULL or NUL-terminated; `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiProcessConnection(
    client_ip: *const c_char,
    message: *mut BmiMessage,
) -> BmiError {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        push_text(
            "bmiProcessConnection",
            "client_ip",
            message,
            client_ip,
            |b| Push::Connection(b),
        )
    }
}

/// The envelope sender ("" for the null sender): MAIL.
///
/// # Safety
/// As bmiProcessConnection.
#[no_mangle]
pub unsafe extern "C" fn bmiProcessFROM(
    sender: *const c_char,
    message: *mut BmiMessage,
) -> BmiError {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        push_text("bmiProcessFROM", "sender", message, sender, |b| {
            Push::From(b)
        })
    }
}

/// One envelope recipient: RCPT. `optin` may be NULL; its values are not passed to the
/// Milter (docs/bmi.md).
///
/// # Safety
/// As bmiProcessConnection; `optin` NULL or from bmiOptinInit.
#[no_mangle]
pub unsafe extern "C" fn bmiAccumulateTO(
    recipient: *const c_char,
    optin: *mut BmiOptin,
    message: *mut BmiMessage,
) -> BmiError {
    let _ = optin;
    // SAFETY: the caller's promises, passed on.
    unsafe {
        push_text("bmiAccumulateTO", "recipient", message, recipient, |b| {
            Push::To(b)
        })
    }
}

/// The envelope is complete.
///
/// # Safety
/// `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiEndTO(message: *mut BmiMessage) -> BmiError {
    // SAFETY: the caller's promise, passed on.
    unsafe { push_mark("bmiEndTO", message, Push::EndTo) }
}

/// The longest header field bmiAccumulateHeaders takes (Exim's whole header section is at
/// most 1 MB by default).
pub const MAX_HEADER_FIELD: usize = 1 << 20;

/// One whole header field (name, colon, value, folded lines, its line end): HEADER.
///
/// # Safety
/// `field` readable for `length` bytes; `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiAccumulateHeaders(
    field: *const c_char,
    length: c_int,
    message: *mut BmiMessage,
) -> BmiError {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        push_bytes(
            "bmiAccumulateHeaders",
            message,
            field,
            length,
            MAX_HEADER_FIELD,
            |b| Push::Header(b),
        )
    }
}

/// The header is complete: EOH.
///
/// # Safety
/// `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiEndHeaders(message: *mut BmiMessage) -> BmiError {
    // SAFETY: the caller's promise, passed on.
    unsafe { push_mark("bmiEndHeaders", message, Push::EndHeaders) }
}

/// A piece of the body, of any size, split anywhere: BODY.
///
/// # Safety
/// `chunk` readable for `length` bytes; `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiAccumulateBody(
    chunk: *const c_char,
    length: c_int,
    message: *mut BmiMessage,
) -> BmiError {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        push_bytes(
            "bmiAccumulateBody",
            message,
            chunk,
            length,
            c_int::MAX as usize,
            |b| Push::Body(b),
        )
    }
}

/// The body is complete.
///
/// # Safety
/// `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiEndBody(message: *mut BmiMessage) -> BmiError {
    // SAFETY: the caller's promise, passed on.
    unsafe { push_mark("bmiEndBody", message, Push::EndBody) }
}

/// End of message: the Milter's decision, and the verdicts. The Milter connection is finished
/// here (handed back to the pool or closed), whatever the result.
///
/// # Safety
/// `message` NULL or from bmiInitMessage.
#[no_mangle]
pub unsafe extern "C" fn bmiEndMessage(message: *mut BmiMessage) -> BmiError {
    guard("bmiEndMessage", || {
        if message.is_null() {
            return Err(null("bmiEndMessage: message"));
        }
        // SAFETY: non-NULL, from bmiInitMessage, not shared (caller's promise).
        unsafe { &mut *message }.end()
    })
}

// ---- Opt-in ---------------------------------------------------------------------------------

/// A new, empty opt-in.
///
/// # Safety
/// `optin` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bmiOptinInit(optin: *mut *mut BmiOptin) -> BmiError {
    let make = || Ok(Some(Box::into_raw(Box::<BmiOptin>::default())));
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiOptinInit", "optin", optin, make) }
}

/// Adds the values of the C string `values`, split at `separator`.
///
/// # Safety
/// `optin` NULL or from bmiOptinInit; `values` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn bmiOptinMset(
    optin: *mut BmiOptin,
    values: *const c_void,
    separator: c_char,
) -> BmiError {
    guard("bmiOptinMset", || {
        if optin.is_null() {
            return Err(null("bmiOptinMset: optin"));
        }
        // SAFETY: NULL or NUL-terminated (caller's promise).
        let text = unsafe { c_bytes(values.cast(), "bmiOptinMset: values") }?;
        // c_char is i8 on x86_64 and u8 on aarch64: the same byte either way.
        #[allow(clippy::unnecessary_cast)]
        let separator = separator as u8;
        // SAFETY: non-NULL, from bmiOptinInit (caller's promise).
        unsafe { &mut *optin }
            .mset(text, separator)
            .map_err(|e| Failure::new(error::INVALID_ARG, e))
    })
}

/// Releases an opt-in. NULL is allowed.
///
/// # Safety
/// `optin` NULL or from bmiOptinInit, released once.
#[no_mangle]
pub unsafe extern "C" fn bmiOptinFree(optin: *mut BmiOptin) {
    release("bmiOptinFree", optin, |o| {
        // SAFETY: from Box::into_raw in bmiOptinInit, released once (caller's promise).
        drop(unsafe { Box::from_raw(o) })
    })
}

// ---- The verdict list -----------------------------------------------------------------------

/// The message's first verdict (after bmiEndMessage). `*verdict` is always set: NULL when
/// there is none or on error.
///
/// # Safety
/// `message` NULL or from bmiInitMessage; `verdict` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bmiAccessFirstVerdict(
    message: *mut BmiMessage,
    verdict: *mut *const BmiVerdict,
) -> BmiError {
    let make = || {
        if message.is_null() {
            return Err(null("bmiAccessFirstVerdict: message"));
        }
        // SAFETY: non-NULL, from bmiInitMessage (caller's promise).
        let list = unsafe { &*message }.verdicts()?;
        Ok(list.first().map(|v| v as *const BmiVerdict))
    };
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiAccessFirstVerdict", "verdict", verdict, make) }
}

/// The verdict after `current`; `*verdict` is always set: NULL past the last, or when
/// `current` is not one of the message's verdicts.
///
/// # Safety
/// As bmiAccessFirstVerdict; `current` anything (only compared).
#[no_mangle]
pub unsafe extern "C" fn bmiAccessNextVerdict(
    message: *mut BmiMessage,
    current: *const BmiVerdict,
    verdict: *mut *const BmiVerdict,
) -> BmiError {
    let make = || {
        if message.is_null() {
            return Err(null("bmiAccessNextVerdict: message"));
        }
        // SAFETY: non-NULL, from bmiInitMessage (caller's promise).
        let list = unsafe { &*message }.verdicts()?;
        let Some(i) = index_in(list, current) else {
            return Err(Failure::new(
                error::INVALID_ARG,
                "bmiAccessNextVerdict: current is not a verdict of this message",
            ));
        };
        Ok(list.get(i + 1).map(|v| v as *const BmiVerdict))
    };
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiAccessNextVerdict", "verdict", verdict, make) }
}

// ---- Verdict strings ------------------------------------------------------------------------

/// The verdict as a printable string (no ':', no white space), for the MTA's spool; release it
/// with bmiFreeStr. `*text` is always set (NULL on error).
///
/// # Safety
/// `verdict` NULL or a live verdict; `text` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bmiCreateStrFromVerdict(
    verdict: *const BmiVerdict,
    text: *mut *mut c_char,
) -> BmiError {
    let make = || {
        if verdict.is_null() {
            return Err(null("bmiCreateStrFromVerdict: verdict"));
        }
        // SAFETY: non-NULL, live (caller's promise).
        Ok(Some(verdict_str::encode_c(unsafe { &*verdict }).into_raw()))
    };
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiCreateStrFromVerdict", "text", text, make) }
}

/// Releases a string from bmiCreateStrFromVerdict. NULL is allowed.
///
/// # Safety
/// `text` NULL or from bmiCreateStrFromVerdict, released once.
#[no_mangle]
pub unsafe extern "C" fn bmiFreeStr(text: *mut c_char) {
    release("bmiFreeStr", text, |t| {
        // SAFETY: from CString::into_raw in bmiCreateStrFromVerdict (caller's promise).
        drop(unsafe { CString::from_raw(t) })
    })
}

/// The verdict a string from bmiCreateStrFromVerdict stands for, to release with
/// bmiFreeVerdict; any other string is a fatal CLIENT/BAD_VERDICT error. `*verdict` is always
/// set (NULL on error).
///
/// # Safety
/// `text` NULL or NUL-terminated; `verdict` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bmiCreateVerdictFromStr(
    text: *const c_char,
    verdict: *mut *mut BmiVerdict,
) -> BmiError {
    let make = || {
        // SAFETY: NULL or NUL-terminated (caller's promise).
        let bytes = unsafe { c_bytes(text, "bmiCreateVerdictFromStr: text") }?;
        Ok(Some(Box::into_raw(Box::new(verdict_str::decode(bytes)?))))
    };
    // SAFETY: NULL or writable (caller's promise).
    unsafe { hand_out("bmiCreateVerdictFromStr", "verdict", verdict, make) }
}

/// Releases a verdict from bmiCreateVerdictFromStr (never one of a message's). NULL is allowed.
///
/// # Safety
/// `verdict` NULL or from bmiCreateVerdictFromStr, released once.
#[no_mangle]
pub unsafe extern "C" fn bmiFreeVerdict(verdict: *mut BmiVerdict) {
    release("bmiFreeVerdict", verdict, |v| {
        // SAFETY: from Box::into_raw in bmiCreateVerdictFromStr, released once (caller's
        // promise).
        drop(unsafe { Box::from_raw(v) })
    })
}

/// The older tracking string: `*(char **)text` is set to a static string naming the verdict's
/// kind ("default", "discard", "alternate", or "error" for a verdict with an error); never to
/// be freed. NULL on error.
///
/// # Safety
/// `verdict` NULL or a live verdict; `text` NULL or a writable `char *`.
#[no_mangle]
pub unsafe extern "C" fn bmiCreateOldStrFromVerdict(
    verdict: *const BmiVerdict,
    text: *mut c_void,
) -> BmiError {
    let make = || {
        if verdict.is_null() {
            return Err(null("bmiCreateOldStrFromVerdict: verdict"));
        }
        // SAFETY: non-NULL, live (caller's promise).
        let v = unsafe { &*verdict };
        let s: &'static CStr = if error::is_fatal(v.error) {
            c"error"
        } else {
            match v.destination {
                verdict::Destination::Default => c"default",
                verdict::Destination::Discard => c"discard",
                verdict::Destination::Sieve(_) => c"alternate",
            }
        };
        Ok(Some(s.as_ptr()))
    };
    // SAFETY: NULL or a writable char * (caller's promise).
    unsafe { hand_out("bmiCreateOldStrFromVerdict", "text", text.cast(), make) }
}

// ---- One verdict ----------------------------------------------------------------------------

/// The verdict's own error: a recipient deferred at RCPT has a fatal SERVER/TEMPFAIL one;
/// otherwise 0. NULL: a fatal CLIENT/INVALID_ARG.
///
/// # Safety
/// `verdict` NULL or a live verdict.
#[no_mangle]
pub unsafe extern "C" fn bmiVerdictError(verdict: *const BmiVerdict) -> BmiError {
    guard("bmiVerdictError", || {
        if verdict.is_null() {
            return Err(null("bmiVerdictError: verdict"));
        }
        // SAFETY: non-NULL, live (caller's promise).
        let code = unsafe { &*verdict }.error;
        if code == error::OK {
            Ok(())
        } else {
            Err(Failure::new(
                code,
                "the recipient's verdict carries an error",
            ))
        }
    })
}

/// `BMI_TRUE` when the verdict's recipients are delivered normally (and, failing open, for a
/// NULL verdict).
///
/// # Safety
/// `verdict` NULL or a live verdict.
#[no_mangle]
pub unsafe extern "C" fn bmiVerdictDestinationIsDefault(verdict: *const BmiVerdict) -> BmiBoolean {
    guard_value("bmiVerdictDestinationIsDefault", BMI_TRUE, || {
        if verdict.is_null() {
            report(&null("bmiVerdictDestinationIsDefault: verdict"));
            return BMI_TRUE;
        }
        // SAFETY: non-NULL, live (caller's promise).
        match unsafe { &*verdict }.destination {
            verdict::Destination::Default => BMI_TRUE,
            _ => BMI_FALSE,
        }
    })
}

/// The verdict's alternate destination: the Sieve scriptlet, owned by the verdict; NULL for
/// "do not deliver" (and for a default or NULL verdict).
///
/// # Safety
/// `verdict` NULL or a live verdict.
#[no_mangle]
pub unsafe extern "C" fn bmiVerdictAccessDestination(verdict: *const BmiVerdict) -> *const c_char {
    guard_value("bmiVerdictAccessDestination", std::ptr::null(), || {
        if verdict.is_null() {
            report(&null("bmiVerdictAccessDestination: verdict"));
            return std::ptr::null();
        }
        // SAFETY: non-NULL, live (caller's promise).
        match &unsafe { &*verdict }.destination {
            verdict::Destination::Sieve(s) => s.as_ptr(),
            _ => std::ptr::null(),
        }
    })
}

/// Whether rule `rule` fired: a Milter has no numbered rules, so never (`BMI_FALSE`).
///
/// # Safety
/// `verdict` NULL or a live verdict (not looked at).
#[no_mangle]
pub unsafe extern "C" fn bmiVerdictRuleFired(
    verdict: *const BmiVerdict,
    rule: c_int,
) -> BmiBoolean {
    let _ = (verdict, rule);
    BMI_FALSE
}

/// The verdict's first recipient, NULL when it has none (or for a NULL verdict).
///
/// # Safety
/// `verdict` NULL or a live verdict.
#[no_mangle]
pub unsafe extern "C" fn bmiVerdictAccessFirstRecipient(
    verdict: *const BmiVerdict,
) -> *const BmiRecipient {
    guard_value("bmiVerdictAccessFirstRecipient", std::ptr::null(), || {
        if verdict.is_null() {
            report(&null("bmiVerdictAccessFirstRecipient: verdict"));
            return std::ptr::null();
        }
        // SAFETY: non-NULL, live (caller's promise).
        unsafe { &*verdict }
            .recipients
            .first()
            .map_or(std::ptr::null(), |r| r as *const BmiRecipient)
    })
}

/// The recipient after `current`; NULL past the last, or when `current` is not one of the
/// verdict's.
///
/// # Safety
/// `verdict` NULL or a live verdict; `current` anything (only compared).
#[no_mangle]
pub unsafe extern "C" fn bmiVerdictAccessNextRecipient(
    verdict: *const BmiVerdict,
    current: *const BmiRecipient,
) -> *const BmiRecipient {
    guard_value("bmiVerdictAccessNextRecipient", std::ptr::null(), || {
        if verdict.is_null() {
            report(&null("bmiVerdictAccessNextRecipient: verdict"));
            return std::ptr::null();
        }
        // SAFETY: non-NULL, live (caller's promise).
        let list = &unsafe { &*verdict }.recipients;
        index_in(list, current)
            .and_then(|i| list.get(i + 1))
            .map_or(std::ptr::null(), |r| r as *const BmiRecipient)
    })
}

/// The recipient's address, NUL-terminated, in writable memory owned by its verdict (Exim
/// writes a NUL over the '@'; that changes nothing the verdict says). NULL for NULL.
///
/// # Safety
/// `recipient` NULL or from bmiVerdictAccess*Recipient of a live verdict.
#[no_mangle]
pub unsafe extern "C" fn bmiRecipientAccessAddress(recipient: *const BmiRecipient) -> *mut c_char {
    guard_value("bmiRecipientAccessAddress", std::ptr::null_mut(), || {
        if recipient.is_null() {
            report(&null("bmiRecipientAccessAddress: recipient"));
            return std::ptr::null_mut();
        }
        // SAFETY: non-NULL, a recipient of a live verdict (caller's promise).
        unsafe { &*recipient }.writable_address().cast()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_in_finds_only_pointers_at_elements() {
        let v = [10u64, 20, 30];
        assert_eq!(index_in(&v, &v[2]), Some(2));
        let inside = (&v[1] as *const u64 as usize + 1) as *const u64;
        assert_eq!(index_in(&v, inside), None);
        assert_eq!(index_in(&v, std::ptr::null()), None);
        let past = v.as_ptr().wrapping_add(3);
        assert_eq!(index_in(&v, past), None);
    }
}
