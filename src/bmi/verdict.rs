//! The verdicts of one message, as BMI hands them out: one per group of recipients with the same
//! outcome. A verdict's destination is default (deliver normally), discard (NULL: do not
//! deliver) or a Sieve scriptlet (the verdict the spamfilter_* API returns, for
//! `spamfilterN_string_action=data:,$U`). docs/bmi.md has the mapping.

use super::error::{self, Failure};
use crate::verdict::{
    self as sieve, Disposition, Edit, Outcome, Stage, VerdictKind, VerdictOptions,
};
use std::ffi::CString;
use std::ptr::NonNull;

/// Where a verdict's recipients' copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Deliver normally: the Milter asked for nothing.
    Default,
    /// Do not deliver (bmiVerdictAccessDestination is NULL).
    Discard,
    /// Run this Sieve scriptlet (no NUL inside).
    Sieve(CString),
}

/// One recipient of a verdict (`BmiRecipient`). The address is kept twice, in one allocation:
/// as the library made it, then a NUL-terminated copy that the caller may write into (Exim
/// writes a NUL over the '@' of what bmiRecipientAccessAddress returns), so that a caller's
/// writes never change what the verdict says. Rust reads only the first copy, through a
/// pointer, and never forms a reference to the second.
pub struct Recipient {
    /// `2 * len + 1` bytes from `Box::into_raw`: the address, its copy, a NUL.
    bytes: NonNull<u8>,
    len: usize,
}

// SAFETY: a Recipient owns its allocation alone (no other pointer to it is kept by Rust); the
// caller's pointer into the copy is the MTA's to use on the thread that holds the message.
unsafe impl Send for Recipient {}

impl Recipient {
    /// A recipient; `address` holds no NUL (callers make sure: it came from a C string or was
    /// checked by the verdict-string parser).
    pub fn new(address: &[u8]) -> Recipient {
        let mut bytes = Vec::with_capacity(2 * address.len() + 1);
        bytes.extend_from_slice(address);
        bytes.extend_from_slice(address);
        bytes.push(0);
        let raw = Box::into_raw(bytes.into_boxed_slice());
        Recipient {
            // SAFETY: Box::into_raw never returns NULL.
            bytes: unsafe { NonNull::new_unchecked(raw.cast::<u8>()) },
            len: address.len(),
        }
    }

    pub fn address(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the allocation, written in `new` and never written
        // again (the caller writes only into the copy after them).
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr(), self.len) }
    }

    /// The writable, NUL-terminated copy of the address, owned by the recipient.
    pub fn writable_address(&self) -> *mut u8 {
        // SAFETY: `len` bytes into an allocation of 2 * len + 1.
        unsafe { self.bytes.as_ptr().add(self.len) }
    }
}

impl Drop for Recipient {
    fn drop(&mut self) {
        let whole = std::ptr::slice_from_raw_parts_mut(self.bytes.as_ptr(), 2 * self.len + 1);
        // SAFETY: the slice `new` made with Box::into_raw, of this length, released once here.
        drop(unsafe { Box::from_raw(whole) });
    }
}

impl Clone for Recipient {
    fn clone(&self) -> Recipient {
        Recipient::new(self.address())
    }
}

impl PartialEq for Recipient {
    fn eq(&self, other: &Recipient) -> bool {
        self.address() == other.address()
    }
}

impl Eq for Recipient {}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({})", crate::error::escape(self.address()))
    }
}

/// One verdict (`BmiVerdict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// This verdict's own error (a recipient deferred at RCPT: fatal SERVER/TEMPFAIL), or OK.
    pub error: error::Code,
    pub destination: Destination,
    pub recipients: Vec<Recipient>,
}

/// Bytes → a C string with every NUL replaced by '?', as the spamfilter_* API hands out text.
pub fn c_text(bytes: &[u8]) -> CString {
    let clean: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { b'?' } else { b })
        .collect();
    CString::new(clean).unwrap_or_default()
}

