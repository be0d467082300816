//! The C ABI: the only place that knows about C. Every exported function runs inside `guard`,
//! which catches a panic (it becomes `SPAMFILTER_STATUS_ERR_INTERNAL`), so nothing ever unwinds
//! into the MTA; pointers are checked before anything else happens. Caller-filled structs carry
//! their size, and fields past that size are treated as absent, so the structs can grow. A
//! caller's struct may therefore be shorter than ours (built against an older header): it is
//! never turned into a Rust reference, only copied within its size (the message) or written
//! field by field within its size (the result).

use crate::error::{Error, ErrorKind};
use crate::handle::Handle;
use crate::message::{Content, Envelope, Recipient};
use crate::verdict::{Disposition, RecipientReject, VerdictKind};
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Read;
use std::mem::{offset_of, size_of, size_of_val, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr::{addr_of_mut, copy_nonoverlapping};

/// Status of every call. Stable numbers; `spamfilter_status_text` describes each.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamfilterStatus {
    /// Success.
    Ok = 0,
    /// A NULL pointer, a bad struct size or another invalid argument from the caller.
    ErrArgument = 1,
    /// The option file is missing, unreadable or has a bad value.
    ErrConfig = 2,
    /// The Milter could not be reached.
    ErrConnect = 3,
    /// The Milter did not answer in time (TIMEOUT, CONNECT_TIMEOUT or MESSAGE_TIMEOUT).
    ErrTimeout = 4,
    /// The Milter broke the Milter protocol.
    ErrProtocol = 5,
    /// Reading from or writing to the Milter failed, or it closed the connection.
    ErrIo = 6,
    /// The message or envelope passed by the MTA is unusable (or its read callback failed).
    ErrMessage = 7,
    /// The SOCKS proxy refused or failed the connection.
    ErrSocks = 8,
    /// An internal error in the library (a bug); the message was not filtered.
    ErrInternal = 9,
}

/// `SpamfilterMessage::flags`: fill `SpamfilterResult::transcript` (for tools, not for the MTA).
pub const SPAMFILTER_FLAG_TRANSCRIPT: u32 = 1;

/// The smallest `SpamfilterResult::struct_size` accepted: the fields up to `elapsed_ms`
/// (the first version of the struct). Fields past `struct_size` are neither written nor read.
const RESULT_MIN_SIZE: usize = offset_of!(SpamfilterResult, elapsed_ms) + size_of::<u64>();

/// The smallest `SpamfilterMessage::struct_size` accepted: the envelope up to the recipients.
const MESSAGE_MIN_SIZE: usize = offset_of!(SpamfilterMessage, recipient_count) + size_of::<usize>();

/// What the MTA should do with the message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamfilterKind {
    /// No verdict: deliver normally (the null action).
    None = 0,
    /// Run `verdict`, a Sieve scriptlet, through `spamfilterN_string_action`.
    Verdict = 1,
    /// Defer the message with the SMTP reply in `reply` (the Milter's temporary failure).
    Defer = 2,
}

/// The Milter's final disposition, in structured form.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamfilterDisposition {
    /// Continue / nothing decided: deliver.
    Continue = 0,
    /// Accept: deliver, no further filtering.
    Accept = 1,
    /// Reject (`reply` holds the SMTP reply).
    Reject = 2,
    /// Temporary failure (`reply` holds the SMTP reply).
    Tempfail = 3,
    /// Discard silently.
    Discard = 4,
}

/// One recipient's own outcome: the Milter refused it at RCPT, and that stands whatever the
/// message's result says (sendmail's and Postfix's per-recipient semantics).
#[repr(C)]
pub struct SpamfilterRecipientResult {
    /// Its position in `SpamfilterMessage::recipients` (0-based).
    pub index: usize,
    /// Its address as the MTA passed it, NUL-terminated.
    pub address: *mut c_char,
    /// `SPAMFILTER_DISPOSITION_REJECT`: refuse it permanently with `reply`;
    /// `SPAMFILTER_DISPOSITION_TEMPFAIL`: defer it (for it alone) with `reply`.
    pub disposition: SpamfilterDisposition,
    /// The SMTP reply for it (`"550 5.1.1 ..."`, `"451 4.7.1 ..."`), NUL-terminated.
    pub reply: *mut c_char,
}

/// Reads up to `len` bytes of the message into `buf`. Returns the number of bytes read, 0 at
/// the end of the message, or a negative value on error.
pub type SpamfilterReadFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize) -> isize>;

/// A Milter macro the MTA passes: `name` as written on the wire (`{tls_version}`, or a one-letter
/// name); braces are optional.
#[repr(C)]
pub struct SpamfilterMacro {
    pub name: *const c_char,
    pub value: *const c_char,
}

/// One envelope recipient.
#[repr(C)]
pub struct SpamfilterRecipient {
    /// The address without angle brackets (NUL-terminated).
    pub address: *const c_char,
    /// The ESMTP parameters of its RCPT command, each as its own string (may be NULL when
    /// `esmtp_argc` is 0).
    pub esmtp_args: *const *const c_char,
    pub esmtp_argc: usize,
}

