//! What the Milter decided, turned into what the MTA acts on: no verdict, a deferral with its
//! SMTP reply, or a Sieve scriptlet (RFC 5228 with editheader, ereject, envelope, copy,
//! encoded-character, fileinto as needed) that the MTA runs through `spamfilterN_string_action`.

use crate::config::SieveDialect;

/// Where in the conversation a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Negotiate,
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
}

/// The Milter's final word on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Continue at end of message, or nothing decided: deliver.
    Continue,
    /// Accept: deliver, stop filtering.
    Accept,
    /// Reject (`r`, or a 5xx REPLYCODE).
    Reject,
    /// Temporary failure (`t`, or a 4xx REPLYCODE): the MTA defers the message.
    Tempfail,
    /// Discard silently.
    Discard,
}

/// A recipient the Milter refused at RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReject {
    /// The address as the MTA passed it (no angle brackets).
    pub address: Vec<u8>,
    /// true for a temporary (4xx / `t`) refusal.
    pub tempfail: bool,
    /// The SMTP reply: the Milter's REPLYCODE text, or the default for `r` / `t`.
    pub reply: Vec<u8>,
}

/// A modification requested at end of message, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    AddHeader {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    InsHeader {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    ChgHeader {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    AddRcpt {
        rcpt: Vec<u8>,
        args: Option<Vec<u8>>,
    },
}

/// One header field of the original message as the library parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name as written.
    pub name: Vec<u8>,
    /// Everything after the colon up to the end of the field: leading white space kept, folded
    /// lines joined with `\n` (CR removed), no final line end.
    pub value: Vec<u8>,
}

/// Everything the verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub disposition: Disposition,
    /// Where the disposition was decided.
    pub stage: Stage,
    /// The SMTP reply for Reject / Tempfail: the REPLYCODE text exactly, or a default.
    pub reply: Option<Vec<u8>>,
    /// Recipients refused at RCPT (the others went on).
    pub rejected_recipients: Vec<RecipientReject>,
    /// The edits, in the order the Milter sent them.
    pub edits: Vec<Edit>,
    /// The QUARANTINE reason, when the Milter asked for quarantine.
    pub quarantine: Option<Vec<u8>>,
    /// The original header fields, in order (for CONTEXT_EDITS and header positions).
    pub headers: Vec<Header>,
    /// HDR_LEADSPC was negotiated: edit values carry their own leading space.
    pub leadspc: bool,
}

impl Outcome {
    /// A plain outcome with nothing decided.
    pub fn new(disposition: Disposition, stage: Stage) -> Outcome {
        Outcome {
            disposition,
            stage,
            reply: None,
            rejected_recipients: Vec::new(),
            edits: Vec::new(),
            quarantine: None,
            headers: Vec::new(),
            leadspc: false,
        }
    }
}

/// How the verdict is written (from the option file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictOptions {
    pub context_edits: bool,
    pub dialect: SieveDialect,
    pub quarantine_folder: String,
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
    pub kind: VerdictKind,
    /// The Sieve scriptlet (for `VerdictKind::Sieve`).
    pub script: Vec<u8>,
    /// The SMTP reply text for a reject or deferral.
    pub reply: Option<Vec<u8>>,
}

/// Default reply texts, as Postfix uses them.
pub const DEFAULT_REJECT: &[u8] = b"550 5.7.1 Command rejected";
pub const DEFAULT_TEMPFAIL: &[u8] = b"451 4.7.1 Service unavailable - try again later";

/// The header a quarantine verdict adds, carrying the Milter's reason.
pub const QUARANTINE_HEADER: &str = "X-Milter-Quarantine";

