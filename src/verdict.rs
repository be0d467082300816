//! What the Milter decided, turned into what the MTA acts on: no verdict, a deferral with its
//! SMTP reply, or a Sieve scriptlet (RFC 5228 with editheader, ereject, envelope, copy,
//! encoded-character, fileinto as needed) that the MTA runs through `spamfilterN_string_action`.
//! docs/verdicts.md has the mapping and its rules; tests/sieve.rs proves them with Pigeonhole.

use crate::config::{SieveDialect, SieveLimits};
use std::collections::HashSet;

mod replay;

// The outcome model lives in outcome.rs; it is re-exported here, where callers found it first.
pub use crate::outcome::{
    Disposition, Edit, Header, Outcome, RecipientReject, Stage, DEFAULT_REJECT, DEFAULT_TEMPFAIL,
};

/// How the verdict is written (from the option file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictOptions {
    pub context_edits: bool,
    pub dialect: SieveDialect,
    pub quarantine_folder: String,
    /// What the Sieve engine allows: the verdict stays within it.
    pub limits: SieveLimits,
}

/// The kind of result handed to the MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    /// Deliver normally.
    None,
    /// Run the Sieve scriptlet in `script`.
    Sieve,
    /// Defer the message with `reply`.
    Defer,
}

/// The verdict for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// For every recipient not in `recipients`.
    pub kind: VerdictKind,
    /// The Sieve scriptlet (for `VerdictKind::Sieve`).
    pub script: Vec<u8>,
    /// The SMTP reply text for a reject or deferral.
    pub reply: Option<Vec<u8>>,
    /// The recipients refused at RCPT, in envelope order, each with its own outcome (rejected
    /// or deferred with its reply, default text filled in): the MTA applies that and not `kind`.
    pub recipients: Vec<RecipientReject>,
}

impl Verdict {
    /// The verdict for a caller that sees `kind` only (an older `SpamfilterResult`), where the
    /// per-recipient list would change the outcome of a recipient deferred at RCPT: the whole
    /// message is deferred then (with that recipient's reply), since a deferral is the only
    /// outcome that neither bounces nor loses mail the Milter wanted retried. A recipient
    /// rejected at RCPT is already rejected by its guard in the script.
    pub fn for_kind_only(&self) -> Verdict {
        match self.recipients.iter().find(|r| r.tempfail) {
            Some(r) if self.kind != VerdictKind::Defer => Verdict {
                kind: VerdictKind::Defer,
                script: Vec::new(),
                reply: Some(r.reply.clone()),
                recipients: self.recipients.clone(),
            },
            _ => self.clone(),
        }
    }
}

/// The header a quarantine verdict adds, carrying the Milter's reason.
pub const QUARANTINE_HEADER: &str = "X-Milter-Quarantine";

/// Builds the verdict for an outcome: each recipient refused at RCPT keeps its own outcome
/// (`Verdict::recipients`, and first in the script); the rest of the outcome decides for the
/// other recipients:
/// - tempfail → `Defer` with the reply;
/// - reject → `ereject` with the reply text exactly; discard → `discard`;
/// - otherwise the header edits, added and deleted recipients and quarantine; nothing at all
///   (and nobody rejected at RCPT) → no verdict.
///
/// In the script a recipient rejected at RCPT gets its `ereject` guarded by `envelope :is "to"`
/// and followed by `stop`; one deferred at RCPT only the guard and `stop` (Sieve cannot defer:
/// an MTA that runs the script for it anyway keeps it unedited rather than rejecting or
/// discarding it, and defers it from `recipients`).
pub fn build(outcome: &Outcome, options: &VerdictOptions) -> Verdict {
    if unchanged(outcome) {
        return no_verdict();
    }
    let own = own_outcomes(&outcome.rejected_recipients);
    let mut v = build_for_the_rest(outcome, options, &own);
    v.recipients = own;
    v
}

/// The recipients refused at RCPT with their replies as the MTA gets them: the default text for
/// an empty one, NUL removed.
fn own_outcomes(refused: &[RecipientReject]) -> Vec<RecipientReject> {
    refused
        .iter()
        .map(|r| RecipientReject {
            index: r.index,
            address: r.address.clone(),
            tempfail: r.tempfail,
            reply: reply_text(
                Some(&r.reply),
                if r.tempfail {
                    DEFAULT_TEMPFAIL
                } else {
                    DEFAULT_REJECT
                },
            ),
        })
        .collect()
}

/// The reply the MTA gets: the Milter's text without NUL, or `default` when nothing is left.
fn reply_text(r: Option<&[u8]>, default: &[u8]) -> Vec<u8> {
    let text = without_nul(r.unwrap_or_default());
    if text.is_empty() {
        default.to_vec()
    } else {
        text
    }
}

/// The guards of the recipients refused at RCPT, in envelope order, before anything else.
fn recipient_guards(own: &[RecipientReject]) -> Vec<Action> {
    own.iter()
        .map(|r| {
            if r.tempfail {
                Action::HoldRecipient(r.address.clone())
            } else {
                Action::RejectRecipient {
                    address: r.address.clone(),
                    reply: r.reply.clone(),
                }
            }
        })
        .collect()
}

/// The verdict for the recipients not refused at RCPT (`recipients` left empty).
fn build_for_the_rest(
    outcome: &Outcome,
    options: &VerdictOptions,
    own: &[RecipientReject],
) -> Verdict {
    let mut actions = recipient_guards(own);
    match outcome.disposition {
        Disposition::Tempfail => {
            return Verdict {
                kind: VerdictKind::Defer,
                script: Vec::new(),
                reply: Some(reply_text(outcome.reply.as_deref(), DEFAULT_TEMPFAIL)),
                recipients: Vec::new(),
            };
        }
        Disposition::Reject => {
            let text = reply_text(outcome.reply.as_deref(), DEFAULT_REJECT);
            actions.push(Action::Ereject(text.clone()));
            let v = render(&actions, options, Some(text));
            if v.script.len() > options.limits.max_script_size {
                log::error!(
                    "the reject's reply text makes a verdict of {} bytes, more than \
                     SIEVE_MAX_SCRIPT_SIZE ({}): the message is deferred",
                    v.script.len(),
                    options.limits.max_script_size
                );
                return too_large();
            }
            return v;
        }
        Disposition::Discard => {
            actions.push(Action::Discard);
            return render(&actions, options, None);
        }
        Disposition::Accept | Disposition::Continue => {}
    }
    let headers_from = actions.len();
    header_actions(outcome, options, &mut actions);
    let headers = headers_from..actions.len();
    redirect_actions(outcome, options, &mut actions);
    remove_actions(outcome, &mut actions);
    if let Some(reason) = &outcome.quarantine {
        let reason = header_value(reason, false, options.dialect == SieveDialect::Rfc5293);
        let reason = shortened(
            QUARANTINE_HEADER.as_bytes(),
            reason,
            options.limits.max_header_size,
        );
        if !reason.is_empty() {
            actions.push(Action::AddHeader {
                last: false,
                name: QUARANTINE_HEADER.as_bytes().to_vec(),
                value: reason,
            });
        }
        actions.push(Action::Fileinto(
            options.quarantine_folder.as_bytes().to_vec(),
        ));
    }
    if only_guards(&actions) {
        return no_verdict();
    }
    within_script_size(actions, headers, options)
}

/// A deferred recipient's guard alone changes nothing for the others: with nothing else to
/// do, there is no verdict.
fn only_guards(actions: &[Action]) -> bool {
    actions
        .iter()
        .all(|a| matches!(a, Action::HoldRecipient(_)))
}

/// The usual message: accepted or let through, nobody refused, nothing edited, no
/// quarantine. Every action comes from one of these, so its verdict asks for nothing, and
/// this answers without the builder's steps.
fn unchanged(outcome: &Outcome) -> bool {
    matches!(
        outcome.disposition,
        Disposition::Accept | Disposition::Continue
    ) && outcome.edits.is_empty()
        && outcome.quarantine.is_none()
        && outcome.rejected_recipients.is_empty()
}

/// The verdict that asks for nothing.
fn no_verdict() -> Verdict {
    Verdict {
        kind: VerdictKind::None,
        script: Vec::new(),
        reply: None,
        recipients: Vec::new(),
    }
}

/// DELRCPT as the removal of the recipient, each address once (the same recipient twice is one
/// recipient, as in sendmail).
fn remove_actions(outcome: &Outcome, actions: &mut Vec<Action>) {
    if !outcome
        .edits
        .iter()
        .any(|e| matches!(e, Edit::DelRcpt { .. }))
    {
        // Most messages: no set of addresses to make (its hasher's keys are a thread-local).
        return;
    }
    let mut removed: HashSet<&[u8]> = HashSet::new();
    for e in &outcome.edits {
        if let Edit::DelRcpt { rcpt } = e {
            let addr = strip_angle(rcpt);
            if !removed.insert(addr) {
                continue;
            }
            if is_addr_spec(addr) {
                actions.push(Action::RemoveRecipient(addr.to_vec()));
            } else {
                log::warn!(
                    "DELRCPT \"{}\" left out: not an address",
                    crate::error::escape(rcpt)
                );
            }
        }
    }
}

/// ADDRCPT as `redirect :copy`, each address once (the same recipient twice is one recipient,
/// as in sendmail), at most SIEVE_MAX_REDIRECTS of them: one more and the engine fails the run
/// and keeps the message (implicit keep), which would deliver it to a recipient the Milter
/// deleted and lose a quarantine.
fn redirect_actions(outcome: &Outcome, options: &VerdictOptions, actions: &mut Vec<Action>) {
    if !outcome
        .edits
        .iter()
        .any(|e| matches!(e, Edit::AddRcpt { .. }))
    {
        return;
    }
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut left_out = 0usize;
    for e in &outcome.edits {
        let Edit::AddRcpt { rcpt, .. } = e else {
            continue;
        };
        let addr = strip_angle(rcpt);
        if !is_addr_spec(addr) {
            // A Sieve engine refuses the whole script when one redirect address is not an
            // address; the other decisions are worth more than this one recipient.
            log::warn!(
                "ADDRCPT \"{}\" left out: not an address that redirect accepts",
                crate::error::escape(rcpt)
            );
            continue;
        }
        if !seen.insert(addr) {
            continue;
        }
        if seen.len() > options.limits.max_redirects {
            left_out += 1;
            continue;
        }
        actions.push(Action::Redirect(addr.to_vec()));
    }
    if left_out > 0 {
        log::warn!(
            "{left_out} ADDRCPT left out: the verdict may redirect to at most {} addresses \
             (SIEVE_MAX_REDIRECTS)",
            options.limits.max_redirects
        );
    }
}

/// The reply of a verdict that cannot be written within SIEVE_MAX_SCRIPT_SIZE even without its
/// header edits: the message is deferred, so that no decision of the Milter is lost.
pub const TOO_LARGE: &[u8] =
    b"451 4.3.0 The spam filter's verdict is larger than its Sieve engine allows";