/// One message and its envelope, filled by the MTA. Set `struct_size` to
/// `sizeof(SpamfilterMessage)`; fields beyond a smaller size are treated as absent. Every string
/// is NUL-terminated; NULL means "not known". The message is passed either as `data`/`data_len`
/// or through `read` (when `read` is set, `data` is ignored).
#[repr(C)]
pub struct SpamfilterMessage {
    pub struct_size: usize,
    /// The client's verified host name, or NULL.
    pub client_name: *const c_char,
    /// The client's IPv4 or IPv6 address as text, or NULL for a local submission.
    pub client_addr: *const c_char,
    /// The client's TCP port.
    pub client_port: u16,
    /// The HELO/EHLO argument, or NULL.
    pub helo: *const c_char,
    /// The reverse path without angle brackets; "" (or NULL) for the null sender `<>`.
    pub sender: *const c_char,
    /// The ESMTP parameters of MAIL FROM.
    pub mail_args: *const *const c_char,
    pub mail_argc: usize,
    /// The recipients.
    pub recipients: *const SpamfilterRecipient,
    pub recipient_count: usize,
    /// The MTA's host name (macro `j`).
    pub mta_hostname: *const c_char,
    /// The queue or session id (macro `i`).
    pub queue_id: *const c_char,
    /// SMTP AUTH mechanism (`{auth_type}`) and authenticated user (`{auth_authen}`).
    pub auth_type: *const c_char,
    pub auth_authen: *const c_char,
    /// Further macros (TLS facts such as `{tls_version}`, `{cipher}`, or anything else).
    pub macros: *const SpamfilterMacro,
    pub macro_count: usize,
    /// The message (header and body as received, LF or CRLF line ends).
    pub data: *const u8,
    pub data_len: usize,
    /// Or: a read callback and its context, so that the message is never held whole.
    pub read: SpamfilterReadFn,
    pub read_ctx: *mut c_void,
    /// `SPAMFILTER_FLAG_*` bits (0 for an MTA).
    pub flags: u32,
}

/// The result of `spamfilter_filter`. Set `struct_size` to `sizeof(SpamfilterResult)` before
/// the call; release what it owns with `spamfilter_result_free`.
#[repr(C)]
pub struct SpamfilterResult {
    pub struct_size: usize,
    /// What the MTA should do.
    pub kind: SpamfilterKind,
    /// For `SPAMFILTER_KIND_VERDICT`: the Sieve scriptlet, NUL-terminated; else NULL.
    pub verdict: *mut c_char,
    /// Length of `verdict` in bytes, without the NUL.
    pub verdict_len: usize,
    /// The Milter's final disposition.
    pub disposition: SpamfilterDisposition,
    /// The SMTP reply for a reject or deferral (`"554 5.7.1 ..."`), or NULL.
    pub reply: *mut c_char,
    /// The quarantine reason when the Milter asked for quarantine, or NULL.
    pub quarantine_reason: *mut c_char,
    /// How many recipients the Milter refused individually at RCPT.
    pub rejected_recipients: usize,
    /// Milliseconds the Milter conversation took.
    pub elapsed_ms: u64,
    /// With `SPAMFILTER_FLAG_TRANSCRIPT` in the message's `flags`: the whole conversation, one
    /// line per event (how the Milter was reached, what was negotiated, every packet each way),
    /// also when the call failed; else NULL. Present only when `struct_size` covers it.
    pub transcript: *mut c_char,
    /// Every recipient the Milter refused at RCPT, in envelope order, with its own outcome: the
    /// MTA applies that to it, and `kind` (with `verdict` or `reply`) to every other recipient.
    /// NULL when there is none. Present only when `struct_size` covers it and
    /// `recipient_result_count`; a caller whose struct ends earlier gets `kind` for every
    /// recipient, a deferral where a recipient was deferred at RCPT (docs/verdicts.md).
    pub recipient_results: *mut SpamfilterRecipientResult,
    /// The number of entries in `recipient_results`.
    pub recipient_result_count: usize,
}

/// The opaque handle returned by `spamfilter_init`.
pub struct SpamfilterHandle {
    inner: Handle,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Sets this thread's `spamfilter_last_error()` text (the BMI face shares it).
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn fail(kind: ErrorKind, message: &str) -> SpamfilterStatus {
    set_last_error(message);
    status_of(kind)
}

fn status_of(kind: ErrorKind) -> SpamfilterStatus {
    match kind {
        ErrorKind::Config => SpamfilterStatus::ErrConfig,
        ErrorKind::Connect => SpamfilterStatus::ErrConnect,
        ErrorKind::Timeout => SpamfilterStatus::ErrTimeout,
        ErrorKind::Protocol => SpamfilterStatus::ErrProtocol,
        ErrorKind::Io => SpamfilterStatus::ErrIo,
        ErrorKind::Message => SpamfilterStatus::ErrMessage,
        ErrorKind::Socks => SpamfilterStatus::ErrSocks,
    }
}

fn argument_error(message: &str) -> SpamfilterStatus {
    set_last_error(message);
    SpamfilterStatus::ErrArgument
}

/// Runs `f`, turning a panic into `ErrInternal` with the panic's text as the last error.
fn guard(name: &str, f: impl FnOnce() -> SpamfilterStatus) -> SpamfilterStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(status) => status,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!("{name}: internal error: {what}"));
            SpamfilterStatus::ErrInternal
        }
    }
}

