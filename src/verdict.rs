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

/// Builds the verdict for an outcome.
pub fn build(outcome: &Outcome, options: &VerdictOptions) -> Verdict {
    let _ = (outcome, options);
    todo!()
}