/// The verdict, written within SIEVE_MAX_SCRIPT_SIZE (an engine refuses a larger script whole,
/// and every decision in it with it). Too large, it leaves out the header edits (`headers`, the
/// least of what the Milter decided: all or none, so that a changed field is never deleted
/// without being added again); still too large, the message is deferred.
fn within_script_size(
    mut actions: Vec<Action>,
    headers: std::ops::Range<usize>,
    options: &VerdictOptions,
) -> Verdict {
    let max = options.limits.max_script_size;
    let v = render(&actions, options, None);
    if v.script.len() <= max {
        return v;
    }
    if !headers.is_empty() {
        log::warn!(
            "the verdict would be {} bytes, more than SIEVE_MAX_SCRIPT_SIZE ({max}): its {} \
             header edits are left out",
            v.script.len(),
            headers.len()
        );
        actions.drain(headers);
        if only_guards(&actions) {
            return no_verdict();
        }
        let v = render(&actions, options, None);
        if v.script.len() <= max {
            return v;
        }
    }
    log::error!(
        "the verdict's decisions alone are more than SIEVE_MAX_SCRIPT_SIZE ({max} bytes): the \
         message is deferred"
    );
    too_large()
}

fn too_large() -> Verdict {
    Verdict {
        kind: VerdictKind::Defer,
        script: Vec::new(),
        reply: Some(TOO_LARGE.to_vec()),
        recipients: Vec::new(),
    }
}

/// One Sieve action, with its strings still as raw bytes.
#[derive(Debug)]
enum Action {
    /// `addheader`; `last` is false for the top of the header (RFC 5293 default). In the legacy
    /// dialect `addheader "Name: value"` (the actions then come in final header order).
    AddHeader {
        last: bool,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteHeader {
        index: Option<usize>,
        name: Vec<u8>,
        value: Option<ValueMatch>,
    },
    Ereject(Vec<u8>),
    RejectRecipient {
        address: Vec<u8>,
        reply: Vec<u8>,
    },
    /// A recipient deferred at RCPT: `if envelope :is "to" "addr" { stop; }`.
    HoldRecipient(Vec<u8>),
    Discard,
    Fileinto(Vec<u8>),
    Redirect(Vec<u8>),
    /// DELRCPT: `if envelope :is "to" "addr" { discard; stop; }`.
    RemoveRecipient(Vec<u8>),
}

/// How `deleteheader` names the value of the field it deletes (compared with `i;octet`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueMatch {
    /// `:is`: the value as every engine sees it.
    Is(Vec<u8>),
    /// `:matches`: a pattern, already escaped, with `*` where engines differ.
    Matches(Vec<u8>),
}

fn without_nul(b: &[u8]) -> Vec<u8> {
    b.iter().copied().filter(|&c| c != 0).collect()
}

fn strip_angle(a: &[u8]) -> &[u8] {
    let a = a.trim_ascii();
    if a.len() >= 2 && a[0] == b'<' && a[a.len() - 1] == b'>' {
        &a[1..a.len() - 1]
    } else {
        a
    }
}

/// RFC 5322 field name: printable US-ASCII except colon. Sieve refuses any other name, so an edit
/// naming one is left out (and logged) rather than breaking the whole verdict.
pub fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

/// Fields that Sieve must not delete (RFC 5293 §6: `Received`; `Auto-Submitted` is refused by
/// Pigeonhole too, it guards against mail loops). A change of one of the message's own fields of
/// these names cannot be expressed and is left out.
const UNDELETABLE: [&[u8]; 2] = [b"Received", b"Auto-Submitted"];

fn is_undeletable(name: &[u8]) -> bool {
    UNDELETABLE.iter().any(|u| u.eq_ignore_ascii_case(name))
}