/// Reads the option file at `option_file` and returns a new handle in `*handle_out`. Nothing is
/// connected yet. On failure `*handle_out` is NULL and `spamfilter_last_error()` says what was
/// wrong (file, line, option, value).
///
/// # Safety
/// `option_file` must be NULL or a NUL-terminated string; `handle_out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn spamfilter_init(
    option_file: *const c_char,
    handle_out: *mut *mut SpamfilterHandle,
) -> SpamfilterStatus {
    guard("spamfilter_init", || {
        if handle_out.is_null() {
            return argument_error("spamfilter_init: handle_out is NULL");
        }
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { *handle_out = std::ptr::null_mut() };
        if option_file.is_null() {
            return fail(
                ErrorKind::Config,
                "spamfilter_init: option file path is NULL",
            );
        }
        // SAFETY: the caller promises a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(option_file) };
        let path = Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
        );
        match Handle::open(path) {
            Ok(h) => {
                let boxed = Box::new(SpamfilterHandle { inner: h });
                // SAFETY: as above.
                unsafe { *handle_out = Box::into_raw(boxed) };
                SpamfilterStatus::Ok
            }
            Err(e) => fail(e.kind, &e.message),
        }
    })
}

/// Runs one complete Milter conversation for `message` and fills `*result`. Blocking, on the
/// calling thread; any number of threads may call it at once with the same handle. On failure
/// (status other than `SPAMFILTER_STATUS_OK`) the result holds no verdict and
/// `spamfilter_last_error()` says why: the MTA decides (spamfilterN_optional) whether the message
/// passes unfiltered or is deferred.
///
/// # Safety
/// `handle` from `spamfilter_init`; `message` and `result` NULL or valid for their
/// `struct_size` bytes (readable, and writable for `result`), which may be fewer than
/// `sizeof` in this header (a struct from an older one); every pointer inside `message` valid
/// for its stated length.
#[no_mangle]
pub unsafe extern "C" fn spamfilter_filter(
    handle: *const SpamfilterHandle,
    message: *const SpamfilterMessage,
    result: *mut SpamfilterResult,
) -> SpamfilterStatus {
    guard("spamfilter_filter", || {
        if result.is_null() {
            return argument_error("spamfilter_filter: result is NULL");
        }
        // SAFETY: non-NULL; every result holds at least its struct_size.
        let size = unsafe { caller_struct_size(result) };
        if size < RESULT_MIN_SIZE {
            return argument_error(&format!(
                "spamfilter_filter: result struct_size is {size}, expected at least {RESULT_MIN_SIZE}"
            ));
        }
        // Cleared first, so that the caller finds no stale pointers whatever happens next.
        // SAFETY (both stores): non-NULL, writable for its `size` bytes (caller's promise).
        unsafe { store_result(result, size, EMPTY_RESULT) };
        let mut out = EMPTY_RESULT;
        // SAFETY: the caller's promises on handle and message, passed on.
        let room = Room {
            transcript: result_has_transcript(size),
            recipients: result_has_recipients(size),
        };
        let status = unsafe { filter_into(handle, message, room, &mut out) };
        unsafe { store_result(result, size, out) };
        status
    })
}

/// What the caller's result has room for, of the fields a shorter struct may lack.
#[derive(Clone, Copy)]
struct Room {
    transcript: bool,
    /// `recipient_results` and `recipient_result_count`, both.
    recipients: bool,
}

/// The work of `spamfilter_filter`, into `out` (our own, full-size result); what the caller's
/// result has no room for is not made.
///
/// # Safety
/// As `spamfilter_filter` for `handle` and `message`.
unsafe fn filter_into(
    handle: *const SpamfilterHandle,
    message: *const SpamfilterMessage,
    room: Room,
    out: &mut SpamfilterResult,
) -> SpamfilterStatus {
    if handle.is_null() {
        return argument_error("spamfilter_filter: handle is NULL");
    }
    if message.is_null() {
        return argument_error("spamfilter_filter: message is NULL");
    }
    // SAFETY: non-NULL handle from spamfilter_init, not yet closed (caller's promise).
    let handle = unsafe { &(*handle).inner };
    // SAFETY: non-NULL, readable for its struct_size bytes (caller's promise).
    let msg = match unsafe { read_message(message) } {
        Ok(m) => m,
        Err(e) => return fail(e.kind, &e.message),
    };
    let mut envelope = take_envelope();
    // SAFETY: the caller promises the pointers inside the message are valid.
    let source = match unsafe { envelope_of(&msg, &mut envelope) } {
        Ok(v) => v,
        Err(e) => return fail(e.kind, &e.message),
    };
    let want_transcript = room.transcript && message_flags(&msg) & SPAMFILTER_FLAG_TRANSCRIPT != 0;
    let run = |content: Content<'_>| {
        if want_transcript {
            let (r, t) = handle.filter_traced(&envelope, content);
            let mut text = t.join("\n");
            text.push('\n');
            (r, Some(text))
        } else {
            (handle.filter(&envelope, content), None)
        }
    };
    let (filtered, transcript) = match source {
        Source::Buffer(bytes) => run(Content::Buffer(bytes)),
        Source::Callback(read, ctx) => {
            let mut reader = CallbackReader { read, ctx };
            run(Content::Reader(&mut reader))
        }
    };
    give_back_envelope(envelope);
    if let Some(t) = transcript {
        out.transcript = c_string(t.as_bytes()).0;
    }
    match filtered {
        Ok(mut f) => {
            if room.recipients {
                (out.recipient_results, out.recipient_result_count) =
                    recipient_list(&f.verdict.recipients);
            } else {
                f.verdict = f.verdict.for_kind_only();
            }
            out.kind = match f.verdict.kind {
                VerdictKind::None => SpamfilterKind::None,
                VerdictKind::Sieve => SpamfilterKind::Verdict,
                VerdictKind::Defer => SpamfilterKind::Defer,
            };
            if f.verdict.kind == VerdictKind::Sieve {
                (out.verdict, out.verdict_len) = c_string(&f.verdict.script);
            }
            out.disposition = match f.outcome.disposition {
                Disposition::Continue => SpamfilterDisposition::Continue,
                Disposition::Accept => SpamfilterDisposition::Accept,
                Disposition::Reject => SpamfilterDisposition::Reject,
                Disposition::Tempfail => SpamfilterDisposition::Tempfail,
                Disposition::Discard => SpamfilterDisposition::Discard,
            };
            if let Some(reply) = f.verdict.reply.as_ref().or(f.outcome.reply.as_ref()) {
                out.reply = c_string(reply).0;
            }
            if let Some(q) = &f.outcome.quarantine {
                out.quarantine_reason = c_string(q).0;
            }
            out.rejected_recipients = f.outcome.rejected_recipients.len();
            out.elapsed_ms = f.elapsed.as_millis() as u64;
            SpamfilterStatus::Ok
        }
        Err(e) => fail(e.kind, &e.message),
    }
}