/// What the recipients not refused at RCPT get: the verdict the spamfilter_* API would return
/// for the message if nobody had been refused (the refused recipients have verdicts of their
/// own, so the guards the native script holds for them have no place here: with them, a clean
/// message would not be "default" for the others).
#[inline(always)] // in `group`: once a message, one function fewer entered
fn destination_for_the_rest(
    outcome: &Outcome,
    options: &VerdictOptions,
) -> Result<Destination, Failure> {
    // Without the refusals (a copy only when there are any: most messages have none).
    let v = match outcome.rejected_recipients.is_empty() {
        true => sieve::build(outcome, options),
        false => {
            let mut rest = outcome.clone();
            rest.rejected_recipients.clear();
            sieve::build(&rest, options)
        }
    };
    match v.kind {
        VerdictKind::None => Ok(Destination::Default),
        VerdictKind::Defer => {
            let reply = v.reply.unwrap_or_default();
            Err(Failure::new(
                error::TEMPFAIL,
                format!(
                    "the Milter deferred the message (at {}): \"{}\"",
                    stage_name(outcome.stage),
                    crate::error::escape(&reply)
                ),
            ))
        }
        VerdictKind::Sieve if outcome.disposition == Disposition::Discard => {
            Ok(Destination::Discard)
        }
        VerdictKind::Sieve => Ok(Destination::Sieve(c_text(&v.script))),
    }
}

/// The own verdict of a recipient the Milter refused at RCPT.
fn own_verdict(
    refusal: &sieve::RecipientReject,
    address: &[u8],
    options: &VerdictOptions,
) -> Verdict {
    if refusal.tempfail {
        // BMI has no deferral: the verdict carries a fatal SERVER/TEMPFAIL error, and its
        // destination is default (what the spamfilter_* script does for it: stop, unedited).
        return Verdict {
            error: error::TEMPFAIL,
            destination: Destination::Default,
            recipients: vec![Recipient::new(address)],
        };
    }
    let mut alone = Outcome::new(Disposition::Reject, Stage::Rcpt);
    alone.reply = Some(refusal.reply.clone());
    let v = sieve::build(&alone, options);
    Verdict {
        error: error::OK,
        destination: Destination::Sieve(c_text(&v.script)),
        recipients: vec![Recipient::new(address)],
    }
}

/// The address of a DELRCPT, compared as Sieve's `envelope :is` does (case-insensitive).
fn same_address(a: &[u8], b: &[u8]) -> bool {
    let strip = |x: &[u8]| -> Vec<u8> {
        let x = x.strip_prefix(b"<").unwrap_or(x);
        let x = x.strip_suffix(b">").unwrap_or(x);
        x.to_ascii_lowercase()
    };
    strip(a) == strip(b)
}

/// The recipients the Milter deleted (DELRCPT) when it otherwise let the message through.
#[inline] // in `group`, for every recipient of every message
fn deleted(outcome: &Outcome, address: &[u8]) -> bool {
    matches!(
        outcome.disposition,
        Disposition::Continue | Disposition::Accept
    ) && outcome
        .edits
        .iter()
        .any(|e| matches!(e, Edit::DelRcpt { rcpt } if same_address(rcpt, address)))
}