/// Builds the verdict for an outcome.
///
/// - tempfail (or a recipient refused temporarily: Sieve cannot defer one recipient, so the
///   message is deferred whole and the Milter sees it again) → `Defer` with the reply;
/// - reject → `ereject` with the reply text exactly; discard → `discard`;
/// - otherwise the recipients refused at RCPT (each guarded by `envelope :is "to"`), the header
///   edits, quarantine and added recipients; nothing at all → no verdict.
pub fn build(outcome: &Outcome, options: &VerdictOptions) -> Verdict {
    let reply = |r: Option<&[u8]>, default: &[u8]| -> Vec<u8> {
        without_nul(r.filter(|r| !r.is_empty()).unwrap_or(default))
    };
    let defer = |text: Vec<u8>| Verdict {
        kind: VerdictKind::Defer,
        script: Vec::new(),
        reply: Some(text),
    };
    let mut actions: Vec<Action> = Vec::new();
    match outcome.disposition {
        Disposition::Tempfail => {
            return defer(reply(outcome.reply.as_deref(), DEFAULT_TEMPFAIL));
        }
        Disposition::Reject => {
            let text = reply(outcome.reply.as_deref(), DEFAULT_REJECT);
            actions.push(Action::Ereject(text.clone()));
            return render(&actions, options, Some(text));
        }
        Disposition::Discard => {
            actions.push(Action::Discard);
            return render(&actions, options, None);
        }
        Disposition::Accept | Disposition::Continue => {}
    }
    if let Some(r) = outcome.rejected_recipients.iter().find(|r| r.tempfail) {
        return defer(reply(Some(&r.reply), DEFAULT_TEMPFAIL));
    }
    for r in &outcome.rejected_recipients {
        actions.push(Action::RejectRecipient {
            address: r.address.clone(),
            reply: reply(Some(&r.reply), DEFAULT_REJECT),
        });
    }
    header_actions(outcome, options, &mut actions);
    for e in &outcome.edits {
        if let Edit::AddRcpt { rcpt, .. } = e {
            let addr = strip_angle(rcpt);
            if !addr.is_empty() {
                actions.push(Action::Redirect(addr.to_vec()));
            }
        }
    }
    if let Some(reason) = &outcome.quarantine {
        if !reason.is_empty() {
            actions.push(Action::AddHeader {
                last: false,
                name: QUARANTINE_HEADER.as_bytes().to_vec(),
                value: reason.clone(),
            });
        }
        actions.push(Action::Fileinto(
            options.quarantine_folder.as_bytes().to_vec(),
        ));
    }
    if actions.is_empty() {
        return Verdict {
            kind: VerdictKind::None,
            script: Vec::new(),
            reply: None,
        };
    }
    render(&actions, options, None)
}