// Caller structs. The caller's struct may be shorter than ours (an MTA built against an older
// header), so a `&SpamfilterMessage` or `&mut SpamfilterResult` to it would be undefined
// behaviour: the compiler may load any field of a reference, also one past the caller's end (and
// did: the guard-page test in c_tests/guard.c faulted). So `struct_size` is read alone, the
// message is copied within it, and the result is written a field at a time within it.

/// A result holding nothing; also what `result_field!` measures a field by.
const EMPTY_RESULT: SpamfilterResult = SpamfilterResult {
    struct_size: size_of::<SpamfilterResult>(),
    kind: SpamfilterKind::None,
    verdict: std::ptr::null_mut(),
    verdict_len: 0,
    disposition: SpamfilterDisposition::Continue,
    reply: std::ptr::null_mut(),
    quarantine_reason: std::ptr::null_mut(),
    rejected_recipients: 0,
    elapsed_ms: 0,
    transcript: std::ptr::null_mut(),
    recipient_results: std::ptr::null_mut(),
    recipient_result_count: 0,
};

/// The `struct_size` a caller's struct begins with, read alone.
///
/// # Safety
/// `ptr` non-NULL and readable for one `usize` (every sized struct begins with it).
unsafe fn caller_struct_size<T>(ptr: *const T) -> usize {
    // SAFETY: as the caller promises; unaligned, as it costs nothing and asks nothing more.
    unsafe { ptr.cast::<usize>().read_unaligned() }
}

/// The caller's message by value: its first min(struct_size, sizeof) bytes over a zeroed struct,
/// so the fields an older struct lacks are NULL or 0 and nothing past its end is read.
///
/// # Safety
/// `message` non-NULL and readable for its `struct_size` bytes.
unsafe fn read_message(message: *const SpamfilterMessage) -> Result<SpamfilterMessage, Error> {
    // SAFETY: as the caller promises.
    let size = unsafe { caller_struct_size(message) };
    if size < MESSAGE_MIN_SIZE {
        return Err(Error::new(
            ErrorKind::Message,
            format!(
                "message struct_size is {size}, expected at least {MESSAGE_MIN_SIZE} (sizeof(SpamfilterMessage) is {})",
                size_of::<SpamfilterMessage>()
            ),
        ));
    }
    let mut copy = MaybeUninit::<SpamfilterMessage>::zeroed();
    let len = size.min(size_of::<SpamfilterMessage>());
    // SAFETY: `len` bytes are readable at `message` (caller's promise) and fit in `copy`.
    unsafe { copy_nonoverlapping(message.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), len) };
    // SAFETY: every field (pointers, integers, an optional function pointer) is valid all-zero
    // and for any bytes the caller wrote; a function pointer is only called as the caller's.
    Ok(unsafe { copy.assume_init() })
}

/// `Some(&raw mut (*$result).$field)` when a caller's result of `$size` bytes holds the whole
/// field, else None: the address is formed only within the caller's struct.
macro_rules! result_field {
    ($result:expr, $size:expr, $field:ident) => {
        if present(
            $size,
            offset_of!(SpamfilterResult, $field),
            size_of_val(&EMPTY_RESULT.$field),
        ) {
            // Callers are often inside an unsafe block already; this one stays for the SAFETY.
            #[allow(unused_unsafe)]
            // SAFETY: the field lies within the `$size` bytes of the caller's struct.
            let p = unsafe { addr_of_mut!((*$result).$field) };
            Some(p)
        } else {
            None
        }
    };
}

/// Writes `value` to a caller's field, if there is one; returns whether there was.
///
/// # Safety
/// `field` from `result_field!` on a writable result.
unsafe fn put<T>(field: Option<*mut T>, value: T) -> bool {
    let Some(p) = field else { return false };
    // SAFETY: within the caller's struct, writable (caller's promise).
    unsafe { p.write_unaligned(value) };
    true
}

