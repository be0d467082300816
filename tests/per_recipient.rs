//! Every recipient keeps its own outcome (issue 16): a recipient the Milter refused at RCPT keeps
//! that refusal whatever the Milter decides about the message later, and the others get the
//! message's outcome (sendmail's documented semantics, Postfix's behaviour).
//!
//! Each conversation runs through the C ABI (`spamfilter_filter` with a full-size result, so the
//! per-recipient list is there) against tests/milters/script_milter.py (pymilter on libmilter,
//! package python3-milter); every Sieve verdict is applied by Pigeonhole's sieve-test (package
//! dovecot-sieve) once per recipient, the envelope "to" set to that recipient. What each
//! recipient then gets (delivered with which edits, rejected or deferred with which reply, or
//! discarded) is compared with `model`, sendmail's per-recipient semantics written here without
//! the library's code:
//! - `the_table_row_*`: the six rows of the table, each giving Postfix's column;
//! - `random_scripts_match_sendmail_semantics`: 300 seeded random scripts (PER_RECIPIENT_SEED
//!   to replay a seed, PER_RECIPIENT_SCRIPTS for another count);
//! - `an_older_result_struct_*`: a caller whose struct ends before the list.

#[path = "support/milters.rs"]
mod milters;
#[path = "support/sieve.rs"]
mod sieve;

use milter_spamfilter::ffi::{
    spamfilter_filter, spamfilter_init, spamfilter_last_error, spamfilter_result_free,
    SpamfilterDisposition, SpamfilterHandle, SpamfilterKind, SpamfilterMessage,
    SpamfilterRecipient, SpamfilterResult, SpamfilterStatus,
};
use std::ffi::{c_char, CStr, CString};
use std::mem::{offset_of, size_of};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Scripts: what the Milter answers, and where.

/// The Milter's answer at one step.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Accept,
    Reject,
    Tempfail,
    Discard,
    /// A REPLYCODE: `"550 5.7.1 text"` or `"451 4.3.0 text"`.
    Code(String),
}

/// Where in the conversation an answer is given.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Connect,
    Helo,
    Mail,
    /// RCPT of the recipient at this index.
    Rcpt(usize),
    Data,
    /// The first header field.
    Header,
    Eoh,
    /// The first body chunk.
    Body,
    Eom,
}

#[derive(Debug, Clone, PartialEq)]
enum EditStep {
    AddHeader(String, String),
    /// CHGHEADER Subject 1.
    ChgSubject(String),
    AddRcpt(String),
    DelRcpt(String),
}

#[derive(Debug, Clone)]
struct Script {
    recipients: Vec<String>,
    /// At most one answer per step; every other step continues.
    answers: Vec<(Step, Reply)>,
    /// Made at end of message, before its answer.
    edits: Vec<EditStep>,
}

impl Script {
    fn new(recipients: &[&str]) -> Script {
        Script {
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            answers: Vec::new(),
            edits: Vec::new(),
        }
    }

    fn at(mut self, step: Step, reply: Reply) -> Script {
        self.answers.push((step, reply));
        self
    }

