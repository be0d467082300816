//! What the Milter decided about one message, in structured form: where (`Stage`), what
//! (`Disposition`), the edits it asked for at end of message (`Edit`), and the recipients it
//! refused at RCPT, each with an outcome of its own (`RecipientReject`). The session fills an
//! `Outcome`; `verdict.rs` turns it into what the MTA acts on.

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

/// A recipient the Milter refused at RCPT. The refusal is that recipient's own outcome,
/// whatever the Milter decides about the message later (sendmail's and Postfix's semantics: the
/// recipient got its RCPT reply and never entered the transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReject {
    /// Its position among the envelope's recipients (0-based), as the MTA passed them.
    pub index: usize,
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
    /// DELRCPT: the message is not delivered to this recipient.
    DelRcpt {
        rcpt: Vec<u8>,
    },
    /// REPLBODY: the Milter replaced the body. No verdict can carry a new body, so only the
    /// fact is kept: the header edits that describe the new body are left out with it.
    ReplaceBody,
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

/// Default reply texts, as Postfix uses them.
pub const DEFAULT_REJECT: &[u8] = b"550 5.7.1 Command rejected";
pub const DEFAULT_TEMPFAIL: &[u8] = b"451 4.7.1 Service unavailable - try again later";