/// Releases the string in a caller's field, if there is one, and leaves NULL there.
///
/// # Safety
/// `field` from `result_field!` on a writable result; its string NULL or from `c_string`.
unsafe fn release_string(field: Option<*mut *mut c_char>) {
    let Some(p) = field else { return };
    // SAFETY: within the caller's struct (caller's promise).
    let s = unsafe { p.read_unaligned() };
    if !s.is_null() {
        // SAFETY: from CString::into_raw in c_string, released once: NULL is left behind.
        drop(unsafe { CString::from_raw(s) });
    }
    // SAFETY: as above.
    unsafe { p.write_unaligned(std::ptr::null_mut()) };
}

/// Writes `out` into the caller's result field by field, within its `size` bytes (never its
/// `struct_size`, which is the caller's). A string without a field to hold it is released.
///
/// # Safety
/// `result` non-NULL and writable for `size` bytes.
unsafe fn store_result(result: *mut SpamfilterResult, size: usize, out: SpamfilterResult) {
    // SAFETY (every put): fields of the caller's writable result.
    unsafe {
        put(result_field!(result, size, kind), out.kind);
        put(result_field!(result, size, verdict), out.verdict);
        put(result_field!(result, size, verdict_len), out.verdict_len);
        put(result_field!(result, size, disposition), out.disposition);
        put(result_field!(result, size, reply), out.reply);
        put(
            result_field!(result, size, quarantine_reason),
            out.quarantine_reason,
        );
        put(
            result_field!(result, size, rejected_recipients),
            out.rejected_recipients,
        );
        put(result_field!(result, size, elapsed_ms), out.elapsed_ms);
        if !put(result_field!(result, size, transcript), out.transcript) {
            let mut orphan = out.transcript;
            // SAFETY: NULL or from c_string, and stored nowhere.
            release_string(Some(&mut orphan));
        }
        store_recipient_results(
            result,
            size,
            out.recipient_results,
            out.recipient_result_count,
        );
    }
}

/// True when a result of `size` bytes has room for the per-recipient list: both its fields.
fn result_has_recipients(size: usize) -> bool {
    present(
        size,
        offset_of!(SpamfilterResult, recipient_results),
        size_of::<*mut SpamfilterRecipientResult>(),
    ) && present(
        size,
        offset_of!(SpamfilterResult, recipient_result_count),
        size_of::<usize>(),
    )
}

/// The per-recipient list as the C struct holds it (NULL and 0 for none), released by
/// `release_recipient_list`.
fn recipient_list(list: &[RecipientReject]) -> (*mut SpamfilterRecipientResult, usize) {
    if list.is_empty() {
        return (std::ptr::null_mut(), 0);
    }
    let entries: Box<[SpamfilterRecipientResult]> = list
        .iter()
        .map(|r| SpamfilterRecipientResult {
            index: r.index,
            address: c_string(&r.address).0,
            disposition: if r.tempfail {
                SpamfilterDisposition::Tempfail
            } else {
                SpamfilterDisposition::Reject
            },
            reply: c_string(&r.reply).0,
        })
        .collect();
    let count = entries.len();
    (Box::into_raw(entries).cast(), count)
}

/// Releases a list made by `recipient_list`.
///
/// # Safety
/// `list` and `count` as `recipient_list` returned them, released once.
unsafe fn release_recipient_list(list: *mut SpamfilterRecipientResult, count: usize) {
    if list.is_null() {
        return;
    }
    // SAFETY: a boxed slice of `count` entries (caller's promise).
    let entries = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(list, count)) };
    for e in entries.iter() {
        for p in [e.address, e.reply] {
            if !p.is_null() {
                // SAFETY: from CString::into_raw in c_string, released once with the list.
                drop(unsafe { CString::from_raw(p) });
            }
        }
    }
}

/// Writes the per-recipient list into the caller's result, each of its two fields only within
/// `size`; a list without room for both is released (filter_into makes none then).
///
/// # Safety
/// `result` non-NULL and writable for `size` bytes; `list`, `count` from `recipient_list`.
unsafe fn store_recipient_results(
    result: *mut SpamfilterResult,
    size: usize,
    list: *mut SpamfilterRecipientResult,
    count: usize,
) {
    if !result_has_recipients(size) {
        // SAFETY: made by recipient_list and stored nowhere.
        unsafe { release_recipient_list(list, count) };
        return;
    }
    // SAFETY: both fields lie within the caller's writable `size` bytes.
    unsafe {
        put(result_field!(result, size, recipient_results), list);
        put(result_field!(result, size, recipient_result_count), count);
    }
}

/// Releases the per-recipient list of a caller's result and leaves NULL and 0, when its `size`
/// has room for the list.
///
/// # Safety
/// `result` non-NULL and writable for `size` bytes; the list as spamfilter_filter left it.
unsafe fn free_recipient_results(result: *mut SpamfilterResult, size: usize) {
    let (Some(list), Some(count)) = (
        result_field!(result, size, recipient_results),
        result_field!(result, size, recipient_result_count),
    ) else {
        return;
    };
    // SAFETY: within the caller's struct; the list and its count as recipient_list made them
    // (spamfilter_result_free's contract: the caller does not change them), then NULL and 0.
    unsafe {
        release_recipient_list(list.read_unaligned(), count.read_unaligned());
        list.write_unaligned(std::ptr::null_mut());
        count.write_unaligned(0);
    }
}