    fn answer(&self, step: Step) -> Option<&Reply> {
        self.answers
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, r)| r)
    }

    /// The script as script_milter.py reads it (JSON).
    fn json(&self) -> String {
        let q = |s: &str| milters::json_string(s);
        let reply = |r: &Reply| match r {
            Reply::Accept => q("accept"),
            Reply::Reject => q("reject"),
            Reply::Tempfail => q("tempfail"),
            Reply::Discard => q("discard"),
            Reply::Code(text) => q(text),
        };
        let mut parts = Vec::new();
        let mut rcpt = Vec::new();
        for (step, r) in &self.answers {
            let name = match step {
                Step::Connect => "connect",
                Step::Helo => "helo",
                Step::Mail => "envfrom",
                Step::Rcpt(i) => {
                    rcpt.push(format!("{}: {}", q(&self.recipients[*i]), reply(r)));
                    continue;
                }
                Step::Data => "data",
                Step::Header => "header",
                Step::Eoh => "eoh",
                Step::Body => "body",
                Step::Eom => "eom",
            };
            parts.push(format!("{}: {}", q(name), reply(r)));
        }
        parts.push(format!("\"envrcpt\": {{{}}}", rcpt.join(", ")));
        let edits: Vec<String> = self
            .edits
            .iter()
            .map(|e| match e {
                EditStep::AddHeader(n, v) => format!("[\"addheader\", {}, {}]", q(n), q(v)),
                EditStep::ChgSubject(v) => format!("[\"chgheader\", \"Subject\", 1, {}]", q(v)),
                EditStep::AddRcpt(a) => format!("[\"addrcpt\", {}]", q(a)),
                EditStep::DelRcpt(a) => format!("[\"delrcpt\", {}]", q(a)),
            })
            .collect();
        parts.push(format!("\"edits\": [{}]", edits.join(", ")));
        format!("{{{}}}", parts.join(", "))
    }

    /// The CONNECT host name that carries the script.
    fn host_name(&self) -> String {
        let hex: String = self.json().bytes().map(|b| format!("{b:02x}")).collect();
        format!("script-{hex}")
    }
}

// ---------------------------------------------------------------------------------------------
// The independent model: what each recipient gets under sendmail's semantics.

/// What happens to one recipient.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Delivered(Delivery),
    Rejected(String),
    Deferred(String),
    Discarded,
}

/// A delivered copy as the recipient sees it.
#[derive(Debug, Clone, PartialEq)]
struct Delivery {
    /// The `X-Script-*` fields, in order.
    added: Vec<(String, String)>,
    subject: String,
    /// Copies sent to recipients the Milter added.
    redirects: Vec<String>,
}

const SUBJECT: &str = "hello";

fn plain() -> Fate {
    Fate::Delivered(Delivery {
        added: Vec::new(),
        subject: SUBJECT.to_string(),
        redirects: Vec::new(),
    })
}

/// Postfix's texts for a reject and a tempfail without REPLYCODE (the library's defaults).
const REJECT_TEXT: &str = "550 5.7.1 Command rejected";
const TEMPFAIL_TEXT: &str = "451 4.7.1 Service unavailable - try again later";

/// A reject or a tempfail with its text; None for accept and discard.
fn refusal(r: &Reply) -> Option<Fate> {
    match r {
        Reply::Reject => Some(Fate::Rejected(REJECT_TEXT.to_string())),
        Reply::Tempfail => Some(Fate::Deferred(TEMPFAIL_TEXT.to_string())),
        Reply::Code(t) if t.starts_with('5') => Some(Fate::Rejected(t.clone())),
        Reply::Code(t) => Some(Fate::Deferred(t.clone())),
        Reply::Accept | Reply::Discard => None,
    }
}

