//! The fuzz checks, shared by the cargo-fuzz targets (fuzz_targets/*.rs) and by the corpus
//! regression test in tests/faults.rs, which replays every committed input on `cargo test`.
//! Each function takes raw fuzzer bytes and panics when an invariant breaks. No dependency
//! beyond the library, so that the main test build can include this file as it is.

#![allow(dead_code)]

use milter_spamfilter::config::SieveDialect;
use milter_spamfilter::protocol::{
    decode_len, decode_optneg, decode_reply, validate_replycode, Reply, MAX_REPLY_LEN,
};
use milter_spamfilter::verdict::{
    build, Disposition, Edit, Header, Outcome, RecipientReject, Stage, Verdict, VerdictKind,
    VerdictOptions,
};
use milter_spamfilter::Config;

/// The reply decoder: the first byte is the reply command, the rest its data, exactly as the
/// session hands them over after reading one packet.
pub fn check_decode_reply(data: &[u8]) {
    let Some((&cmd, rest)) = data.split_first() else {
        return;
    };
    if rest.len() >= MAX_REPLY_LEN {
        // The session never reads a longer packet.
        return;
    }
    if let Ok(Reply::ReplyCode(text)) = decode_reply(cmd, rest) {
        // What the decoder lets through must be what the validator accepts.
        assert!(!text.contains(&0), "REPLYCODE text with a NUL accepted");
        assert!(
            validate_replycode(&text).is_ok(),
            "decode_reply accepted a REPLYCODE that validate_replycode refuses"
        );
    }
    // The validator on its own, on anything.
    let _ = validate_replycode(rest);
}

/// The negotiation parser (OPTNEG reply body with optional per-stage macro lists), and the
/// length prefix decoder on the first four bytes.
pub fn check_decode_optneg(data: &[u8]) {
    if let Ok(neg) = decode_optneg(data) {
        let names: usize = neg
            .macros
            .iter()
            .flatten()
            .flat_map(|list| list.iter())
            .map(|n| n.len())
            .sum();
        assert!(names <= data.len(), "macro names longer than the packet");
        for name in neg.macros.iter().flatten().flatten() {
            assert!(!name.is_empty(), "an empty macro name");
            assert!(!name.contains(&0), "a macro name with a NUL");
        }
    }
    if data.len() >= 4 {
        let prefix = [data[0], data[1], data[2], data[3]];
        if let Ok(len) = decode_len(prefix) {
            assert!(
                (1..=MAX_REPLY_LEN).contains(&len),
                "decode_len passed {len}"
            );
        }
    }
}

/// The option-file parser on arbitrary bytes.
pub fn check_config_parse(data: &[u8]) {
    if let Ok(c) = Config::parse("fuzz.opt", data) {
        // What it accepts must be usable as it stands.
        assert!(!c.host.is_empty(), "accepted an empty HOST");
        assert!(c.port != 0, "accepted PORT 0");
        assert!(!c.timeout.is_zero(), "accepted a zero TIMEOUT");
    }
}

/// Fuzzer bytes read as a sequence of choices; past the end everything reads as zero, so that
/// every input makes some outcome.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = (self.below(41) as usize).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b.to_vec()
    }
}

/// Any outcome a Milter could cause: any disposition at any stage, any bytes in replies, edits,
/// header names and values, recipients and quarantine reasons.
fn outcome(i: &mut Input) -> (Outcome, VerdictOptions) {
    const DISPOSITIONS: [Disposition; 5] = [
        Disposition::Continue,
        Disposition::Accept,
        Disposition::Reject,
        Disposition::Tempfail,
        Disposition::Discard,
    ];
    const STAGES: [Stage; 10] = [
        Stage::Negotiate,
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::Eoh,
        Stage::Body,
        Stage::Eom,
    ];
    let d = DISPOSITIONS[i.below(5) as usize];
    let s = STAGES[i.below(10) as usize];
    let mut o = Outcome::new(d, s);
    if i.flag() {
        o.reply = Some(i.bytes());
    }
    for index in 0..i.below(4) as usize {
        o.rejected_recipients.push(RecipientReject {
            index,
            address: i.bytes(),
            tempfail: i.flag(),
            reply: i.bytes(),
        });
    }
    for _ in 0..i.below(7) {
        let edit = match i.below(6) {
            0 => Edit::AddHeader {
                name: i.bytes(),
                value: i.bytes(),
            },
            1 => Edit::InsHeader {
                index: i.u32(),
                name: i.bytes(),
                value: i.bytes(),
            },
            2 => Edit::ChgHeader {
                index: i.u32(),
                name: i.bytes(),
                value: i.bytes(),
            },
            3 => Edit::AddRcpt {
                rcpt: i.bytes(),
                args: if i.flag() { Some(i.bytes()) } else { None },
            },
            4 => Edit::DelRcpt { rcpt: i.bytes() },
            _ => Edit::ReplaceBody,
        };
        o.edits.push(edit);
    }
    if i.flag() {
        o.quarantine = Some(i.bytes());
    }
    for _ in 0..i.below(6) {
        o.headers.push(Header {
            name: i.bytes(),
            value: i.bytes(),
        });
    }
    o.leadspc = i.flag();
    let options = VerdictOptions {
        context_edits: i.flag(),
        dialect: if i.flag() {
            SieveDialect::Rfc5293
        } else {
            SieveDialect::Legacy
        },
        quarantine_folder: String::from_utf8_lossy(&i.bytes()).into_owned(),
        limits: Default::default(),
    };
    (o, options)
}

/// The verdict builder with an arbitrary outcome.
pub fn check_verdict_build(data: &[u8]) {
    let (o, options) = outcome(&mut Input(data));
    check_verdict(&build(&o, &options), &o);
}

/// What every verdict `v` made of outcome `o` must be, whatever the Milter did (also checked on
/// the verdicts of whole conversations, fuzz/conversation.rs).
pub fn check_verdict(v: &Verdict, o: &Outcome) {
    // The verdict travels as a C string and is run as Sieve, which is UTF-8 text: whatever bytes
    // the Milter sent must have been encoded.
    assert!(!v.script.contains(&0), "a NUL in the Sieve script");
    assert!(
        std::str::from_utf8(&v.script).is_ok(),
        "the Sieve script is not UTF-8"
    );
    if let Some(r) = &v.reply {
        assert!(!r.contains(&0), "a NUL in the reply");
    }
    // Every recipient refused at RCPT keeps its own outcome, with a reply of its kind.
    assert_eq!(v.recipients.len(), o.rejected_recipients.len());
    for (got, refused) in v.recipients.iter().zip(&o.rejected_recipients) {
        assert_eq!(got.tempfail, refused.tempfail);
        assert!(!got.reply.is_empty() && !got.reply.contains(&0), "{got:?}");
    }
    match v.kind {
        VerdictKind::Sieve => assert!(!v.script.is_empty(), "a Sieve verdict with no script"),
        VerdictKind::None | VerdictKind::Defer => {
            assert!(v.script.is_empty(), "a script on a {:?} verdict", v.kind)
        }
    }
}