/// True when a result of `size` bytes has room for the transcript.
fn result_has_transcript(size: usize) -> bool {
    present(
        size,
        offset_of!(SpamfilterResult, transcript),
        size_of::<*mut c_char>(),
    )
}

/// Bytes → a malloc-free C string owned by Rust (NUL bytes cannot occur: replaced by '?').
fn c_string(bytes: &[u8]) -> (*mut c_char, usize) {
    let clean: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { b'?' } else { b })
        .collect();
    let len = clean.len();
    let c = CString::new(clean).unwrap_or_default();
    (c.into_raw(), len)
}

/// Releases what `result` owns and sets its pointers to NULL. Calling it again, or on a result
/// that holds nothing, does nothing.
///
/// # Safety
/// `result` NULL, or a result filled by `spamfilter_filter` (or zeroed).
#[no_mangle]
pub unsafe extern "C" fn spamfilter_result_free(result: *mut SpamfilterResult) {
    let _ = guard("spamfilter_result_free", || {
        if result.is_null() {
            return SpamfilterStatus::Ok;
        }
        // SAFETY: non-NULL; every result holds at least its struct_size.
        let size = unsafe { caller_struct_size(result) };
        if size < RESULT_MIN_SIZE {
            return SpamfilterStatus::ErrArgument;
        }
        // SAFETY: a result from spamfilter_filter (or zeroed), writable for its `size` bytes;
        // its non-NULL strings came from c_string.
        unsafe {
            release_string(result_field!(result, size, verdict));
            release_string(result_field!(result, size, reply));
            release_string(result_field!(result, size, quarantine_reason));
            release_string(result_field!(result, size, transcript));
            put(result_field!(result, size, verdict_len), 0);
        }
        // SAFETY: as above.
        unsafe { free_recipient_results(result, size) };
        SpamfilterStatus::Ok
    });
}

/// Releases a handle. NULL is allowed.
///
/// # Safety
/// `handle` NULL or from `spamfilter_init`, not used again afterwards (and by no other thread).
#[no_mangle]
pub unsafe extern "C" fn spamfilter_close(handle: *mut SpamfilterHandle) {
    let _ = guard("spamfilter_close", || {
        if !handle.is_null() {
            // SAFETY: from Box::into_raw in spamfilter_init, released once (caller's promise).
            drop(unsafe { Box::from_raw(handle) });
        }
        SpamfilterStatus::Ok
    });
}

/// The options of `handle` as understood, for tools: one `NAME=value` line per option in the
/// order of the documentation, each followed by where it was set (`# milter.opt:3`) or
/// `# default`, the password shown as `********`; then one `warning: ...` line per warning
/// (unknown options, options set twice). Release it with `spamfilter_string_free`. NULL when
/// `handle` is NULL.
///
/// # Safety
/// `handle` NULL or from `spamfilter_init`.
#[no_mangle]
pub unsafe extern "C" fn spamfilter_describe(handle: *const SpamfilterHandle) -> *mut c_char {
    let mut out: *mut c_char = std::ptr::null_mut();
    let _ = guard("spamfilter_describe", || {
        if handle.is_null() {
            return argument_error("spamfilter_describe: handle is NULL");
        }
        // SAFETY: non-NULL handle from spamfilter_init (caller's promise).
        let config = unsafe { (*handle).inner.config() };
        let mut text = String::new();
        for s in &config.sources {
            let setting = format!("{}={}", s.name, s.value);
            let from = match s.line {
                Some(line) => format!("{}:{line}", config.path),
                None => "default".to_string(),
            };
            text.push_str(&format!("{setting:<40} # {from}\n"));
        }
        for w in &config.warnings {
            text.push_str(&format!("warning: {w}\n"));
        }
        out = c_string(text.as_bytes()).0;
        SpamfilterStatus::Ok
    });
    out
}

/// Releases a string returned by `spamfilter_describe`. NULL is allowed.
///
/// # Safety
/// `s` NULL or from `spamfilter_describe`, released once.
#[no_mangle]
pub unsafe extern "C" fn spamfilter_string_free(s: *mut c_char) {
    let _ = guard("spamfilter_string_free", || {
        if !s.is_null() {
            // SAFETY: from CString::into_raw in c_string (caller's promise).
            drop(unsafe { CString::from_raw(s) });
        }
        SpamfilterStatus::Ok
    });
}