/// sendmail's semantics (libmilter's xxfi_* return values), per recipient:
/// - at CONNECT, HELO and MAIL a reject or tempfail refuses the message for everyone, accept
///   ends filtering (delivered as it is), discard at MAIL discards it (libmilter does not define
///   discard at CONNECT or HELO: the scripts have none there);
/// - at RCPT a reject or tempfail refuses that recipient only, and it stays refused; accept
///   ends filtering for the message (the recipients not refused are delivered as they are);
///   discard discards the message for every recipient not refused;
/// - when every recipient is refused nothing follows;
/// - at DATA, a header, end of header, the body and end of message the answer concerns the
///   message: every recipient not refused at RCPT gets it; at end of message continue or accept
///   delivers with the edits, and a recipient removed by DELRCPT gets nothing.
fn model(s: &Script) -> Vec<Fate> {
    let n = s.recipients.len();
    let mut own: Vec<Option<Fate>> = vec![None; n];
    let rest = |own: &[Option<Fate>], fate: Fate| -> Vec<Fate> {
        own.iter()
            .map(|o| o.clone().unwrap_or_else(|| fate.clone()))
            .collect()
    };
    for step in [Step::Connect, Step::Helo, Step::Mail] {
        match s.answer(step) {
            None => {}
            Some(Reply::Accept) => return vec![plain(); n],
            Some(Reply::Discard) => return vec![Fate::Discarded; n],
            Some(r) => return vec![refusal(r).expect("a refusal"); n],
        }
    }
    for (i, slot) in own.clone().iter().enumerate() {
        debug_assert!(slot.is_none());
        match s.answer(Step::Rcpt(i)) {
            None => {}
            Some(Reply::Accept) => return rest(&own, plain()),
            Some(Reply::Discard) => return rest(&own, Fate::Discarded),
            Some(r) => own[i] = refusal(r),
        }
    }
    if own.iter().all(Option::is_some) {
        return rest(&own, Fate::Discarded);
    }
    for step in [Step::Data, Step::Header, Step::Eoh, Step::Body, Step::Eom] {
        match s.answer(step) {
            None => {}
            Some(Reply::Accept) if step != Step::Eom => return rest(&own, plain()),
            Some(Reply::Accept) => {}
            Some(Reply::Discard) => return rest(&own, Fate::Discarded),
            Some(r) => return rest(&own, refusal(r).expect("a refusal")),
        }
    }
    // End of message, continue or accept: the edits.
    let mut delivery = Delivery {
        added: Vec::new(),
        subject: SUBJECT.to_string(),
        redirects: Vec::new(),
    };
    let mut removed: Vec<&str> = Vec::new();
    for e in &s.edits {
        match e {
            EditStep::AddHeader(n, v) => delivery.added.push((n.clone(), v.clone())),
            EditStep::ChgSubject(v) => delivery.subject = v.clone(),
            EditStep::AddRcpt(a) if !delivery.redirects.contains(a) => {
                delivery.redirects.push(a.clone())
            }
            EditStep::AddRcpt(_) => {}
            EditStep::DelRcpt(a) => removed.push(a),
        }
    }
    own.iter()
        .zip(&s.recipients)
        .map(|(o, r)| match o {
            Some(f) => f.clone(),
            None if removed.contains(&r.as_str()) => Fate::Discarded,
            None => Fate::Delivered(delivery.clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The library, through the C ABI.

/// The library's handle on the shared script_milter, made once.
struct Shared {
    _server: milters::Server,
    handle: *mut SpamfilterHandle,
}

// SAFETY: a handle may be used by any number of threads at once (the contract, §3).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = milters::script_milter();
        let opt = server.dir().join("milter.opt");
        std::fs::write(&opt, format!("HOST=127.0.0.1\nPORT={}\n", server.port))
            .expect("writing milter.opt");
        let path = CString::new(opt.display().to_string()).expect("a path without NUL");
        let mut handle: *mut SpamfilterHandle = std::ptr::null_mut();
        // SAFETY: a valid path string and a writable handle pointer.
        let status = unsafe { spamfilter_init(path.as_ptr(), &mut handle) };
        assert_eq!(status, SpamfilterStatus::Ok, "{}", last_error());
        Shared {
            _server: server,
            handle,
        }
    })
}

fn last_error() -> String {
    // SAFETY: never NULL, valid until the next call on this thread.
    unsafe { CStr::from_ptr(spamfilter_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// # Safety
/// `p` NULL or a NUL-terminated string.
unsafe fn text(p: *const c_char) -> Option<String> {
    // SAFETY: as the caller promises.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// One recipient's own outcome as the result lists it.
#[derive(Debug, Clone, PartialEq)]
struct Own {
    index: usize,
    address: String,
    disposition: SpamfilterDisposition,
    reply: String,
}

/// What the MTA got.
#[derive(Debug)]
struct Native {
    kind: SpamfilterKind,
    verdict: Vec<u8>,
    reply: Option<String>,
    own: Vec<Own>,
}

const MESSAGE: &[u8] = b"From: sender@example.com\r\nTo: r1@example.org\r\n\
    Subject: hello\r\nMessage-ID: <script@example.com>\r\n\r\nHello.\r\n";

/// Runs the script's message through `spamfilter_filter` with a result of `struct_size` bytes.
fn filter(s: &Script, struct_size: usize) -> Native {
    let cs = |t: &str| CString::new(t).expect("no NUL");
    let (host, addr, helo, sender) = (
        cs(&s.host_name()),
        cs("192.0.2.1"),
        cs("client.example.com"),
        cs("sender@example.com"),
    );
    let addresses: Vec<CString> = s.recipients.iter().map(|r| cs(r)).collect();
    let recipients: Vec<SpamfilterRecipient> = addresses
        .iter()
        .map(|a| SpamfilterRecipient {
            address: a.as_ptr(),
            esmtp_args: std::ptr::null(),
            esmtp_argc: 0,
        })
        .collect();
    let msg = SpamfilterMessage {
        struct_size: size_of::<SpamfilterMessage>(),
        client_name: host.as_ptr(),
        client_addr: addr.as_ptr(),
        client_port: 40000,
        helo: helo.as_ptr(),
        sender: sender.as_ptr(),
        mail_args: std::ptr::null(),
        mail_argc: 0,
        recipients: recipients.as_ptr(),
        recipient_count: recipients.len(),
        mta_hostname: std::ptr::null(),
        queue_id: std::ptr::null(),
        auth_type: std::ptr::null(),
        auth_authen: std::ptr::null(),
        macros: std::ptr::null(),
        macro_count: 0,
        data: MESSAGE.as_ptr(),
        data_len: MESSAGE.len(),
        read: None,
        read_ctx: std::ptr::null_mut(),
        flags: 0,
    };
    // SAFETY: all zero is a valid result (NULL pointers, kind none, disposition continue).
    let mut result: SpamfilterResult = unsafe { std::mem::zeroed() };
    result.struct_size = struct_size;
    // SAFETY: a handle from spamfilter_init, a message whose pointers outlive the call.
    let status = unsafe { spamfilter_filter(shared().handle, &msg, &mut result) };
    assert_eq!(status, SpamfilterStatus::Ok, "{}", last_error());
    let mut own = Vec::new();
    if struct_size >= size_of::<SpamfilterResult>() && !result.recipient_results.is_null() {
        // SAFETY: the library's list of recipient_result_count entries.
        let list = unsafe {
            std::slice::from_raw_parts(result.recipient_results, result.recipient_result_count)
        };
        for e in list {
            own.push(Own {
                index: e.index,
                // SAFETY: the library's strings.
                address: unsafe { text(e.address) }.unwrap_or_default(),
                disposition: e.disposition,
                reply: unsafe { text(e.reply) }.unwrap_or_default(),
            });
        }
    }
    let native = Native {
        kind: result.kind,
        verdict: if result.verdict.is_null() {
            Vec::new()
        } else {
            // SAFETY: the library's string of verdict_len bytes.
            unsafe { std::slice::from_raw_parts(result.verdict.cast::<u8>(), result.verdict_len) }
                .to_vec()
        },
        // SAFETY: the library's string.
        reply: unsafe { text(result.reply) },
        own,
    };
    // SAFETY: filled by spamfilter_filter, released once.
    unsafe { spamfilter_result_free(&mut result) };
    assert!(result.recipient_results.is_null() && result.recipient_result_count == 0);
    native
}

// ---------------------------------------------------------------------------------------------
// What each recipient got: the MTA's rule (docs/verdicts.md), with Pigeonhole for the Sieve.

/// The reason of a Pigeonhole reject, from the rejection notice it prints.
fn reject_reason(log: &str) -> String {
    let log = log.replace('\r', "");
    let mark = "was automatically rejected:\n";
    let Some(at) = log.find(mark) else {
        panic!("no rejection notice in:\n{log}");
    };
    let rest = &log[at + mark.len()..];
    rest[..rest.find("\n--").unwrap_or(rest.len())]
        .trim_end()
        .to_string()
}

/// The verdict applied by Pigeonhole for `recipient`.
fn sieve_fate(verdict: &[u8], recipient: &str) -> Fate {
    let run = sieve::pigeonhole().apply(&sieve::for_pigeonhole(verdict), MESSAGE, recipient);
    if run.rejected() {
        assert!(run.stored.is_empty(), "stored after a reject:\n{}", run.log);
        return Fate::Rejected(reject_reason(&run.log));
    }
    if run.discarded() {
        assert!(
            run.stored.is_empty(),
            "stored after a discard:\n{}",
            run.log
        );
        return Fate::Discarded;
    }
    assert_eq!(run.stored.len(), 1, "{}", run.log);
    assert_eq!(run.stored[0].folder, "INBOX", "{}", run.log);
    let header = sieve::parse_header(&run.stored[0].message);
    let value = |v: &[u8]| String::from_utf8_lossy(v).trim().to_string();
    let subjects: Vec<String> = header
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"Subject"))
        .map(|(_, v)| value(v))
        .collect();
    assert_eq!(subjects.len(), 1, "{}", run.log);
    Fate::Delivered(Delivery {
        added: header
            .iter()
            .filter(|(n, _)| n.starts_with(b"X-Script-"))
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), value(v)))
            .collect(),
        subject: subjects[0].clone(),
        redirects: run.redirected_to(),
    })
}