/// An RFC 5322 addr-spec in ASCII (dot-atom or quoted local part, dot-atom or literal domain):
/// what `redirect` accepts. Engines check a literal address when the script is compiled.
pub fn is_addr_spec(a: &[u8]) -> bool {
    fn atext(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
    }
    fn dot_atom(s: &[u8]) -> bool {
        !s.is_empty()
            && s.split(|&b| b == b'.')
                .all(|p| !p.is_empty() && p.iter().all(|&b| atext(b)))
    }
    let Some(at) = a.iter().rposition(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&a[..at], &a[at + 1..]);
    let local_ok = if local.len() >= 2 && local[0] == b'"' && local[local.len() - 1] == b'"' {
        let inner = &local[1..local.len() - 1];
        let mut i = 0;
        let mut ok = true;
        while i < inner.len() {
            match inner[i] {
                b'\\' if i + 1 < inner.len() && matches!(inner[i + 1], 32..=126) => i += 2,
                b'\\' | b'"' => {
                    ok = false;
                    break;
                }
                32..=126 => i += 1,
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        ok
    } else {
        dot_atom(local)
    };
    let domain_ok = if domain.first() == Some(&b'[') && domain.last() == Some(&b']') {
        domain.len() > 2
            && domain[1..domain.len() - 1]
                .iter()
                .all(|&b| matches!(b, 33..=90 | 94..=126))
    } else {
        dot_atom(domain)
    };
    local_ok && domain_ok
}

/// `v` holds "=?", which may start an encoded-word: each '?' found with memchr, the byte before
/// it looked at (a header value has far fewer '?' than bytes).
fn has_word_start(v: &[u8]) -> bool {
    let mut from = 1;
    while from < v.len() {
        match crate::scan::find_byte(&v[from..], b'?') {
            Some(i) if v[from + i - 1] == b'=' => return true,
            Some(i) => from += i + 1,
            None => return false,
        }
    }
    false
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_break(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// A value as the verdict writes it into `addheader`: a field body that Sieve engines accept
/// (RFC 5322 `unstructured`), as close to the Milter's bytes as that allows.
/// - Under HDR_LEADSPC the Milter's own leading space goes: Sieve writes `Name: value`.
/// - RFC 5293 dialect: RFC 2047 encoded-words are decoded (`decode_encoded_words`).
/// - NUL goes; any other control character but TAB becomes a space (engines refuse them).
/// - A run of white space holding line breaks is one fold: the white space before the first
///   break, CRLF, then the white space after the last break, or one space when there is none,
///   so that a break can neither end the field nor leave an empty line. At the very end such a
///   run is dropped.
/// - White space at the end goes.
/// - RFC 5293 dialect: a value the engine must encode (bytes beyond ASCII, or `=?`) is written
///   unfolded, the engine folds it.
///
/// Bytes that are not UTF-8 stay; `quote` writes them with encoded-character.
///
/// With `text` (RFC 5293 dialect) encoded-words are decoded first (`decode_encoded_words`).
fn header_value(value: &[u8], leadspc: bool, text: bool) -> Vec<u8> {
    let value = if leadspc && value.first() == Some(&b' ') {
        &value[1..]
    } else {
        value
    };
    let decoded;
    // Only a value with "=?" in it can hold an encoded-word.
    let value = if text && has_word_start(value) {
        decoded = decode_encoded_words(value);
        &decoded[..]
    } else {
        value
    };
    let control = |b: u8| b == 0 || b == 0x7f || (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'));
    let cleaned: Vec<u8>;
    let clean: &[u8] = if value.iter().any(|&b| control(b)) {
        cleaned = value
            .iter()
            .filter(|&&b| b != 0)
            .map(|&b| match b {
                b'\t' | b'\r' | b'\n' => b,
                0x01..=0x1f | 0x7f => b' ',
                _ => b,
            })
            .collect();
        &cleaned
    } else {
        value
    };
    let mut out = Vec::with_capacity(clean.len() + 8);
    let mut i = 0;
    while i < clean.len() {
        if !is_wsp(clean[i]) && !is_break(clean[i]) {
            // A run of text up to the next white space or line break, copied at once.
            let end = clean[i..]
                .iter()
                .position(|&b| is_wsp(b) || is_break(b))
                .map_or(clean.len(), |n| i + n);
            out.extend_from_slice(&clean[i..end]);
            i = end;
            continue;
        }
        if !fold_run(clean, &mut i, &mut out) {
            break;
        }
    }
    trim_end_wsp(&mut out);
    if text && (out.iter().any(|&b| b >= 0x80) || has_word_start(&out)) {
        // The engine encodes this value (RFC 2047); Pigeonhole encodes each folded line on its
        // own, and the white space of a fold between two encoded-words is lost to readers
        // ("café\r\n café" reads "cafécafé"). Unfolded, it is encoded whole and folded by the
        // engine.
        out = unfold(&out);
    }
    out
}

/// Takes the run of white space and line breaks at `clean[*i]` into `out`. A run without a line
/// break stays as it is; one with breaks becomes one fold: what precedes the first break, CRLF,
/// then what follows the last break (a single space when nothing does). False when the run ends
/// the value: it is dropped, and the value ends.
fn fold_run(clean: &[u8], i: &mut usize, out: &mut Vec<u8>) -> bool {
    let start = *i;
    while *i < clean.len() && (is_wsp(clean[*i]) || is_break(clean[*i])) {
        *i += 1;
    }
    let run = &clean[start..*i];
    let (Some(first), Some(last)) = (
        run.iter().position(|&b| is_break(b)),
        run.iter().rposition(|&b| is_break(b)),
    ) else {
        out.extend_from_slice(run);
        return true;
    };
    if *i == clean.len() {
        return false;
    }
    out.extend_from_slice(&run[..first]);
    out.extend_from_slice(b"\r\n");
    match &run[last + 1..] {
        [] => out.push(b' '),
        after => out.extend_from_slice(after),
    }
    true
}

/// White space at the end means nothing to a reader, and Pigeonhole 0.5 ends the field in the
/// middle of the next one when it folds inside such a run.
fn trim_end_wsp(out: &mut Vec<u8>) {
    while out.last().is_some_and(|&b| is_wsp(b)) {
        out.pop();
    }
}

/// `value` as `header_value` writes it, cut to at most `max` bytes as the engine counts them
/// (the bytes of the string after its escapes: a fold's CRLF is two, a `${hex:..}` byte one;
/// Pigeonhole refuses a longer value, and with it the whole verdict). The cut does not split a
/// UTF-8 character, and white space or a fold left at the end goes. Logged.
fn shortened(name: &[u8], mut value: Vec<u8>, max: usize) -> Vec<u8> {
    if value.len() <= max {
        return value;
    }
    let full = value.len();
    let mut end = max;
    // At most three continuation bytes back to the start of a character.
    while end + 3 > max && end > 0 && value[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    value.truncate(end);
    while value.last().is_some_and(|&b| is_wsp(b) || is_break(b)) {
        value.pop();
    }
    log::warn!(
        "header \"{}\": the value of {full} bytes is cut to {} (SIEVE_MAX_HEADER_SIZE is {max})",
        crate::error::escape(name),
        value.len()
    );
    value
}

/// A folded value unfolded (RFC 5322 §2.2.3): each CRLF goes, the white space after it stays.
fn unfold(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i..].starts_with(b"\r\n") {
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

/// RFC 2047 encoded-words decoded to UTF-8 where the charset is UTF-8, US-ASCII or ISO-8859-1,
/// and the white space between two decoded ones dropped (RFC 2047 §6.2). An RFC 5293 engine
/// takes the value of `addheader` as text and encodes it itself where needed (RFC 5293 §4), and
/// one that protects a literal `=?` (Pigeonhole encodes it) would otherwise show the Milter's
/// encoded-word as text: a Subject tagged by spamass-milter would read
/// `[SPAM] =?utf-8?q?caf=C3=A9?=`. Encoded-words in other charsets, or malformed, stay.
fn decode_encoded_words(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    // The length of `out` right after the last decoded word, while only white space follows.
    let mut after_word: Option<usize> = None;
    let mut i = 0;
    while i < v.len() {
        if v[i..].starts_with(b"=?") {
            if let Some((text, len)) = encoded_word(&v[i..]) {
                if let Some(at) = after_word {
                    out.truncate(at);
                }
                out.extend_from_slice(&text);
                after_word = Some(out.len());
                i += len;
                continue;
            }
        }
        if !is_wsp(v[i]) && !is_break(v[i]) {
            after_word = None;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// The encoded-word at the start of `s` (`=?charset[*lang]?B|Q?text?=`), decoded to UTF-8, and
/// its length; None when it is not one or its charset is not known here.
fn encoded_word(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let rest = s.strip_prefix(b"=?")?;
    let q = rest.iter().position(|&b| b == b'?')?;
    let charset = rest[..q].split(|&b| b == b'*').next()?;
    let encoding = *rest.get(q + 1)?;
    if rest.get(q + 2) != Some(&b'?') {
        return None;
    }
    let start = q + 3;
    let len = rest[start..].windows(2).position(|w| w == b"?=")?;
    let text = &rest[start..start + len];
    if text.iter().any(|&b| b <= b' ' || b >= 0x7f || b == b'?') {
        return None;
    }
    let bytes = match encoding.to_ascii_uppercase() {
        b'B' => base64_decode(text)?,
        b'Q' => q_decode(text)?,
        _ => return None,
    };
    let known = |name: &[&str]| {
        name.iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(charset))
    };
    let utf8 = if known(&["utf-8", "us-ascii"]) {
        bytes
    } else if known(&["iso-8859-1", "latin1"]) {
        bytes
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into_bytes()
    } else {
        return None;
    };
    Some((utf8, 2 + start + len + 2))
}

fn q_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = std::str::from_utf8(text.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    let body = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// How `deleteheader` names an original field's value. Engines compare a value unfolded, with
/// RFC 2047 encoded-words decoded and the white space at both ends removed (RFC 5228 §5.7,
/// RFC 5293 §5). One line of UTF-8 text without encoded-words or control characters is the same
/// in every engine: `:is` with it. Elsewhere engines differ (a fold unfolds to a space, a TAB or
/// both; a byte that is not UTF-8 becomes U+FFFD or a Latin-1 letter; an encoded-word in an
/// unknown charset stays or goes), so those parts become `*` of a `:matches` pattern and only the
/// rest is compared.
fn original_match(value: &[u8]) -> ValueMatch {
    let start = value
        .iter()
        .position(|&b| !is_wsp(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_wsp(b))
        .map_or(start, |e| e + 1);
    let v = &value[start..end];
    let mut wild = vec![false; v.len()];
    // Encoded-words: everything from the first `=?` to the end of the last `?=` after the last
    // `=?` (or to the end), with the white space around: decoders drop the white space between
    // encoded-words, and Dovecot's also that before a malformed `=?` after one.
    if let Some(first) = v.windows(2).position(|w| w == b"=?") {
        let last_open = v.windows(2).rposition(|w| w == b"=?").unwrap_or(first);
        let mut end = v[last_open + 2..]
            .windows(2)
            .position(|w| w == b"?=")
            .map_or(v.len(), |e| last_open + 2 + e + 2);
        while end < v.len() && (is_wsp(v[end]) || is_break(v[end])) {
            end += 1;
        }
        let mut start = first;
        while start > 0 && (is_wsp(v[start - 1]) || is_break(v[start - 1])) {
            start -= 1;
        }
        wild[start..end].fill(true);
    }
    // Folds: a run of white space holding a line break.
    let mut i = 0;
    while i < v.len() {
        if is_wsp(v[i]) || is_break(v[i]) {
            let s = i;
            while i < v.len() && (is_wsp(v[i]) || is_break(v[i])) {
                i += 1;
            }
            if v[s..i].iter().any(|&b| is_break(b)) {
                wild[s..i].fill(true);
            }
        } else {
            i += 1;
        }
    }
    // Bytes that are not UTF-8, and control characters but TAB.
    let mut at = 0;
    for chunk in v.utf8_chunks() {
        for (j, &b) in chunk.valid().as_bytes().iter().enumerate() {
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                wild[at + j] = true;
            }
        }
        at += chunk.valid().len();
        wild[at..at + chunk.invalid().len()].fill(true);
        at += chunk.invalid().len();
    }
    if !wild.contains(&true) {
        return ValueMatch::Is(v.to_vec());
    }
    let mut pattern = Vec::with_capacity(v.len());
    for (i, &b) in v.iter().enumerate() {
        if wild[i] {
            if i == 0 || !wild[i - 1] {
                pattern.push(b'*');
            }
        } else {
            if matches!(b, b'*' | b'?' | b'\\') {
                pattern.push(b'\\');
            }
            pattern.push(b);
        }
    }
    ValueMatch::Matches(pattern)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The message's own field, by its position in `Outcome::headers`.
    Original(usize),
    /// Added by the Milter: at the top of the header, or at its end.
    Added { top: bool },
}

#[derive(Debug)]
struct Field {
    name: Vec<u8>,
    /// The value as `addheader` writes it (`header_value`); for an unchanged original, unused.
    value: Vec<u8>,
    origin: Origin,
    /// Removed by CHGHEADER with an empty value (still counted by later indexes, as sendmail).
    deleted: bool,
    /// An original field that CHGHEADER changed or removed.
    changed: bool,
}

/// The fields that describe a message's body (RFC 2045): with the body unchanged, the Milter's
/// edits of them would contradict it (spamass-milter's report turns the type multipart).
fn describes_body(name: &[u8]) -> bool {
    name.len() >= 8 && name[..8].eq_ignore_ascii_case(b"content-")
        || name.eq_ignore_ascii_case(b"MIME-Version")
}

/// Replays the header edits on a model of the header with sendmail's semantics (replay.rs), then
/// writes the difference between the original and the result as editheader actions.
///
/// Sendmail's semantics: CHGHEADER's index is 1-based among the fields of that name, 0 counts as
/// 1, a field removed earlier still counts, a change of a field that is not there adds it at the
/// end, and an empty value removes; INSHEADER's index is 0-based among all fields.
///
/// Sieve adds only at the top or at the end: INSHEADER before the last field goes to the top
/// (where INSHEADER 0, the usual case, puts it: DKIM-Signature, ARC sets), at or past the end it
/// goes to the end; a changed field is removed and added again at the end.
fn header_actions(outcome: &Outcome, options: &VerdictOptions, actions: &mut Vec<Action>) {
    let edits_header = outcome.edits.iter().any(|e| {
        matches!(
            e,
            Edit::AddHeader { .. } | Edit::InsHeader { .. } | Edit::ChgHeader { .. }
        )
    });
    if !edits_header {
        // The header stays as it came: nothing to replay (the usual message).
        return;
    }
    let body_replaced = outcome.edits.iter().any(|e| matches!(e, Edit::ReplaceBody));
    let mut edits = Vec::new();
    for e in &outcome.edits {
        let (name, raw, kind) = match e {
            Edit::AddHeader { name, value } => (name, value, replay::Kind::Add),
            Edit::InsHeader { index, name, value } => (name, value, replay::Kind::Insert(*index)),
            Edit::ChgHeader { index, name, value } => {
                let delete = value.is_empty();
                (
                    name,
                    value,
                    replay::Kind::Change {
                        index: *index,
                        delete,
                    },
                )
            }
            Edit::AddRcpt { .. } | Edit::DelRcpt { .. } | Edit::ReplaceBody => continue,
        };
        if body_replaced && describes_body(name) {
            log::warn!(
                "header edit of \"{}\" left out: it describes the Milter's replacement body, \
                 which a verdict cannot carry",
                crate::error::escape(name)
            );
            continue;
        }
        if !is_field_name(name) {
            log::warn!(
                "header edit of \"{}\" left out: not a valid header field name",
                crate::error::escape(name)
            );
            continue;
        }
        let value = header_value(
            raw,
            outcome.leadspc,
            options.dialect == SieveDialect::Rfc5293,
        );
        let value = shortened(name, value, options.limits.max_header_size);
        edits.push(replay::HeaderEdit { name, value, kind });
    }
    let fields = replay::replay(&outcome.headers, edits);
    replay::delete_actions(&outcome.headers, options, &fields, actions);

    let top: Vec<&Field> = fields
        .iter()
        .filter(|f| f.origin == (Origin::Added { top: true }) && !f.deleted)
        .collect();
    let end: Vec<&Field> = fields
        .iter()
        .filter(|f| match f.origin {
            Origin::Original(_) => f.changed && !f.deleted,
            Origin::Added { top } => !top && !f.deleted,
        })
        .collect();
    let add = |f: &Field, last: bool| Action::AddHeader {
        last,
        name: f.name.clone(),
        value: f.value.clone(),
    };
    if options.dialect == SieveDialect::Legacy {
        // The one-argument addheader has no position: everything in final order.
        actions.extend(top.iter().chain(end.iter()).map(|f| add(f, true)));
    } else if outcome.headers.is_empty() {
        // On an empty header the top and the end are one place; Pigeonhole 0.5.19 (Debian 12)
        // aborts on `addheader :last` there, so everything goes to the top, the last first.
        actions.extend(top.iter().chain(end.iter()).rev().map(|f| add(f, false)));
    } else {
        // Each addheader at the top goes above the last one: the last first.
        actions.extend(top.iter().rev().map(|f| add(f, false)));
        actions.extend(end.iter().map(|f| add(f, true)));
    }
}

/// The line end of the scriptlet: RFC 5228 §8.1 has CRLF, and a line break inside a quoted
/// string (a folded value) may only be CRLF.
const EOL: &str = "\r\n";

/// Writes the actions as one Sieve scriptlet with exactly the `require` it needs.
fn render(actions: &[Action], options: &VerdictOptions, reply: Option<Vec<u8>>) -> Verdict {
    let legacy = options.dialect == SieveDialect::Legacy;
    // encoded-character is needed when any string holds bytes that are not UTF-8 text.
    let needs_encoding = |b: &[u8]| std::str::from_utf8(b).is_err();
    let encode = actions.iter().any(|a| match a {
        Action::AddHeader { name, value, .. } => needs_encoding(name) || needs_encoding(value),
        Action::DeleteHeader { name, value, .. } => {
            needs_encoding(name)
                || match value {
                    Some(ValueMatch::Is(v) | ValueMatch::Matches(v)) => needs_encoding(v),
                    None => false,
                }
        }
        Action::Ereject(t)
        | Action::Fileinto(t)
        | Action::Redirect(t)
        | Action::RemoveRecipient(t)
        | Action::HoldRecipient(t) => needs_encoding(t),
        Action::RejectRecipient { address, reply } => {
            needs_encoding(address) || needs_encoding(reply)
        }
        Action::Discard => false,
    });
    let q = |b: &[u8]| quote(b, encode);
    let mut require: Vec<&str> = Vec::new();
    let mut need = |ext: &'static str| {
        if !require.contains(&ext) {
            require.push(ext);
        }
    };
    let mut body = String::new();
    for a in actions {
        match a {
            Action::AddHeader { last, name, value } => {
                if legacy {
                    need("addheader");
                    let mut line = name.clone();
                    line.extend_from_slice(b": ");
                    line.extend_from_slice(value);
                    body.push_str(&format!("addheader {};{EOL}", q(&line)));
                } else {
                    need("editheader");
                    body.push_str(&format!(
                        "addheader {}{} {};{EOL}",
                        if *last { ":last " } else { "" },
                        q(name),
                        q(value)
                    ));
                }
            }
            Action::DeleteHeader { index, name, value } => {
                need("editheader");
                let mut s = String::from("deleteheader ");
                if let Some(i) = index {
                    s.push_str(&format!(":index {i} "));
                }
                // i;octet: the default comparator ignores ASCII case, which would delete a
                // field whose value differs only in case.
                match value {
                    Some(ValueMatch::Is(_)) => s.push_str(":comparator \"i;octet\" :is "),
                    Some(ValueMatch::Matches(_)) => s.push_str(":comparator \"i;octet\" :matches "),
                    None => {}
                }
                s.push_str(&q(name));
                if let Some(ValueMatch::Is(v) | ValueMatch::Matches(v)) = value {
                    s.push(' ');
                    s.push_str(&q(v));
                }
                s.push(';');
                s.push_str(EOL);
                body.push_str(&s);
            }
            Action::Ereject(text) => {
                need("ereject");
                body.push_str(&format!("ereject {};{EOL}", q(text)));
            }
            Action::RejectRecipient { address, reply } => {
                need("envelope");
                need("ereject");
                // stop: for this recipient nothing else may happen. An action that delivers
                // (fileinto, redirect) after ereject is an error that ends in the implicit keep,
                // which would deliver the message to the recipient the Milter refused.
                body.push_str(&format!(
                    "if envelope :is \"to\" {} {{{EOL}  ereject {};{EOL}  stop;{EOL}}}{EOL}",
                    q(address),
                    q(reply)
                ));
            }
            Action::HoldRecipient(address) => {
                need("envelope");
                // Nothing may happen to a recipient the Milter deferred: the MTA defers it
                // (Verdict::recipients). Should it run the script for it anyway, the implicit
                // keep delivers it unedited, which neither bounces nor loses it.
                body.push_str(&format!(
                    "if envelope :is \"to\" {} {{{EOL}  stop;{EOL}}}{EOL}",
                    q(address)
                ));
            }
            Action::Discard => body.push_str(&format!("discard;{EOL}")),
            Action::RemoveRecipient(address) => {
                need("envelope");
                // The Milter deleted this recipient: no delivery to it. Where it also added
                // recipients, their redirects came before this, so they still happen.
                body.push_str(&format!(
                    "if envelope :is \"to\" {} {{{EOL}  discard;{EOL}  stop;{EOL}}}{EOL}",
                    q(address)
                ));
            }
            Action::Fileinto(folder) => {
                need("fileinto");
                body.push_str(&format!("fileinto {};{EOL}", q(folder)));
            }
            Action::Redirect(addr) => {
                need("copy");
                body.push_str(&format!("redirect :copy {};{EOL}", q(addr)));
            }
        }
    }
    if encode {
        need("encoded-character");
    }
    let mut script = String::new();
    if !require.is_empty() {
        // A fixed order, so that equal outcomes give equal verdicts.
        const ORDER: [&str; 7] = [
            "addheader",
            "editheader",
            "envelope",
            "ereject",
            "fileinto",
            "copy",
            "encoded-character",
        ];
        require.sort_by_key(|r| ORDER.iter().position(|o| o == r));
        let list: Vec<String> = require.iter().map(|r| format!("\"{r}\"")).collect();
        script.push_str(&format!("require [{}];{EOL}", list.join(", ")));
    }
    script.push_str(&body);
    Verdict {
        kind: VerdictKind::Sieve,
        script: script.into_bytes(),
        reply,
        recipients: Vec::new(),
    }
}

/// Every line break (CR, LF or CRLF) as CRLF, the only one a quoted string may hold, and NULs
/// left out.
fn crlf_without_nul(bytes: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => {}
            b'\r' | b'\n' => {
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                t.extend_from_slice(b"\r\n");
            }
            b => t.push(b),
        }
        i += 1;
    }
    t
}

/// Writes the bytes held in `hex` as one `${hex:..}` encoding (RFC 5228 §2.4.2.4), if any.
fn flush_hex(s: &mut String, hex: &mut Vec<u8>) {
    if !hex.is_empty() {
        let parts: Vec<String> = hex.iter().map(|b| format!("{b:02X}")).collect();
        s.push_str(&format!("${{hex:{}}}", parts.join(" ")));
        hex.clear();
    }
}

/// A Sieve quoted string (RFC 5228 §2.4.2): `"` and `\` escaped, every line break CRLF (the only
/// one a quoted string may hold), NUL left out. With `encode` (the script requires
/// encoded-character) bytes that are not UTF-8 text are written as `${hex:..}`, and so is `$`,
/// so that a literal `${` is not read as an encoding; without it they become U+FFFD (callers
/// check first, so that does not happen).
pub fn quote(bytes: &[u8], encode: bool) -> String {
    // Line ends become CRLF and NULs go; text without either is taken as it is.
    let normalized: Vec<u8>;
    let text: &[u8] = if bytes.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        normalized = crlf_without_nul(bytes);
        &normalized
    } else {
        bytes
    };
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    let mut hex: Vec<u8> = Vec::new();
    let special = |b: u8| b == b'"' || b == b'\\' || (encode && b == b'$');
    for chunk in text.utf8_chunks() {
        let mut valid = chunk.valid();
        while !valid.is_empty() {
            // A run of plain characters at once; the special ones are ASCII, so the run ends
            // on a character boundary.
            let n = valid.bytes().position(special).unwrap_or(valid.len());
            if n > 0 {
                flush_hex(&mut s, &mut hex);
                s.push_str(&valid[..n]);
                valid = &valid[n..];
                continue;
            }
            let c = valid.as_bytes()[0];
            if c == b'$' {
                hex.push(b'$');
            } else {
                flush_hex(&mut s, &mut hex);
                s.push('\\');
                s.push(char::from(c));
            }
            valid = &valid[1..];
        }
        if encode {
            hex.extend_from_slice(chunk.invalid());
        } else if !chunk.invalid().is_empty() {
            flush_hex(&mut s, &mut hex);
            s.push('\u{FFFD}');
        }
    }
    flush_hex(&mut s, &mut hex);
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> VerdictOptions {
        VerdictOptions {
            context_edits: true,
            dialect: SieveDialect::Rfc5293,
            quarantine_folder: "Quarantine".to_string(),
            limits: SieveLimits::default(),
        }
    }

    fn by_position() -> VerdictOptions {
        VerdictOptions {
            context_edits: false,
            ..options()
        }
    }

    fn legacy() -> VerdictOptions {
        VerdictOptions {
            dialect: SieveDialect::Legacy,
            ..options()
        }
    }

    /// `build`'s shortcut for an unchanged message gives what the whole builder gives.
    #[test]
    fn an_unchanged_message_gets_the_builders_own_answer() {
        for disposition in [Disposition::Accept, Disposition::Continue] {
            for stage in [Stage::Connect, Stage::Rcpt, Stage::Header, Stage::Eom] {
                let mut o = Outcome::new(disposition, stage);
                o.headers = vec![h("Subject", b" hello"), h("From", b" a@example.org")];
                o.reply = Some(b"250 2.0.0 fine".to_vec());
                o.leadspc = stage == Stage::Eom;
                assert!(unchanged(&o));
                for opts in [options(), by_position(), legacy()] {
                    let whole = build_for_the_rest(&o, &opts, &[]);
                    assert_eq!(build(&o, &opts), whole, "{o:?}");
                    assert_eq!(whole.kind, VerdictKind::None);
                }
            }
        }
    }

    fn h(name: &str, value: &[u8]) -> Header {
        Header {
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        }
    }

    fn add(name: &str, value: &[u8]) -> Edit {
        Edit::AddHeader {
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        }
    }

    fn ins(index: u32, name: &str, value: &[u8]) -> Edit {
        Edit::InsHeader {
            index,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        }
    }

    fn chg(index: u32, name: &str, value: &[u8]) -> Edit {
        Edit::ChgHeader {
            index,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        }
    }

    /// An accepted message with these original fields and edits.
    fn edited(headers: Vec<Header>, edits: Vec<Edit>) -> Outcome {
        Outcome {
            headers,
            edits,
            ..Outcome::new(Disposition::Continue, Stage::Eom)
        }
    }

    /// The verdict's script, which must be a Sieve verdict; written with LF for readability of
    /// the expectations (and checked to have CRLF everywhere).
    fn script(o: &Outcome, opts: &VerdictOptions) -> String {
        let v = build(o, opts);
        assert_eq!(v.kind, VerdictKind::Sieve, "{v:?}");
        let s = String::from_utf8(v.script).expect("UTF-8");
        assert!(s.ends_with("\r\n"), "{s:?}");
        assert!(
            !s.replace("\r\n", "").contains(['\r', '\n']),
            "a bare line break in {s:?}"
        );
        s.replace("\r\n", "\n")
    }

    fn three_headers() -> Vec<Header> {
        vec![
            h("From", b" a@example.com"),
            h("Subject", b" hello"),
            h("To", b" b@example.com"),
        ]
    }

    // Dispositions.

    #[test]
    fn continue_or_accept_without_edits_is_no_verdict() {
        for d in [Disposition::Continue, Disposition::Accept] {
            let mut o = Outcome::new(d, Stage::Eom);
            o.headers = three_headers();
            let v = build(&o, &options());
            assert_eq!(v.kind, VerdictKind::None);
            assert!(v.script.is_empty());
            assert_eq!(v.reply, None);
        }
    }

    #[test]
    fn tempfail_is_a_deferral_with_the_reply() {
        let mut o = Outcome::new(Disposition::Tempfail, Stage::Eom);
        let v = build(&o, &options());
        assert_eq!(v.kind, VerdictKind::Defer);
        assert!(v.script.is_empty());
        assert_eq!(v.reply.as_deref(), Some(DEFAULT_TEMPFAIL));
        o.reply = Some(b"452 4.3.1 Insufficient system storage".to_vec());
        o.edits.push(add("X-Spam", b"yes"));
        let v = build(&o, &options());
        assert_eq!(v.kind, VerdictKind::Defer);
        assert!(v.script.is_empty());
        assert_eq!(
            v.reply.as_deref(),
            Some(&b"452 4.3.1 Insufficient system storage"[..])
        );
    }

    #[test]
    fn reject_is_ereject_with_the_reply_text() {
        let mut o = Outcome::new(Disposition::Reject, Stage::Eom);
        assert_eq!(
            script(&o, &options()),
            "require [\"ereject\"];\nereject \"550 5.7.1 Command rejected\";\n"
        );
        o.reply = Some(b"554 5.7.1 Gtube pattern".to_vec());
        o.edits.push(add("X-Spam", b"yes"));
        o.quarantine = Some(b"held".to_vec());
        let v = build(&o, &options());
        assert_eq!(v.reply.as_deref(), Some(&b"554 5.7.1 Gtube pattern"[..]));
        assert_eq!(
            script(&o, &options()),
            "require [\"ereject\"];\nereject \"554 5.7.1 Gtube pattern\";\n"
        );
    }

    #[test]
    fn reject_at_an_early_stage_is_the_same_ereject() {
        let mut o = Outcome::new(Disposition::Reject, Stage::Connect);
        o.reply = Some(b"550 5.7.1 Go away \"now\"".to_vec());
        assert_eq!(
            script(&o, &options()),
            "require [\"ereject\"];\nereject \"550 5.7.1 Go away \\\"now\\\"\";\n"
        );
    }

    #[test]
    fn a_multi_line_reply_keeps_its_crlf() {
        let mut o = Outcome::new(Disposition::Reject, Stage::Eom);
        o.reply = Some(b"550-5.7.1 first\r\n550 5.7.1 second".to_vec());
        assert_eq!(
            script(&o, &options()),
            "require [\"ereject\"];\nereject \"550-5.7.1 first\n550 5.7.1 second\";\n"
        );
    }

    #[test]
    fn discard_is_discard() {
        let mut o = Outcome::new(Disposition::Discard, Stage::Eom);
        o.edits.push(add("X-Spam", b"yes"));
        assert_eq!(script(&o, &options()), "discard;\n");
    }

    // Recipients refused at RCPT.

    #[test]
    fn a_recipient_refused_at_rcpt_is_rejected_for_that_recipient_only() {
        let mut o = edited(three_headers(), Vec::new());
        o.rejected_recipients.push(RecipientReject {
            index: 0,
            address: b"bad@example.org".to_vec(),
            tempfail: false,
            reply: b"550 5.1.1 No such user".to_vec(),
        });
        o.rejected_recipients.push(RecipientReject {
            index: 2,
            address: b"worse@example.org".to_vec(),
            tempfail: false,
            reply: Vec::new(),
        });
        o.edits.push(add("X-Spam", b"no"));
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\", \"envelope\", \"ereject\"];\n\
             if envelope :is \"to\" \"bad@example.org\" {\n  ereject \"550 5.1.1 No such user\";\n  stop;\n}\n\
             if envelope :is \"to\" \"worse@example.org\" {\n  ereject \"550 5.7.1 Command rejected\";\n  stop;\n}\n\
             addheader :last \"X-Spam\" \"no\";\n"
        );
    }

    fn refused(index: usize, address: &str, tempfail: bool, reply: &[u8]) -> RecipientReject {
        RecipientReject {
            index,
            address: address.as_bytes().to_vec(),
            tempfail,
            reply: reply.to_vec(),
        }
    }

    #[test]
    fn a_recipient_deferred_at_rcpt_keeps_its_deferral_and_the_others_go_on() {
        let mut o = edited(three_headers(), vec![add("X-Spam", b"no")]);
        o.rejected_recipients
            .push(refused(1, "busy@example.org", true, b"450 4.2.1 Try later"));
        let v = build(&o, &options());
        assert_eq!(v.kind, VerdictKind::Sieve);
        assert_eq!(
            v.recipients,
            [refused(1, "busy@example.org", true, b"450 4.2.1 Try later")]
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\", \"envelope\"];\n\
             if envelope :is \"to\" \"busy@example.org\" {\n  stop;\n}\n\
             addheader :last \"X-Spam\" \"no\";\n"
        );
        // Nothing for the others: no verdict for them, the deferral in the list, default text.
        o.edits.clear();
        o.rejected_recipients[0].reply.clear();
        let v = build(&o, &options());
        assert_eq!(v.kind, VerdictKind::None);
        assert!(v.script.is_empty());
        assert_eq!(
            v.recipients,
            [refused(1, "busy@example.org", true, DEFAULT_TEMPFAIL)]
        );
    }

    #[test]
    fn a_refusal_at_rcpt_survives_the_message_s_reject_discard_or_deferral() {
        let own = vec![
            refused(0, "bad@example.org", false, b""),
            refused(2, "busy@example.org", true, b"451 4.3.0 later"),
        ];
        let guards = "if envelope :is \"to\" \"bad@example.org\" {\n  \
                      ereject \"550 5.7.1 Command rejected\";\n  stop;\n}\n\
                      if envelope :is \"to\" \"busy@example.org\" {\n  stop;\n}\n";
        let mut o = Outcome::new(Disposition::Discard, Stage::Eom);
        o.rejected_recipients = own.clone();
        assert_eq!(
            script(&o, &options()),
            format!("require [\"envelope\", \"ereject\"];\n{guards}discard;\n")
        );
        o.disposition = Disposition::Reject;
        o.stage = Stage::Header;
        o.reply = Some(b"554 5.7.1 Spam".to_vec());
        assert_eq!(
            script(&o, &options()),
            format!("require [\"envelope\", \"ereject\"];\n{guards}ereject \"554 5.7.1 Spam\";\n")
        );
        o.disposition = Disposition::Tempfail;
        let v = build(&o, &options());
        assert_eq!(v.kind, VerdictKind::Defer);
        assert_eq!(v.reply.as_deref(), Some(&b"554 5.7.1 Spam"[..]));
        let want = vec![
            refused(0, "bad@example.org", false, DEFAULT_REJECT),
            refused(2, "busy@example.org", true, b"451 4.3.0 later"),
        ];
        assert_eq!(v.recipients, want);
        for d in [Disposition::Reject, Disposition::Discard] {
            o.disposition = d;
            assert_eq!(build(&o, &options()).recipients, want);
        }
    }

    #[test]
    fn a_caller_that_sees_the_kind_only_defers_for_a_deferred_recipient() {
        let mut o = Outcome::new(Disposition::Discard, Stage::Eom);
        o.rejected_recipients = vec![
            refused(0, "bad@example.org", false, b"550 5.1.1 no"),
            refused(1, "busy@example.org", true, b"450 4.2.1 busy"),
        ];
        let v = build(&o, &options()).for_kind_only();
        assert_eq!(v.kind, VerdictKind::Defer);
        assert!(v.script.is_empty());
        assert_eq!(v.reply.as_deref(), Some(&b"450 4.2.1 busy"[..]));
        // Without a deferred recipient the verdict is the same for either caller.
        o.rejected_recipients.pop();
        let v = build(&o, &options());
        assert_eq!(v.for_kind_only(), v);
        o.disposition = Disposition::Tempfail;
        let v = build(&o, &options());
        assert_eq!(v.for_kind_only(), v);
    }

    // ADDHEADER and INSHEADER.

    #[test]
    fn addheader_is_addheader_last() {
        let o = edited(three_headers(), vec![add("X-Spam-Score", b"5.2")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"X-Spam-Score\" \"5.2\";\n"
        );
    }

    #[test]
    fn addheader_in_milter_order() {
        let o = edited(
            three_headers(),
            vec![add("X-A", b"1"), add("X-B", b"2"), add("X-A", b"3")],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"X-A\" \"1\";\n\
             addheader :last \"X-B\" \"2\";\naddheader :last \"X-A\" \"3\";\n"
        );
    }

    #[test]
    fn insheader_at_zero_is_addheader_at_the_top() {
        let o = edited(
            three_headers(),
            vec![ins(0, "DKIM-Signature", b"v=1; a=rsa-sha256")],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader \"DKIM-Signature\" \"v=1; a=rsa-sha256\";\n"
        );
    }

    #[test]
    fn several_insheaders_at_zero_keep_the_milter_result_order() {
        // Each INSHEADER 0 goes above the one before, as in sendmail: ARC-Seal ends on top.
        let o = edited(
            three_headers(),
            vec![
                ins(0, "ARC-Authentication-Results", b"i=1"),
                ins(0, "ARC-Message-Signature", b"i=1"),
                ins(0, "ARC-Seal", b"i=1"),
            ],
        );
        // The top group is written last first, so the engine ends with Seal, Message-Signature,
        // Authentication-Results.
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader \"ARC-Authentication-Results\" \"i=1\";\n\
             addheader \"ARC-Message-Signature\" \"i=1\";\naddheader \"ARC-Seal\" \"i=1\";\n"
        );
    }

    #[test]
    fn insheader_in_between_goes_to_the_top() {
        let o = edited(
            three_headers(),
            vec![ins(2, "X-Mid", b"m"), ins(1, "X-Mid2", b"n")],
        );
        // sendmail: From, X-Mid2, Subject, X-Mid, To; Sieve: X-Mid2, X-Mid at the top, in
        // that order (written last first).
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader \"X-Mid\" \"m\";\naddheader \"X-Mid2\" \"n\";\n"
        );
    }

    #[test]
    fn insheader_at_or_past_the_end_is_addheader_last() {
        for index in [3, 4, 1000, u32::MAX] {
            let o = edited(three_headers(), vec![ins(index, "X-End", b"e")]);
            assert_eq!(
                script(&o, &options()),
                "require [\"editheader\"];\naddheader :last \"X-End\" \"e\";\n",
                "index {index}"
            );
        }
    }

    /// On an empty header the top and the end are one place: all at the top, the last first
    /// (Pigeonhole 0.5.19 aborts on `addheader :last` there).
    #[test]
    fn additions_to_an_empty_header_are_all_at_the_top() {
        let o = edited(
            Vec::new(),
            vec![
                ins(0, "X-Only", b"o"),
                add("X-End", b"e"),
                ins(0, "X-Top", b"t"),
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader \"X-End\" \"e\";\n\
             addheader \"X-Only\" \"o\";\naddheader \"X-Top\" \"t\";\n"
        );
    }

    // CHGHEADER.

    #[test]
    fn chgheader_by_value_with_context_edits() {
        let o = edited(three_headers(), vec![chg(1, "Subject", b"[SPAM] hello")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";\n\
             addheader :last \"Subject\" \"[SPAM] hello\";\n"
        );
    }

    #[test]
    fn chgheader_by_position_without_context_edits() {
        let o = edited(three_headers(), vec![chg(1, "Subject", b"[SPAM] hello")]);
        assert_eq!(
            script(&o, &by_position()),
            "require [\"editheader\"];\ndeleteheader :index 1 \"Subject\";\n\
             addheader :last \"Subject\" \"[SPAM] hello\";\n"
        );
    }

    #[test]
    fn chgheader_with_an_empty_value_deletes() {
        let o = edited(three_headers(), vec![chg(1, "subject", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";\n"
        );
        assert_eq!(
            script(&o, &by_position()),
            "require [\"editheader\"];\ndeleteheader :index 1 \"Subject\";\n"
        );
    }

    #[test]
    fn chgheader_index_zero_is_the_first() {
        let headers = vec![h("X-A", b" one"), h("X-A", b" two")];
        let o = edited(headers, vec![chg(0, "X-A", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\ndeleteheader :comparator \"i;octet\" :is \"X-A\" \"one\";\n"
        );
        assert_eq!(
            script(&o, &by_position()),
            "require [\"editheader\"];\ndeleteheader :index 1 \"X-A\";\n"
        );
    }

    #[test]
    fn chgheader_past_the_last_occurrence_adds_or_does_nothing() {
        let o = edited(three_headers(), vec![chg(2, "Subject", b"second")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"Subject\" \"second\";\n"
        );
        let o = edited(three_headers(), vec![chg(5, "X-None", b"")]);
        assert_eq!(build(&o, &options()).kind, VerdictKind::None);
    }

    #[test]
    fn chgheader_of_the_second_occurrence() {
        let headers = vec![
            h("X-A", b" one"),
            h("Subject", b" s"),
            h("X-A", b" two"),
            h("X-A", b" three"),
        ];
        let o = edited(headers, vec![chg(2, "X-A", b"TWO")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\ndeleteheader :comparator \"i;octet\" :is \"X-A\" \"two\";\n\
             addheader :last \"X-A\" \"TWO\";\n"
        );
        assert_eq!(
            script(&o, &by_position()),
            "require [\"editheader\"];\ndeleteheader :index 2 \"X-A\";\n\
             addheader :last \"X-A\" \"TWO\";\n"
        );
    }

    #[test]
    fn a_value_that_occurs_twice_is_narrowed_by_position() {
        let headers = vec![h("X-A", b" same"), h("X-A", b" other"), h("X-A", b" same")];
        let o = edited(headers.clone(), vec![chg(3, "X-A", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :index 3 :comparator \"i;octet\" :is \"X-A\" \"same\";\n"
        );
        // Both go: the value alone deletes both, once.
        let o = edited(headers, vec![chg(1, "X-A", b""), chg(3, "X-A", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\ndeleteheader :comparator \"i;octet\" :is \"X-A\" \"same\";\n"
        );
    }

    #[test]
    fn positions_count_what_earlier_deletions_left() {
        // X-A 1 (v) and 4 (v) go by value alone (both doomed), which also removes field 1
        // before field 2 is deleted; field 2 (w) shares its value with field 3, which stays, so
        // it needs a position: 1, not 2, by then.
        let headers = vec![
            h("X-A", b" v"),
            h("X-A", b" w"),
            h("X-A", b" w"),
            h("X-A", b" v"),
        ];
        let o = edited(
            headers,
            vec![chg(1, "X-A", b""), chg(2, "X-A", b""), chg(4, "X-A", b"")],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :comparator \"i;octet\" :is \"X-A\" \"v\";\n\
             deleteheader :index 1 :comparator \"i;octet\" :is \"X-A\" \"w\";\n"
        );
        assert_eq!(
            script(&o, &by_position()),
            "require [\"editheader\"];\ndeleteheader :index 4 \"X-A\";\n\
             deleteheader :index 2 \"X-A\";\ndeleteheader :index 1 \"X-A\";\n"
        );
    }

    #[test]
    fn values_differing_in_case_are_different() {
        let headers = vec![h("X-A", b" Same"), h("X-A", b" same")];
        let o = edited(headers, vec![chg(2, "X-A", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\ndeleteheader :comparator \"i;octet\" :is \"X-A\" \"same\";\n"
        );
    }

    #[test]
    fn several_edits_of_one_field_in_one_message() {
        let o = edited(
            three_headers(),
            vec![
                chg(1, "Subject", b"first"),
                chg(1, "Subject", b"second"),
                add("Subject", b"third"),
                chg(2, "Subject", b"fourth"),
                chg(1, "Subject", b""),
                chg(1, "Subject", b"back"),
            ],
        );
        // sendmail: the original Subject becomes "back" (deleted, then changed again: a removed
        // field still counts), the added one "fourth".
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";\n\
             addheader :last \"Subject\" \"back\";\naddheader :last \"Subject\" \"fourth\";\n"
        );
    }

    #[test]
    fn chgheader_of_an_added_field_changes_the_addition() {
        let o = edited(
            three_headers(),
            vec![
                ins(0, "X-Top", b"1"),
                chg(1, "X-Top", b"2"),
                add("X-End", b"a"),
                chg(1, "X-End", b""),
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader \"X-Top\" \"2\";\n"
        );
    }

    #[test]
    fn a_folded_original_is_matched_by_pattern_and_position() {
        let headers = vec![h(
            "X-Spam-Status",
            b" No, score=1.2\n\ttests=NONE  \n  version=4",
        )];
        let o = edited(headers, vec![chg(1, "X-Spam-Status", b"Yes")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :index 1 :comparator \"i;octet\" :matches \"X-Spam-Status\" \
             \"No, score=1.2*tests=NONE*version=4\";\n\
             addheader :last \"X-Spam-Status\" \"Yes\";\n"
        );
    }

    #[test]
    fn encoded_words_and_odd_bytes_in_an_original_become_wildcards() {
        assert_eq!(
            original_match(b" =?utf-8?q?caf=C3=A9?= =?utf-8?q?x?= tail "),
            ValueMatch::Matches(b"*tail".to_vec())
        );
        assert_eq!(
            original_match(
                b" a 
	=?utf-8?q?x?=  =?unclosed"
            ),
            ValueMatch::Matches(b"a*".to_vec())
        );
        assert_eq!(
            original_match(b" =?x?q?a?= b =?x?q?c?= d"),
            ValueMatch::Matches(b"*d".to_vec())
        );
        assert_eq!(
            original_match(b" caf\xe9 \x01x*?\\"),
            ValueMatch::Matches(b"caf* *x\\*\\?\\\\".to_vec())
        );
        assert_eq!(
            original_match(b"\n\tfirst line empty"),
            ValueMatch::Matches(b"*first line empty".to_vec())
        );
        assert_eq!(
            original_match(b" x =?unclosed"),
            ValueMatch::Matches(b"x*".to_vec())
        );
        assert_eq!(
            original_match(b" \t caf\xc3\xa9\tand tab \t"),
            ValueMatch::Is("café\tand tab".as_bytes().to_vec())
        );
        assert_eq!(original_match(b""), ValueMatch::Is(Vec::new()));
        assert_eq!(original_match(b"   "), ValueMatch::Is(Vec::new()));
        assert_eq!(original_match(b" a*b?c"), ValueMatch::Is(b"a*b?c".to_vec()));
    }

    #[test]
    fn a_pattern_original_makes_equal_values_ambiguous() {
        // The folded one might equal "a b" in some engine: the plain one needs its position.
        let headers = vec![h("X-A", b" a\n b"), h("X-A", b" a b")];
        let o = edited(headers, vec![chg(2, "X-A", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :index 2 :comparator \"i;octet\" :is \"X-A\" \"a b\";\n"
        );
    }

    #[test]
    fn a_non_utf8_original_needs_no_encoding() {
        let headers = vec![h("Subject", b" caf\xe9")];
        let o = edited(headers, vec![chg(1, "Subject", b"")]);
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :index 1 :comparator \"i;octet\" :matches \"Subject\" \"caf*\";\n"
        );
    }

    #[test]
    fn received_and_auto_submitted_of_the_message_are_not_changed() {
        let headers = vec![
            h("Received", b" from a by b"),
            h("Auto-Submitted", b" auto-generated"),
        ];
        let o = edited(
            headers,
            vec![
                chg(1, "Received", b"forged"),
                chg(1, "auto-submitted", b""),
                chg(2, "Received", b"second"),
                add("Received", b"from milter"),
            ],
        );
        // Only what adds: the change of a second Received (there is none) adds one.
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"Received\" \"second\";\n\
             addheader :last \"Received\" \"from milter\";\n"
        );
    }

    #[test]
    fn edits_with_invalid_names_are_left_out() {
        let o = edited(
            three_headers(),
            vec![
                add("", b"x"),
                add("Bad Name", b"x"),
                add("Bad:Name", b"x"),
                add("B\u{e9}d", b"x"),
                ins(0, "Tab\tName", b"x"),
                chg(1, "Sub\nject", b""),
            ],
        );
        assert_eq!(build(&o, &options()).kind, VerdictKind::None);
    }

    // Values.

    #[test]
    fn values_are_quoted_exactly() {
        let o = edited(
            three_headers(),
            vec![
                add("X-Q", b"say \"hi\" \\ back\\slash"),
                add("X-Dollar", b"cost $5 ${hex:41} ${unicode:42}"),
                add("X-Empty", b""),
                add("X-Spaces", b"  lead and trail  "),
                add("X-Utf8", "café ☕".as_bytes()),
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             addheader :last \"X-Q\" \"say \\\"hi\\\" \\\\ back\\\\slash\";\n\
             addheader :last \"X-Dollar\" \"cost $5 ${hex:41} ${unicode:42}\";\n\
             addheader :last \"X-Empty\" \"\";\n\
             addheader :last \"X-Spaces\" \"  lead and trail\";\n\
             addheader :last \"X-Utf8\" \"café ☕\";\n"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_use_encoded_character() {
        let o = edited(
            three_headers(),
            vec![
                add("X-Latin1", b"caf\xe9 \xff\xfe end"),
                add("X-Dollar", b"${hex:41} $"),
            ],
        );
        // With encoded-character in force, `$` is encoded too, so that `${hex:41}` stays text.
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\", \"encoded-character\"];\n\
             addheader :last \"X-Latin1\" \"caf${hex:E9} ${hex:FF FE} end\";\n\
             addheader :last \"X-Dollar\" \"${hex:24}{hex:41} ${hex:24}\";\n"
        );
    }

    #[test]
    fn line_breaks_in_a_value_are_folds() {
        let o = edited(
            three_headers(),
            vec![
                add("X-Folded", b"one\r\n\ttwo\n three"),
                add("X-Bare", b"one\ntwo\rthree"),
                add("X-Runs", b"a \n\n\t b\r\n"),
                add("X-Lead", b"\r\n\tfirst"),
                add("X-Trail", b"last \r\n\t"),
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             addheader :last \"X-Folded\" \"one\n\ttwo\n three\";\n\
             addheader :last \"X-Bare\" \"one\n two\n three\";\n\
             addheader :last \"X-Runs\" \"a \n\t b\";\n\
             addheader :last \"X-Lead\" \"\n\tfirst\";\n\
             addheader :last \"X-Trail\" \"last\";\n"
        );
    }

    #[test]
    fn encoded_words_are_decoded_in_the_rfc5293_dialect() {
        let value =
            b"[SPAM] =?utf-8?q?caf=C3=A9?= \r\n =?ISO-8859-1?Q?_=E9t=E9?= =?utf-8?b?4piV?= \
                      =?koi8-r?b?8MXU0Q==?= =?utf-8?q?bad=ZZ?=";
        let o = edited(three_headers(), vec![add("Subject", value)]);
        // Adjacent decoded words lose the white space between them; unknown charsets and
        // malformed words stay, and with them `=?`, so the value goes unfolded.
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"Subject\" \
             \"[SPAM] café été☕ =?koi8-r?b?8MXU0Q==?= =?utf-8?q?bad=ZZ?=\";\n"
        );
        // The legacy one-argument form takes a header line as it is.
        let o = edited(
            three_headers(),
            vec![add("Subject", b"=?utf-8?q?caf=C3=A9?=")],
        );
        assert_eq!(
            script(&o, &legacy()),
            "require [\"addheader\"];\naddheader \"Subject: =?utf-8?q?caf=C3=A9?=\";\n"
        );
    }

    #[test]
    fn a_value_the_engine_encodes_is_unfolded() {
        let o = edited(
            three_headers(),
            vec![
                add("X-Utf8", "café\r\n\tcafé".as_bytes()),
                add("X-Latin1", b"caf\xe9\n caf\xe9"),
                add("X-Ascii", b"one\n two"),
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\", \"encoded-character\"];\n\
             addheader :last \"X-Utf8\" \"café\tcafé\";\n\
             addheader :last \"X-Latin1\" \"caf${hex:E9} caf${hex:E9}\";\n\
             addheader :last \"X-Ascii\" \"one\n two\";\n"
        );
    }

    #[test]
    fn control_characters_become_spaces_and_nul_goes() {
        let o = edited(
            three_headers(),
            vec![add("X-Ctl", b"a\x01b\x7fc\0d\x0be\tf")],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"X-Ctl\" \"a b cd e\tf\";\n"
        );
    }

    #[test]
    fn leadspc_values_lose_their_own_leading_space() {
        let mut o = edited(
            three_headers(),
            vec![
                add("X-A", b" one"),
                add("X-B", b"two"),
                chg(1, "Subject", b" "),
            ],
        );
        o.leadspc = true;
        // CHGHEADER " " is not a deletion: it changes the value to an empty one.
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";\n\
             addheader :last \"Subject\" \"\";\naddheader :last \"X-A\" \"one\";\n\
             addheader :last \"X-B\" \"two\";\n"
        );
    }

    #[test]
    fn a_very_long_value_is_written_whole_within_the_engine_limit() {
        let long = vec![b'x'; 5000];
        let o = edited(three_headers(), vec![add("X-Long", &long)]);
        let roomy = VerdictOptions {
            limits: SieveLimits {
                max_header_size: 5000,
                ..SieveLimits::default()
            },
            ..options()
        };
        assert_eq!(
            script(&o, &roomy),
            format!(
                "require [\"editheader\"];\naddheader :last \"X-Long\" \"{}\";\n",
                "x".repeat(5000)
            )
        );
    }

    // The Sieve engine's limits (Pigeonhole's defaults).

    /// A value longer than SIEVE_MAX_HEADER_SIZE is cut to it (Pigeonhole refuses the whole
    /// script otherwise), at a character boundary and never inside a fold.
    #[test]
    fn a_value_longer_than_the_engine_takes_is_cut() {
        let value = |s: &str| -> String {
            let o = edited(three_headers(), vec![add("X-Long", s.as_bytes())]);
            let s = build(&o, &options()).script;
            let s = String::from_utf8(s).expect("UTF-8");
            let start = s.find("\"X-Long\" \"").expect("the addheader") + 10;
            s[start..s.len() - 4].replace("\r\n", "\n")
        };
        assert_eq!(value(&"x".repeat(5000)), "x".repeat(2048));
        assert_eq!(value(&"x".repeat(2048)), "x".repeat(2048));
        // 2047 bytes of x, then a two-byte character across the limit: it goes whole.
        assert_eq!(
            value(&format!("{}é{}", "x".repeat(2047), "y".repeat(9))),
            "x".repeat(2047)
        );
        // A fold across the limit goes, with the white space before it.
        let folded = format!("{} \n more", "x".repeat(2046));
        assert_eq!(value(&folded), "x".repeat(2046));
        // The quarantine reason is a header value too.
        let mut o = Outcome::new(Disposition::Accept, Stage::Eom);
        o.quarantine = Some(vec![b'q'; 3000]);
        let s = script(&o, &options());
        assert!(s.contains(&format!("\"{}\";", "q".repeat(2048))), "{s}");
        assert!(s.ends_with("fileinto \"Quarantine\";\n"), "{s}");
    }

    /// At most SIEVE_MAX_REDIRECTS redirects: the first distinct addresses, in order.
    #[test]
    fn redirects_stop_at_the_engine_limit() {
        let rcpt = |a: &str| Edit::AddRcpt {
            rcpt: a.as_bytes().to_vec(),
            args: None,
        };
        let mut o = edited(
            three_headers(),
            vec![
                rcpt("<a@example.org>"),
                rcpt("bad address"),
                rcpt("a@example.org"),
                rcpt("b@example.org"),
                rcpt("c@example.org"),
                rcpt("d@example.org"),
                rcpt("e@example.org"),
            ],
        );
        o.quarantine = Some(b"held".to_vec());
        let s = script(&o, &options());
        let redirects: Vec<&str> = s.lines().filter(|l| l.starts_with("redirect")).collect();
        assert_eq!(
            redirects,
            [
                "redirect :copy \"a@example.org\";",
                "redirect :copy \"b@example.org\";",
                "redirect :copy \"c@example.org\";",
                "redirect :copy \"d@example.org\";"
            ]
        );
        assert!(s.ends_with("fileinto \"Quarantine\";\n"), "{s}");
        let none = VerdictOptions {
            limits: SieveLimits {
                max_redirects: 0,
                ..SieveLimits::default()
            },
            ..options()
        };
        assert!(!script(&o, &none).contains("redirect"));
    }

    /// A verdict beyond SIEVE_MAX_SCRIPT_SIZE leaves out its header edits, never a decision;
    /// when the decisions alone are too large the message is deferred.
    #[test]
    fn a_verdict_too_large_for_the_engine_keeps_its_decisions() {
        let small = VerdictOptions {
            limits: SieveLimits {
                max_script_size: 4096,
                ..SieveLimits::default()
            },
            ..options()
        };
        let mut o = edited(
            three_headers(),
            (0..10)
                .map(|i| add(&format!("X-Big-{i}"), &[b'v'; 1000]))
                .collect(),
        );
        o.rejected_recipients.push(RecipientReject {
            index: 0,
            address: b"bad@example.org".to_vec(),
            tempfail: false,
            reply: b"550 5.1.1 No".to_vec(),
        });
        o.quarantine = Some(b"spam".to_vec());
        assert!(build(&o, &options()).script.len() > 10_000);
        assert_eq!(
            script(&o, &small),
            "require [\"editheader\", \"envelope\", \"ereject\", \"fileinto\"];\n\
             if envelope :is \"to\" \"bad@example.org\" {\n  ereject \"550 5.1.1 No\";\n  stop;\n}\n\
             addheader \"X-Milter-Quarantine\" \"spam\";\n\
             fileinto \"Quarantine\";\n"
        );
        // Header edits alone, too large: nothing is left, no verdict.
        let only = edited(three_headers(), o.edits.clone());
        assert_eq!(build(&only, &small).kind, VerdictKind::None);
        // Decisions too large: a deferral, not a verdict the engine refuses.
        o.rejected_recipients[0].reply = vec![b'n'; 5000];
        let v = build(&o, &small);
        assert_eq!(v.kind, VerdictKind::Defer);
        assert_eq!(v.reply.as_deref(), Some(TOO_LARGE));
        let mut r = Outcome::new(Disposition::Reject, Stage::Eom);
        r.reply = Some(vec![b'n'; 5000]);
        assert_eq!(build(&r, &small).kind, VerdictKind::Defer);
        r.reply = Some(b"550 5.7.1 short".to_vec());
        assert_eq!(build(&r, &small).kind, VerdictKind::Sieve);
    }

    /// The replay and the deletions are O(n log n): floods at the Milter limits (MAX_EDITS) on
    /// a large header take well under a second (each took minutes when every edit walked the
    /// header). Not timed: a quadratic builder would make this test run for hours.
    #[test]
    fn the_builder_is_not_quadratic() {
        let n = 20_000;
        let headers: Vec<Header> = (0..n)
            .map(|i| h("X-F", format!(" v{}", i % 7).as_bytes()))
            .collect();
        // 10,000 deletions of fields of one name, 10,000 inserts at the top, 10,000 changes far
        // past the last field, 10,000 additions, 10,000 deletions and 10,000 recipients.
        let edits: Vec<Vec<Edit>> = vec![
            (0..10_000).map(|i| chg(2 * i + 1, "X-F", b"")).collect(),
            (0..10_000).map(|i| ins(i, "X-I", b"i")).collect(),
            (0..10_000)
                .map(|_| chg(i32::MAX as u32, "X-C", b"c"))
                .collect(),
            (0..10_000)
                .map(|i| add("X-A", format!("{i}").as_bytes()))
                .collect(),
            (0..10_000)
                .map(|i| Edit::AddRcpt {
                    rcpt: format!("r{i}@example.org").into_bytes(),
                    args: None,
                })
                .collect(),
            (0..10_000)
                .map(|i| Edit::DelRcpt {
                    rcpt: format!("r{i}@example.org").into_bytes(),
                })
                .collect(),
        ];
        for (k, e) in edits.into_iter().enumerate() {
            for opts in [options(), by_position()] {
                let o = edited(headers.clone(), e.clone());
                let v = build(&o, &opts);
                assert_ne!(v.kind, VerdictKind::None, "case {k}");
            }
        }
    }

    // ADDRCPT, QUARANTINE, dialects.

    #[test]
    fn addrcpt_is_redirect_copy() {
        let o = edited(
            three_headers(),
            vec![
                Edit::AddRcpt {
                    rcpt: b"<archive@example.org>".to_vec(),
                    args: None,
                },
                Edit::AddRcpt {
                    rcpt: b"\"odd guy\"@[192.0.2.1]".to_vec(),
                    args: Some(b"NOTIFY=NEVER".to_vec()),
                },
                Edit::AddRcpt {
                    rcpt: b"not an address".to_vec(),
                    args: None,
                },
                Edit::AddRcpt {
                    rcpt: b"<>".to_vec(),
                    args: None,
                },
                Edit::AddRcpt {
                    rcpt: b"archive@example.org".to_vec(),
                    args: None,
                },
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"copy\"];\nredirect :copy \"archive@example.org\";\n\
             redirect :copy \"\\\"odd guy\\\"@[192.0.2.1]\";\n"
        );
    }

    #[test]
    fn addr_spec() {
        for good in [
            &b"a@b"[..],
            b"first.last+tag@example.org",
            b"\"a b\\\"c\"@example.org",
            b"x@[IPv6:2001:db8::1]",
            b"!#$%&'*+-/=?^_`{|}~@example.org",
        ] {
            assert!(is_addr_spec(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"@",
            b"a@",
            b"@b",
            b"a b@c",
            b"a..b@c",
            b".a@c",
            b"a@b..c",
            b"a@b@c",
            b"caf\xc3\xa9@example.org",
            b"\"a\"b\"@c",
            b"a@[]",
            b"a@[x]y]",
        ] {
            assert!(!is_addr_spec(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn quarantine_files_into_the_folder_with_the_reason() {
        let mut o = Outcome::new(Disposition::Accept, Stage::Eom);
        o.quarantine = Some(b"virus \"EICAR\" found".to_vec());
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\", \"fileinto\"];\n\
             addheader \"X-Milter-Quarantine\" \"virus \\\"EICAR\\\" found\";\n\
             fileinto \"Quarantine\";\n"
        );
        o.quarantine = Some(Vec::new());
        let opts = VerdictOptions {
            quarantine_folder: "Junk/Held".to_string(),
            ..options()
        };
        assert_eq!(
            script(&o, &opts),
            "require [\"fileinto\"];\nfileinto \"Junk/Held\";\n"
        );
    }

    #[test]
    fn everything_at_once_in_a_fixed_order() {
        let mut o = edited(
            three_headers(),
            vec![
                Edit::AddRcpt {
                    rcpt: b"<copy@example.org>".to_vec(),
                    args: None,
                },
                chg(1, "Subject", b"[SPAM] hello"),
                ins(0, "X-Top", b"t"),
                add("X-End", b"e"),
            ],
        );
        o.rejected_recipients.push(RecipientReject {
            index: 0,
            address: b"bad@example.org".to_vec(),
            tempfail: false,
            reply: b"550 5.1.1 No".to_vec(),
        });
        o.quarantine = Some(b"spam".to_vec());
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\", \"envelope\", \"ereject\", \"fileinto\", \"copy\"];\n\
             if envelope :is \"to\" \"bad@example.org\" {\n  ereject \"550 5.1.1 No\";\n  stop;\n}\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";\n\
             addheader \"X-Top\" \"t\";\n\
             addheader :last \"Subject\" \"[SPAM] hello\";\n\
             addheader :last \"X-End\" \"e\";\n\
             redirect :copy \"copy@example.org\";\n\
             addheader \"X-Milter-Quarantine\" \"spam\";\n\
             fileinto \"Quarantine\";\n"
        );
    }

    #[test]
    fn legacy_dialect_writes_one_argument_addheader_in_final_order() {
        let mut o = edited(
            three_headers(),
            vec![
                add("X-End", b"e"),
                ins(0, "X-Top1", b"1"),
                ins(0, "X-Top2", b"2"),
                chg(1, "Subject", b"new"),
            ],
        );
        o.quarantine = Some(b"held".to_vec());
        assert_eq!(
            script(&o, &legacy()),
            "require [\"addheader\", \"editheader\", \"fileinto\"];\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";\n\
             addheader \"X-Top2: 2\";\naddheader \"X-Top1: 1\";\n\
             addheader \"Subject: new\";\naddheader \"X-End: e\";\n\
             addheader \"X-Milter-Quarantine: held\";\n\
             fileinto \"Quarantine\";\n"
        );
        let o = edited(three_headers(), vec![add("X-A", b"caf\xe9\r\n folded")]);
        assert_eq!(
            script(&o, &legacy()),
            "require [\"addheader\", \"encoded-character\"];\n\
             addheader \"X-A: caf${hex:E9}\n folded\";\n"
        );
    }

    #[test]
    fn quote_escapes() {
        assert_eq!(quote(b"", false), "\"\"");
        assert_eq!(quote(b"a\"b\\c", false), "\"a\\\"b\\\\c\"");
        assert_eq!(quote(b"a\0b", false), "\"ab\"");
        assert_eq!(quote(b"a\nb\rc\r\nd", false), "\"a\r\nb\r\nc\r\nd\"");
        assert_eq!(quote(b"${hex:41}", false), "\"${hex:41}\"");
        assert_eq!(quote(b"${hex:41}", true), "\"${hex:24}{hex:41}\"");
        assert_eq!(quote(b"\xe9$\xff\"", true), "\"${hex:E9 24 FF}\\\"\"");
        assert_eq!(quote(b"\xe9", false), "\"\u{FFFD}\"");
    }

    // Recipients deleted, body replaced.

    #[test]
    fn delrcpt_discards_for_that_recipient_only() {
        let o = edited(
            three_headers(),
            vec![
                Edit::DelRcpt {
                    rcpt: b"<bob@example.net>".to_vec(),
                },
                Edit::DelRcpt {
                    rcpt: b"bob@example.net".to_vec(),
                },
                Edit::DelRcpt {
                    rcpt: b"not an address".to_vec(),
                },
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"envelope\"];\n\
             if envelope :is \"to\" \"bob@example.net\" {\n  discard;\n  stop;\n}\n"
        );
    }

    #[test]
    fn a_replaced_body_takes_the_edits_that_describe_it_along() {
        let mut headers = three_headers();
        headers.push(h("Content-Type", b" text/plain"));
        let o = edited(
            headers.clone(),
            vec![
                Edit::ReplaceBody,
                chg(1, "Content-Type", b"multipart/mixed; boundary=x"),
                add("Content-Transfer-Encoding", b"7bit"),
                add("MIME-Version", b"1.0"),
                add("X-Spam-Flag", b"YES"),
            ],
        );
        assert_eq!(
            script(&o, &options()),
            "require [\"editheader\"];\naddheader :last \"X-Spam-Flag\" \"YES\";\n"
        );
        // Without a body replacement the same edits stand.
        let o = edited(headers, vec![chg(1, "Content-Type", b"multipart/mixed")]);
        assert!(script(&o, &options()).contains("\"Content-Type\" \"multipart/mixed\""));
        // A replaced body alone is no verdict.
        let o = edited(three_headers(), vec![Edit::ReplaceBody]);
        assert_eq!(build(&o, &options()).kind, VerdictKind::None);
    }

    // The versions before the fast paths, as the reference the fast ones must equal.
    fn header_value_reference(value: &[u8], leadspc: bool, text: bool) -> Vec<u8> {
        let value = if leadspc && value.first() == Some(&b' ') {
            &value[1..]
        } else {
            value
        };
        let decoded;
        let value = if text {
            decoded = decode_encoded_words(value);
            &decoded[..]
        } else {
            value
        };
        let clean: Vec<u8> = value
            .iter()
            .filter(|&&b| b != 0)
            .map(|&b| match b {
                b'\t' | b'\r' | b'\n' => b,
                0x01..=0x1f | 0x7f => b' ',
                _ => b,
            })
            .collect();
        let mut out = Vec::with_capacity(clean.len() + 8);
        let mut i = 0;
        while i < clean.len() {
            if !is_wsp(clean[i]) && !is_break(clean[i]) {
                out.push(clean[i]);
                i += 1;
                continue;
            }
            if !fold_run(&clean, &mut i, &mut out) {
                break;
            }
        }
        trim_end_wsp(&mut out);
        if text && (out.iter().any(|&b| b >= 0x80) || out.windows(2).any(|w| w == b"=?")) {
            // The engine encodes this value (RFC 2047); Pigeonhole encodes each folded line on its
            // own, and the white space of a fold between two encoded-words is lost to readers
            // ("café\r\n café" reads "cafécafé"). Unfolded, it is encoded whole and folded by the
            // engine.
            out = unfold(&out);
        }
        out
    }

    fn quote_reference(bytes: &[u8], encode: bool) -> String {
        let text = crlf_without_nul(bytes);
        let mut s = String::with_capacity(text.len() + 2);
        s.push('"');
        let mut hex: Vec<u8> = Vec::new();
        for chunk in text.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '$' if encode => hex.push(b'$'),
                    '"' | '\\' => {
                        flush_hex(&mut s, &mut hex);
                        s.push('\\');
                        s.push(c);
                    }
                    _ => {
                        flush_hex(&mut s, &mut hex);
                        s.push(c);
                    }
                }
            }
            if encode {
                hex.extend_from_slice(chunk.invalid());
            } else if !chunk.invalid().is_empty() {
                flush_hex(&mut s, &mut hex);
                s.push('\u{FFFD}');
            }
        }
        flush_hex(&mut s, &mut hex);
        s.push('"');
        s
    }

    /// header_value and quote skip work on plain text (no encoded-word, no control byte, no
    /// line end, runs copied at once); on any input they must give what the plain versions give.
    #[test]
    fn fast_paths_equal_the_plain_versions() {
        let mut next = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let alphabet: &[&[u8]] = &[
            b"a",
            b"Z",
            b" ",
            b"\t",
            b"\r",
            b"\n",
            b"\r\n",
            b"\0",
            b"\x01",
            b"\x7f",
            b"$",
            b"\"",
            b"\\",
            b"=?",
            b"?=",
            b"=?utf-8?q?caf=C3=A9?=",
            b"=?UTF-8?B?w6k=?=",
            b"\xc3\xa9",
            b"\xe9",
            b"\xff",
            b"v=1; a=rsa-sha256;",
            b"${hex:41}",
        ];
        let mut cases: Vec<Vec<u8>> = vec![Vec::new(), b" x".to_vec(), b"x \r\n y ".to_vec()];
        for _ in 0..3000 {
            let n = (next() % 24) as usize;
            let mut v = Vec::new();
            for _ in 0..n {
                v.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            cases.push(v);
        }
        for v in &cases {
            for leadspc in [false, true] {
                for text in [false, true] {
                    assert_eq!(
                        header_value(v, leadspc, text),
                        header_value_reference(v, leadspc, text),
                        "{v:?} {leadspc} {text}"
                    );
                }
            }
            for encode in [false, true] {
                assert_eq!(
                    quote(v, encode),
                    quote_reference(v, encode),
                    "{v:?} {encode}"
                );
            }
        }
    }

    #[test]
    fn word_start_found_as_by_windows() {
        for v in [
            &b""[..],
            b"=",
            b"?",
            b"=?",
            b"?=",
            b"a=?b",
            b"??=?",
            b"=a?",
            b"x=",
            b"==??",
        ] {
            assert_eq!(has_word_start(v), v.windows(2).any(|w| w == b"=?"), "{v:?}");
        }
    }
}