/// The library's name and version, e.g. "milter-spamfilter 0.1.0". Static; never NULL.
#[no_mangle]
pub extern "C" fn spamfilter_version() -> *const c_char {
    static VERSION: &str = concat!("milter-spamfilter ", env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// The reason for the last failure on this thread (empty string if none). The pointer stays
/// valid until the next library call on this thread.
#[no_mangle]
pub extern "C" fn spamfilter_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// A one-line description of a status code. Static; never NULL.
#[no_mangle]
pub extern "C" fn spamfilter_status_text(status: SpamfilterStatus) -> *const c_char {
    let s: &'static CStr = match status {
        SpamfilterStatus::Ok => c"success",
        SpamfilterStatus::ErrArgument => c"invalid argument",
        SpamfilterStatus::ErrConfig => c"bad option file",
        SpamfilterStatus::ErrConnect => c"cannot connect to the Milter",
        SpamfilterStatus::ErrTimeout => c"the Milter did not answer in time",
        SpamfilterStatus::ErrProtocol => c"the Milter broke the protocol",
        SpamfilterStatus::ErrIo => c"I/O error on the Milter connection",
        SpamfilterStatus::ErrMessage => c"unusable message or envelope",
        SpamfilterStatus::ErrSocks => c"the SOCKS proxy failed",
        SpamfilterStatus::ErrInternal => c"internal error",
    };
    s.as_ptr()
}

enum Source<'a> {
    Buffer(&'a [u8]),
    Callback(
        unsafe extern "C" fn(*mut c_void, *mut u8, usize) -> isize,
        *mut c_void,
    ),
}

/// True when `field` (at `offset`, `size` bytes) lies within the caller's `struct_size`.
fn present(struct_size: usize, offset: usize, size: usize) -> bool {
    offset + size <= struct_size
}

macro_rules! field {
    ($msg:expr, $name:ident) => {
        if present(
            $msg.struct_size,
            offset_of!(SpamfilterMessage, $name),
            size_of_val(&$msg.$name),
        ) {
            Some(&$msg.$name)
        } else {
            None
        }
    };
}

/// The bytes of a C string, borrowed; None for NULL.
///
/// # Safety
/// `s` valid and NUL-terminated, or NULL; the bytes stay valid while the MTA's call lasts.
unsafe fn c_bytes<'a>(s: *const c_char) -> Option<&'a [u8]> {
    if s.is_null() {
        None
    } else {
        // SAFETY: non-NULL, NUL-terminated (caller's promise).
        Some(unsafe { CStr::from_ptr(s) }.to_bytes())
    }
}

/// `dst` becomes a copy of `src`, in the memory it already has.
fn set_bytes(dst: &mut Vec<u8>, src: &[u8]) {
    dst.clear();
    dst.extend_from_slice(src);
}

/// `dst` becomes a copy of the C string `s` (None for NULL), in the memory it already has.
///
/// # Safety
/// `s` valid and NUL-terminated, or NULL.
unsafe fn set_opt_bytes(dst: &mut Option<Vec<u8>>, s: *const c_char) {
    // SAFETY: as the caller promises.
    match (unsafe { c_bytes(s) }, dst.as_mut()) {
        (None, _) => *dst = None,
        (Some(b), Some(v)) => set_bytes(v, b),
        (Some(b), None) => *dst = Some(b.to_vec()),
    }
}

/// Fills `out` with `count` strings from the C array `ptr`, reusing the strings it holds.
/// `what` names the array in errors.
///
/// # Safety
/// `ptr` valid for `count` string pointers when non-NULL.
unsafe fn string_list(
    out: &mut Vec<Vec<u8>>,
    what: impl Fn() -> String,
    ptr: *const *const c_char,
    count: usize,
) -> Result<(), Error> {
    out.truncate(count);
    if count == 0 {
        return Ok(());
    }
    if ptr.is_null() {
        return Err(Error::message(format!(
            "{} is NULL but its count is {count}",
            what()
        )));
    }
    if count > 1 << 20 {
        return Err(Error::message(format!(
            "{}: count {count} is not plausible",
            what()
        )));
    }
    for i in 0..count {
        // SAFETY: within the caller's array.
        let s = unsafe { *ptr.add(i) };
        // SAFETY: each entry a valid C string or NULL (caller's promise).
        let Some(b) = (unsafe { c_bytes(s) }) else {
            return Err(Error::message(format!("{}[{i}] is NULL", what())));
        };
        match out.get_mut(i) {
            Some(v) => set_bytes(v, b),
            None => out.push(b.to_vec()),
        }
    }
    Ok(())
}

/// The message's flags, 0 when its `struct_size` does not cover them.
fn message_flags(msg: &SpamfilterMessage) -> u32 {
    field!(msg, flags).copied().unwrap_or(0)
}

thread_local! {
    /// The envelope of this thread's last message, refilled in place for the next one so that
    /// its strings reuse their memory.
    static SPARE_ENVELOPE: std::cell::RefCell<Option<Envelope>> =
        const { std::cell::RefCell::new(None) };
}

/// An envelope to fill: this thread's last one, or a new one.
fn take_envelope() -> Envelope {
    SPARE_ENVELOPE
        .try_with(|e| e.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `env` for this thread's next message, unless it holds a lot.
fn give_back_envelope(env: Envelope) {
    if env.recipients.capacity() <= 1024 && env.macros.capacity() <= 256 {
        let _ = SPARE_ENVELOPE.try_with(|e| *e.borrow_mut() = Some(env));
    }
}

/// Fills `env` from our copy of the message (`read_message`, which checked its minimum size),
/// using only fields within `struct_size`, and returns where the message's bytes come from. Every field of `env` is set: nothing of an earlier message
/// stays.
///
/// # Safety
/// Pointers inside `msg` valid as documented on `SpamfilterMessage`.
unsafe fn envelope_of<'m>(
    msg: &'m SpamfilterMessage,
    env: &mut Envelope,
) -> Result<Source<'m>, Error> {
    // SAFETY (every c_bytes and set_opt_bytes below): the struct's strings are valid C strings
    // or NULL, as the caller promises.
    unsafe { set_opt_bytes(&mut env.client_name, msg.client_name) };
    env.client_addr = None;
    if let Some(addr) = unsafe { c_bytes(msg.client_addr) } {
        let text = String::from_utf8_lossy(addr);
        let trimmed = text.trim();
        let bare = trimmed
            .strip_prefix("IPv6:")
            .or_else(|| trimmed.strip_prefix("ipv6:"))
            .unwrap_or(trimmed)
            .trim_start_matches('[')
            .trim_end_matches(']');
        if !bare.is_empty() {
            env.client_addr = Some(bare.parse().map_err(|_| {
                Error::message(format!(
                    "client_addr \"{}\" is not an IPv4 or IPv6 address",
                    crate::error::escape(addr)
                ))
            })?);
        }
    }
    env.client_port = msg.client_port;
    unsafe { set_opt_bytes(&mut env.helo, msg.helo) };
    set_bytes(
        &mut env.sender,
        unsafe { c_bytes(msg.sender) }.unwrap_or_default(),
    );
    unsafe {
        string_list(
            &mut env.mail_args,
            || "mail_args".to_string(),
            msg.mail_args,
            msg.mail_argc,
        )
    }?;
    let count = msg.recipient_count;
    if count > 0 {
        if msg.recipients.is_null() {
            return Err(Error::message(format!(
                "recipients is NULL but recipient_count is {count}"
            )));
        }
        if count > 1 << 20 {
            return Err(Error::message(format!(
                "recipient_count {count} is not plausible"
            )));
        }
    }
    env.recipients.truncate(count);
    for i in 0..count {
        // SAFETY: within the caller's array of fixed-size elements; read by value.
        let r = unsafe { msg.recipients.add(i).read() };
        let address = unsafe { c_bytes(r.address) }
            .ok_or_else(|| Error::message(format!("recipients[{i}].address is NULL")))?;
        if env.recipients.len() == i {
            env.recipients.push(Recipient::default());
        }
        let rcpt = &mut env.recipients[i];
        set_bytes(&mut rcpt.address, address);
        unsafe {
            string_list(
                &mut rcpt.esmtp_args,
                || format!("recipients[{i}].esmtp_args"),
                r.esmtp_args,
                r.esmtp_argc,
            )
        }?;
    }
    let mut macros = 0;
    let mut push = |name: &[u8], value: &[u8]| {
        match env.macros.get_mut(macros) {
            Some((n, v)) => {
                set_bytes(n, name);
                set_bytes(v, value);
            }
            None => env.macros.push((name.to_vec(), value.to_vec())),
        }
        macros += 1;
    };
    for (name, v) in [
        (&b"j"[..], field!(msg, mta_hostname)),
        (b"i", field!(msg, queue_id)),
        (b"{auth_type}", field!(msg, auth_type)),
        (b"{auth_authen}", field!(msg, auth_authen)),
    ] {
        if let Some(value) = v.and_then(|p| unsafe { c_bytes(*p) }) {
            push(name, value);
        }
    }
    if let (Some(&ptr), Some(&count)) = (field!(msg, macros), field!(msg, macro_count)) {
        if count > 0 {
            if ptr.is_null() {
                return Err(Error::message(format!(
                    "macros is NULL but macro_count is {count}"
                )));
            }
            if count > 1 << 16 {
                return Err(Error::message(format!(
                    "macro_count {count} is not plausible"
                )));
            }
            for i in 0..count {
                // SAFETY: within the caller's array of fixed-size elements; read by value.
                let m = unsafe { ptr.add(i).read() };
                let name = unsafe { c_bytes(m.name) }
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| Error::message(format!("macros[{i}].name is NULL or empty")))?;
                if let Some(value) = unsafe { c_bytes(m.value) } {
                    push(name, value);
                }
            }
        }
    }
    env.macros.truncate(macros);
    let read = field!(msg, read).copied().flatten();
    let read_ctx = field!(msg, read_ctx)
        .copied()
        .unwrap_or(std::ptr::null_mut());
    let source = match read {
        Some(f) => Source::Callback(f, read_ctx),
        None => {
            let data = field!(msg, data).copied().unwrap_or(std::ptr::null());
            let len = field!(msg, data_len).copied().unwrap_or(0);
            if data.is_null() {
                if len != 0 {
                    return Err(Error::message(format!(
                        "data is NULL but data_len is {len} (and no read callback is set)"
                    )));
                }
                Source::Buffer(&[])
            } else {
                // SAFETY: the caller promises `len` readable bytes at `data`.
                Source::Buffer(unsafe { std::slice::from_raw_parts(data, len) })
            }
        }
    };
    Ok(source)
}

struct CallbackReader {
    read: unsafe extern "C" fn(*mut c_void, *mut u8, usize) -> isize,
    ctx: *mut c_void,
}

impl Read for CallbackReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // SAFETY: the MTA's callback writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { (self.read)(self.ctx, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::other(format!(
                "the MTA's read callback returned {n}"
            )))
        } else if n as usize > buf.len() {
            Err(std::io::Error::other(format!(
                "the MTA's read callback returned {n}, more than the {} bytes asked for",
                buf.len()
            )))
        } else {
            Ok(n as usize)
        }
    }
}