/// Each recipient's outcome as an MTA applies the result: its own entry when it has one, else
/// the message's kind (the Sieve verdict run for it). Where the verdict is a Sieve script it is
/// run for the listed recipients too and must agree: the same reject, or, for one deferred at
/// RCPT, neither a reject nor a discard (kept unedited: Sieve cannot defer).
fn observe(s: &Script, native: &Native) -> Vec<Fate> {
    s.recipients
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let by_sieve = (native.kind == SpamfilterKind::Verdict)
                .then(|| sieve_fate(&native.verdict, address));
            match native.own.iter().find(|o| o.index == i) {
                Some(o) => {
                    assert_eq!(&o.address, address, "{native:?}");
                    let fate = match o.disposition {
                        SpamfilterDisposition::Reject => Fate::Rejected(o.reply.clone()),
                        SpamfilterDisposition::Tempfail => Fate::Deferred(o.reply.clone()),
                        d => panic!("recipient {i}: disposition {d:?} in the list"),
                    };
                    match (&fate, by_sieve) {
                        (_, None) => {}
                        (Fate::Rejected(_), Some(f)) => {
                            assert_eq!(f, fate, "the script for {address}: {native:?}")
                        }
                        (_, Some(f)) => {
                            assert_eq!(f, plain(), "the script for {address}: {native:?}")
                        }
                    }
                    fate
                }
                None => match native.kind {
                    SpamfilterKind::None => plain(),
                    SpamfilterKind::Defer => {
                        Fate::Deferred(native.reply.clone().unwrap_or_default())
                    }
                    SpamfilterKind::Verdict => by_sieve.expect("a Sieve verdict"),
                },
            }
        })
        .collect()
}