/// One Sieve action, with its strings still as raw bytes.
#[derive(Debug)]
enum Action {
    AddHeader {
        last: bool,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteHeader {
        index: Option<usize>,
        name: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    Ereject(Vec<u8>),
    RejectRecipient {
        address: Vec<u8>,
        reply: Vec<u8>,
    },
    Discard,
    Fileinto(Vec<u8>),
    Redirect(Vec<u8>),
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

/// A header value as Sieve compares it: unfolded, leading and trailing white space removed.
fn comparable(value: &[u8]) -> Vec<u8> {
    let unfolded: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    unfolded.trim_ascii().to_vec()
}

/// An edit's value as the verdict writes it: the leading space that the Milter supplies itself
/// under HDR_LEADSPC dropped (Sieve writes `Name: value`), and every line break a fold (a break
/// not followed by white space gets one, so the field cannot end early).
fn edit_value(value: &[u8], leadspc: bool) -> Vec<u8> {
    let value = if leadspc && value.first() == Some(&b' ') {
        &value[1..]
    } else {
        value
    };
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\r' if value.get(i + 1) == Some(&b'\n') => i += 1,
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                if !matches!(value.get(i + 1), Some(b' ') | Some(b'\t')) {
                    out.push(b' ');
                }
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // A value that ends in a fold would leave an empty last line.
    while out.last().is_some_and(|b| b.is_ascii_whitespace()) {
        out.pop();
    }
    out
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
    value: Vec<u8>,
    origin: Origin,
    deleted: bool,
    changed: bool,
}

fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Replays the header edits on a model of the header, with sendmail's semantics (CHGHEADER's
/// index is 1-based among fields of that name, 0 counts as 1, a deleted field still counts, a
/// change of a field that is not there adds it; INSHEADER's index is 0-based among all fields),
/// then writes the difference between the original and the result as editheader actions.
fn header_actions(outcome: &Outcome, options: &VerdictOptions, actions: &mut Vec<Action>) {
    let mut fields: Vec<Field> = outcome
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| Field {
            name: h.name.clone(),
            value: h.value.clone(),
            origin: Origin::Original(i),
            deleted: false,
            changed: false,
        })
        .collect();
    for e in &outcome.edits {
        let (name, value) = match e {
            Edit::AddHeader { name, value }
            | Edit::InsHeader { name, value, .. }
            | Edit::ChgHeader { name, value, .. } => (name, value),
            Edit::AddRcpt { .. } => continue,
        };
        if !is_field_name(name) {
            log::warn!(
                "header edit of \"{}\" left out: not a valid header field name",
                crate::error::escape(name)
            );
            continue;
        }
        let value = edit_value(value, outcome.leadspc);
        match e {
            Edit::AddHeader { .. } => fields.push(Field {
                name: name.clone(),
                value,
                origin: Origin::Added { top: false },
                deleted: false,
                changed: false,
            }),
            Edit::InsHeader { index, .. } => {
                let pos = (*index as usize).min(fields.len());
                // Sieve adds at the top or at the end only: an insert anywhere before the last
                // field goes to the top, where INSHEADER 0 (the usual case: DKIM-Signature,
                // ARC sets) puts it.
                let top = pos < fields.len();
                fields.insert(
                    pos,
                    Field {
                        name: name.clone(),
                        value,
                        origin: Origin::Added { top },
                        deleted: false,
                        changed: false,
                    },
                );
            }
            Edit::ChgHeader { index, .. } => {
                let want = (*index).max(1) as usize;
                match fields
                    .iter_mut()
                    .filter(|f| same_name(&f.name, name))
                    .nth(want - 1)
                {
                    Some(f) => {
                        f.deleted = value.is_empty();
                        f.value = value;
                        f.changed = true;
                    }
                    None if !value.is_empty() => fields.push(Field {
                        name: name.clone(),
                        value,
                        origin: Origin::Added { top: false },
                        deleted: false,
                        changed: false,
                    }),
                    None => {}
                }
            }
            Edit::AddRcpt { .. } => {}
        }
    }

    // Deletions first, against the header as it came, last field first so that a position
    // (`:index`) still means what it meant in the original.
    let originals = &outcome.headers;
    for f in fields.iter().rev() {
        let Origin::Original(i) = f.origin else {
            continue;
        };
        if !f.changed {
            continue;
        }
        let h = &originals[i];
        let occurrence = originals[..=i]
            .iter()
            .filter(|o| same_name(&o.name, &h.name))
            .count();
        if !is_field_name(&h.name) {
            continue;
        }
        if options.context_edits {
            let wanted = comparable(&h.value);
            // Another field of that name and value that stays: the value alone would delete it
            // too, so the position narrows it down.
            let ambiguous = fields.iter().any(|g| match g.origin {
                Origin::Original(j) => {
                    j != i
                        && !g.changed
                        && same_name(&originals[j].name, &h.name)
                        && comparable(&originals[j].value) == wanted
                }
                Origin::Added { .. } => false,
            });
            actions.push(Action::DeleteHeader {
                index: ambiguous.then_some(occurrence),
                name: h.name.clone(),
                value: Some(wanted),
            });
        } else {
            actions.push(Action::DeleteHeader {
                index: Some(occurrence),
                name: h.name.clone(),
                value: None,
            });
        }
    }
    // Fields added at the top: the last one first, so that they end up in the Milter's order.
    for f in fields.iter().rev() {
        if f.origin == (Origin::Added { top: true }) && !f.deleted {
            actions.push(Action::AddHeader {
                last: false,
                name: f.name.clone(),
                value: f.value.clone(),
            });
        }
    }
    // Changed fields and fields added at the end, in order.
    for f in &fields {
        let add = match f.origin {
            Origin::Original(_) => f.changed && !f.deleted,
            Origin::Added { top } => !top && !f.deleted,
        };
        if add {
            actions.push(Action::AddHeader {
                last: true,
                name: f.name.clone(),
                value: f.value.clone(),
            });
        }
    }
}

/// Writes the actions as one Sieve scriptlet with exactly the `require` it needs.
fn render(actions: &[Action], options: &VerdictOptions, reply: Option<Vec<u8>>) -> Verdict {
    let legacy = options.dialect == SieveDialect::Legacy;
    // encoded-character is needed when any string holds bytes that are not UTF-8 text.
    let needs_encoding = |b: &[u8]| std::str::from_utf8(b).is_err() || b.contains(&0);
    let encode = actions.iter().any(|a| match a {
        Action::AddHeader { name, value, .. } => needs_encoding(name) || needs_encoding(value),
        Action::DeleteHeader { name, value, .. } => {
            needs_encoding(name) || value.as_deref().is_some_and(needs_encoding)
        }
        Action::Ereject(t) | Action::Fileinto(t) | Action::Redirect(t) => needs_encoding(t),
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
                    body.push_str(&format!("addheader {};\n", q(&line)));
                } else {
                    need("editheader");
                    body.push_str(&format!(
                        "addheader {}{} {};\n",
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
                if value.is_some() {
                    s.push_str(":is ");
                }
                s.push_str(&q(name));
                if let Some(v) = value {
                    s.push(' ');
                    s.push_str(&q(v));
                }
                s.push_str(";\n");
                body.push_str(&s);
            }
            Action::Ereject(text) => {
                need("ereject");
                body.push_str(&format!("ereject {};\n", q(text)));
            }
            Action::RejectRecipient { address, reply } => {
                need("envelope");
                need("ereject");
                body.push_str(&format!(
                    "if envelope :is \"to\" {} {{\n  ereject {};\n}}\n",
                    q(address),
                    q(reply)
                ));
            }
            Action::Discard => body.push_str("discard;\n"),
            Action::Fileinto(folder) => {
                need("fileinto");
                body.push_str(&format!("fileinto {};\n", q(folder)));
            }
            Action::Redirect(addr) => {
                need("copy");
                body.push_str(&format!("redirect :copy {};\n", q(addr)));
            }
        }
    }
    if encode {
        need("encoded-character");
    }
    let mut script = String::new();
    if !require.is_empty() {
        // A fixed order, so that equal outcomes give equal verdicts.
        const ORDER: [&str; 8] = [
            "addheader",
            "editheader",
            "envelope",
            "ereject",
            "fileinto",
            "copy",
            "encoded-character",
            "",
        ];
        require.sort_by_key(|r| ORDER.iter().position(|o| o == r));
        let list: Vec<String> = require.iter().map(|r| format!("\"{r}\"")).collect();
        script.push_str(&format!("require [{}];\n", list.join(", ")));
    }
    script.push_str(&body);
    Verdict {
        kind: VerdictKind::Sieve,
        script: script.into_bytes(),
        reply,
    }
}

/// A Sieve quoted string (RFC 5228 §2.4.2): `"` and `\` escaped; with `encode` (the script
/// requires encoded-character) bytes that are not UTF-8 text, and NUL, written as `${hex:..}`,
/// and a literal `${` written so that it is not read as an encoding.
pub fn quote(bytes: &[u8], encode: bool) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    let mut hex: Vec<u8> = Vec::new();
    let flush_hex = |s: &mut String, hex: &mut Vec<u8>| {
        if !hex.is_empty() {
            let parts: Vec<String> = hex.iter().map(|b| format!("{b:02X}")).collect();
            s.push_str(&format!("${{hex:{}}}", parts.join(" ")));
            hex.clear();
        }
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\0' if encode => hex.push(0),
                '\0' => {}
                '"' | '\\' => {
                    flush_hex(&mut s, &mut hex);
                    s.push('\\');
                    s.push(c);
                }
                '$' if encode => {
                    hex.push(b'$');
                }
                _ => {
                    flush_hex(&mut s, &mut hex);
                    s.push(c);
                }
            }
        }
        if encode {
            hex.extend_from_slice(chunk.invalid());
        } else {
            // Unreachable when the caller checked; never emit invalid UTF-8 all the same.
            for _ in chunk.invalid() {
                s.push('\u{FFFD}');
            }
        }
    }
    flush_hex(&mut s, &mut hex);
    s.push('"');
    s
}