/// The verdicts for `recipients` (the envelope, in order) after the Milter decided `outcome`:
/// a recipient refused at RCPT has its own; the others are grouped by destination, in the order
/// of their first recipient. A whole-message deferral is an error, not a verdict (BMI has no
/// deferral), unless every recipient was refused at RCPT already.
pub fn group<A: AsRef<[u8]>>(
    recipients: &[A],
    outcome: &Outcome,
    options: &VerdictOptions,
) -> Result<Vec<Verdict>, Failure> {
    let refusal = |i: usize| outcome.rejected_recipients.iter().find(|r| r.index == i);
    let rest = if (0..recipients.len()).any(|i| refusal(i).is_none()) {
        Some(destination_for_the_rest(outcome, options)?)
    } else {
        None
    };
    // Most messages have one verdict: allocated at that size, not grown from nothing.
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(usize::from(!recipients.is_empty()));
    // Which verdicts are a refused recipient's own (no other recipient joins those), by
    // index; shorter than `verdicts` where the rest are shared, and empty (no allocation)
    // while nobody was refused.
    let mut own: Vec<bool> = Vec::new();
    for (i, address) in recipients.iter().enumerate() {
        let address = address.as_ref();
        if let Some(r) = refusal(i) {
            own.resize(verdicts.len(), false);
            own.push(true);
            verdicts.push(own_verdict(r, address, options));
            continue;
        }
        let Some(rest) = &rest else { continue };
        let destination = if deleted(outcome, address) {
            Destination::Discard
        } else {
            rest.clone()
        };
        let shared = |k: usize| !own.get(k).copied().unwrap_or(false);
        let joins =
            (0..verdicts.len()).find(|&k| shared(k) && verdicts[k].destination == destination);
        match joins {
            Some(k) => verdicts[k].recipients.push(Recipient::new(address)),
            None => verdicts.push(Verdict {
                error: error::OK,
                destination,
                recipients: vec![Recipient::new(address)],
            }),
        }
    }
    Ok(verdicts)
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Negotiate => "negotiation",
        Stage::Connect => "CONNECT",
        Stage::Helo => "HELO",
        Stage::Mail => "MAIL",
        Stage::Rcpt => "RCPT",
        Stage::Data => "DATA",
        Stage::Header => "a header field",
        Stage::Eoh => "end of header",
        Stage::Body => "the body",
        Stage::Eom => "end of message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::RecipientReject;

    fn options() -> VerdictOptions {
        let config = crate::Config::parse("t.opt", b"HOST=127.0.0.1\nPORT=1\n").unwrap();
        crate::Handle::new(config).verdict_options().clone()
    }

    fn envelope(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("r{i}@example.org").into_bytes())
            .collect()
    }

    fn verdicts(outcome: &Outcome, n: usize) -> Result<Vec<Verdict>, Failure> {
        let o = options();
        group(&envelope(n), outcome, &o)
    }

    fn addresses(v: &Verdict) -> Vec<String> {
        v.recipients
            .iter()
            .map(|r| String::from_utf8_lossy(r.address()).into_owned())
            .collect()
    }

    fn script(v: &Verdict) -> String {
        match &v.destination {
            Destination::Sieve(s) => s.to_string_lossy().into_owned(),
            d => panic!("not a Sieve destination: {d:?}"),
        }
    }

    fn refused(index: usize, tempfail: bool, reply: &str) -> RecipientReject {
        RecipientReject {
            index,
            address: format!("r{index}@example.org").into_bytes(),
            tempfail,
            reply: reply.as_bytes().to_vec(),
        }
    }

    #[test]
    fn nothing_asked_for_is_one_default_verdict_for_everyone() {
        let v = verdicts(&Outcome::new(Disposition::Continue, Stage::Eom), 3).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].destination, Destination::Default);
        assert_eq!(v[0].error, error::OK);
        assert_eq!(
            addresses(&v[0]),
            ["r0@example.org", "r1@example.org", "r2@example.org"]
        );
    }

    #[test]
    fn a_reject_is_an_ereject_script_and_a_discard_is_null() {
        let mut o = Outcome::new(Disposition::Reject, Stage::Eom);
        o.reply = Some(b"554 5.7.1 spam".to_vec());
        let v = verdicts(&o, 2).unwrap();
        assert_eq!(v.len(), 1);
        assert!(
            script(&v[0]).contains("ereject \"554 5.7.1 spam\";"),
            "{}",
            script(&v[0])
        );
        let v = verdicts(&Outcome::new(Disposition::Discard, Stage::Body), 2).unwrap();
        assert_eq!((v.len(), &v[0].destination), (1, &Destination::Discard));
    }

    #[test]
    fn an_edit_is_the_native_script() {
        let mut o = Outcome::new(Disposition::Continue, Stage::Eom);
        o.edits.push(Edit::AddHeader {
            name: b"X-Spam".to_vec(),
            value: b"yes".to_vec(),
        });
        let opts = options();
        let native = sieve::build(&o, &opts);
        let v = group(&envelope(2), &o, &opts).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(script(&v[0]).as_bytes(), &native.script[..]);
    }

    #[test]
    fn recipients_refused_at_rcpt_have_verdicts_of_their_own() {
        let mut o = Outcome::new(Disposition::Continue, Stage::Eom);
        o.rejected_recipients = vec![
            refused(0, false, "550 5.1.1 no such user"),
            refused(2, false, "550 5.1.1 no such user"),
            refused(3, true, "451 4.3.0 busy"),
        ];
        let v = verdicts(&o, 5).unwrap();
        // r0, r2 (each its own, same reply or not), r1 + r4 together, r3 deferred.
        assert_eq!(v.len(), 4, "{v:?}");
        assert_eq!(addresses(&v[0]), ["r0@example.org"]);
        assert!(script(&v[0]).contains("ereject \"550 5.1.1 no such user\";"));
        assert!(
            !script(&v[0]).contains("envelope"),
            "its own script needs no guard"
        );
        assert_eq!(addresses(&v[1]), ["r1@example.org", "r4@example.org"]);
        assert_eq!(v[1].destination, Destination::Default);
        assert_eq!(addresses(&v[2]), ["r2@example.org"]);
        assert_eq!(addresses(&v[3]), ["r3@example.org"]);
        assert_eq!(v[3].error, error::TEMPFAIL);
        assert_eq!(v[3].destination, Destination::Default);
    }

    #[test]
    fn a_message_deferred_is_an_error_unless_nobody_is_left_to_defer() {
        let mut o = Outcome::new(Disposition::Tempfail, Stage::Eom);
        o.reply = Some(b"451 4.7.1 later".to_vec());
        let e = verdicts(&o, 2).unwrap_err();
        assert_eq!(e.code, error::TEMPFAIL);
        assert!(e.message.contains("451 4.7.1 later") && e.message.contains("end of message"));
        // Every recipient refused at RCPT (the message's disposition is then the last one's).
        let mut o = Outcome::new(Disposition::Tempfail, Stage::Rcpt);
        o.rejected_recipients = vec![refused(0, true, "451 4.3.0 a"), refused(1, true, "451 b")];
        let v = verdicts(&o, 2).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.error == error::TEMPFAIL));
    }

    #[test]
    fn a_deleted_recipient_is_not_delivered() {
        let mut o = Outcome::new(Disposition::Continue, Stage::Eom);
        o.edits.push(Edit::DelRcpt {
            rcpt: b"<R1@Example.org>".to_vec(),
        });
        let v = verdicts(&o, 3).unwrap();
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(addresses(&v[0]), ["r0@example.org", "r2@example.org"]);
        assert!(matches!(v[0].destination, Destination::Sieve(_)));
        assert_eq!(addresses(&v[1]), ["r1@example.org"]);
        assert_eq!(v[1].destination, Destination::Discard);
    }

    #[test]
    fn the_address_handed_out_is_writable_and_the_verdict_unchanged() {
        let r = Recipient::new(b"a@b");
        let p = r.writable_address();
        // SAFETY: the copy is 4 bytes: "a@b" and its NUL.
        unsafe {
            assert_eq!(*p.add(3), 0);
            *p.add(1) = 0;
        }
        assert_eq!(r.address(), b"a@b");
        assert_eq!(r.clone().address(), b"a@b");
    }
}