/// Runs `s` through the library and Pigeonhole and compares every recipient with the model;
/// returns what they got.
fn check(s: &Script) -> Vec<Fate> {
    let native = filter(s, size_of::<SpamfilterResult>());
    let got = observe(s, &native);
    let want = model(s);
    assert_eq!(
        got,
        want,
        "script {}\nlibrary {native:?}\nverdict:\n{}",
        s.json(),
        String::from_utf8_lossy(&native.verdict)
    );
    got
}

// ---------------------------------------------------------------------------------------------
// The table: one recipient refused at RCPT, a decision about the message at its end.
// Each test gives Postfix's column for that recipient, and what the others get.

const R1: &str = "r1@example.org";
const R2: &str = "r2@example.org";
const R3: &str = "r3@example.org";

fn rejected(t: &str) -> Fate {
    Fate::Rejected(t.to_string())
}

fn deferred(t: &str) -> Fate {
    Fate::Deferred(t.to_string())
}

#[test]
fn the_table_row_1_reject_at_rcpt_then_discard() {
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(0), Reply::Reject)
        .at(Step::Eom, Reply::Discard);
    assert_eq!(check(&s), [rejected(REJECT_TEXT), Fate::Discarded]);
}

#[test]
fn the_table_row_2_reject_at_rcpt_then_tempfail() {
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(0), Reply::Reject)
        .at(Step::Eom, Reply::Tempfail);
    assert_eq!(check(&s), [rejected(REJECT_TEXT), deferred(TEMPFAIL_TEXT)]);
}

#[test]
fn the_table_row_3_tempfail_at_rcpt_then_reject() {
    let no = "550 5.7.1 spam at end of message";
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(0), Reply::Tempfail)
        .at(Step::Eom, Reply::Code(no.to_string()));
    assert_eq!(check(&s), [deferred(TEMPFAIL_TEXT), rejected(no)]);
}

#[test]
fn the_table_row_4_tempfail_at_rcpt_then_discard() {
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(0), Reply::Tempfail)
        .at(Step::Eom, Reply::Discard);
    assert_eq!(check(&s), [deferred(TEMPFAIL_TEXT), Fate::Discarded]);
}

#[test]
fn the_table_row_5_reject_at_rcpt_then_reject_with_its_own_text() {
    let no = "554 5.7.9 the message as a whole is refused";
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(0), Reply::Reject)
        .at(Step::Eom, Reply::Code(no.to_string()));
    assert_eq!(check(&s), [rejected(REJECT_TEXT), rejected(no)]);
}

#[test]
fn the_table_row_6_tempfail_at_rcpt_the_others_delivered_now() {
    // Continue, then accept, at end of message: r1 waits, r2 and r3 are delivered now.
    let s = Script::new(&[R1, R2, R3]).at(Step::Rcpt(0), Reply::Tempfail);
    assert_eq!(check(&s), [deferred(TEMPFAIL_TEXT), plain(), plain()]);
    let s = s.at(Step::Eom, Reply::Accept);
    assert_eq!(check(&s), [deferred(TEMPFAIL_TEXT), plain(), plain()]);
    // With edits, the others get them; r1 still waits.
    let mut s = Script::new(&[R1, R2]).at(Step::Rcpt(0), Reply::Code("450 4.2.1 busy".into()));
    s.edits
        .push(EditStep::AddHeader("X-Script-1".into(), "spam: no".into()));
    let edited = Fate::Delivered(Delivery {
        added: vec![("X-Script-1".into(), "spam: no".into())],
        subject: SUBJECT.into(),
        redirects: Vec::new(),
    });
    assert_eq!(check(&s), [deferred("450 4.2.1 busy"), edited]);
}

/// A caller built against the header before the list (its struct_size ends at `transcript`)
/// sees only `kind`: where a recipient was deferred at RCPT, the whole message is deferred with
/// that recipient's reply (retried, never bounced or lost); a recipient rejected at RCPT is still
/// rejected by its guard in the script.
#[test]
fn an_older_result_struct_defers_the_whole_message_for_a_deferred_recipient() {
    let older = offset_of!(SpamfilterResult, recipient_results);
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(0), Reply::Code("451 4.3.0 r1 later".into()))
        .at(Step::Eom, Reply::Discard);
    let n = filter(&s, older);
    assert_eq!(n.kind, SpamfilterKind::Defer, "{n:?}");
    assert_eq!(n.reply.as_deref(), Some("451 4.3.0 r1 later"));
    assert!(n.own.is_empty());
    // The full struct on the same script: r1 deferred alone, r2 discarded.
    assert_eq!(check(&s), [deferred("451 4.3.0 r1 later"), Fate::Discarded]);
    // A reject at RCPT needs no list: the older caller runs the same guarded script.
    let s = Script::new(&[R1, R2])
        .at(Step::Rcpt(1), Reply::Reject)
        .at(Step::Eom, Reply::Discard);
    let n = filter(&s, older);
    assert_eq!(n.kind, SpamfilterKind::Verdict, "{n:?}");
    assert_eq!(
        [sieve_fate(&n.verdict, R1), sieve_fate(&n.verdict, R2)],
        [Fate::Discarded, rejected(REJECT_TEXT)]
    );
}

// ---------------------------------------------------------------------------------------------
// The property: random scripts.

const SCRIPTS: usize = 300;
const THREADS: usize = 4;

/// A reproducible stream of pseudo-random numbers (xorshift64).
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    seed |= 1;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// 1 to 4 actions over 1 to 3 recipients: an answer (accept, reject, tempfail, discard, a 5xx
/// or 4xx REPLYCODE) at a step not used yet, RCPT and end of message three times as likely as
/// the others, or an edit at end of message (one in four).
fn random_script(next: &mut impl FnMut() -> u64, id: usize) -> Script {
    let n = 1 + (next() % 3) as usize;
    let names: Vec<String> = (1..=n).map(|k| format!("r{k}@example.org")).collect();
    let mut s = Script::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let mut steps: Vec<(Step, u64)> = vec![
        (Step::Connect, 1),
        (Step::Helo, 1),
        (Step::Mail, 1),
        (Step::Data, 1),
        (Step::Header, 1),
        (Step::Eoh, 1),
        (Step::Body, 1),
        (Step::Eom, 3),
    ];
    steps.extend((0..n).map(|i| (Step::Rcpt(i), 3)));
    for action in 0..1 + next() % 4 {
        if next() % 4 == 0 {
            let k = s.edits.len() + 1;
            s.edits.push(match next() % 4 {
                0 => EditStep::AddHeader(format!("X-Script-{k}"), format!("v{k} s{id}")),
                1 => EditStep::ChgSubject(format!("changed {k} s{id}")),
                2 => EditStep::AddRcpt(format!("copy{}@example.org", next() % 2)),
                _ => EditStep::DelRcpt(names[(next() % n as u64) as usize].clone()),
            });
            continue;
        }
        let total: u64 = steps.iter().map(|(_, w)| w).sum();
        let mut pick = next() % total;
        let at = steps
            .iter()
            .position(|(_, w)| {
                let here = pick < *w;
                pick = pick.saturating_sub(*w);
                here
            })
            .unwrap_or(0);
        let (step, _) = steps.remove(at);
        let connection = matches!(step, Step::Connect | Step::Helo);
        let reply = loop {
            let r = match next() % 6 {
                0 => Reply::Accept,
                1 => Reply::Reject,
                2 => Reply::Tempfail,
                3 => Reply::Discard,
                4 => Reply::Code(format!("550 5.7.{} s{id} a{action}", next() % 10)),
                _ => Reply::Code(format!("451 4.3.{} s{id} a{action}", next() % 10)),
            };
            // libmilter leaves discard at CONNECT and HELO undefined.
            if !(connection && r == Reply::Discard) {
                break r;
            }
        };
        s.answers.push((step, reply));
    }
    s
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn random_scripts_match_sendmail_semantics() {
    let seed = env_number("PER_RECIPIENT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let count = env_number("PER_RECIPIENT_SCRIPTS").map_or(SCRIPTS, |n| n as usize);
    println!(
        "per-recipient scripts: {count}, seed {seed:#x} (PER_RECIPIENT_SEED={seed:#x} replays it)"
    );
    let mut next = xorshift(seed);
    let scripts: Vec<Script> = (0..count).map(|id| random_script(&mut next, id)).collect();
    // How many scripts are of the kind: a recipient refused at RCPT and the message
    // decided later (an answer after RCPT, or edits).
    let of_the_kind = scripts
        .iter()
        .filter(|s| {
            let refused = (0..s.recipients.len()).any(|i| {
                s.answer(Step::Rcpt(i))
                    .is_some_and(|r| refusal(r).is_some())
            });
            let later = !s.edits.is_empty()
                || s.answers.iter().any(|(st, _)| {
                    matches!(
                        st,
                        Step::Data | Step::Header | Step::Eoh | Step::Body | Step::Eom
                    )
                });
            refused && later
        })
        .count();
    println!(
        "of which {of_the_kind} refuse a recipient at RCPT and decide about the message later"
    );
    shared();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let scripts = &scripts;
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for (id, s) in scripts.iter().enumerate().skip(t).step_by(THREADS) {
                        let run = std::panic::catch_unwind(|| check(s));
                        if let Err(e) = run {
                            let why = e
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failed.push(format!("script {id}: {why}"));
                        }
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|_| vec!["a worker died".into()]))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {count} scripts failed (seed {seed:#x}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
