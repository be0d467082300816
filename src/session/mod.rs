//! One Milter conversation for one message, as Postfix's milter8.c runs it: negotiate, then one
//! event per SMTP stage (its macros, the command unless the Milter asked not to get it, and the
//! reply unless it asked not to answer), the header fields and body as they are pushed, the edits
//! at end of message, QUIT. Packets that need no reply are held and written together with the
//! next one that does, so a conversation costs the fewest round trips the negotiation allows.
//! Any protocol error ends the conversation at once: replies may already be in flight.
//!
//! `Conversation` has one method per stage (`connect`, `mail`, `rcpt`, `end_of_recipients`,
//! `header`, `end_of_header`, `body`, `end_of_message`), each advancing the conversation as far
//! as its data allows. Its rooms: `wire.rs` (framing, buffers, packet reads), `deadline.rs`
//! (TIMEOUT and MESSAGE_TIMEOUT), `negotiate.rs` (OPTNEG and its cache), `macros.rs`,
//! `limits.rs` (what a Milter may send).
//!
//! While the Milter answers OPTNEG, the message is already encoded on the negotiation this thread
//! had with the same Milter last; the answer is read before anything else is written and must be
//! the same, byte for byte, or the message so far is encoded again on what it says
//! (`Step::Renegotiated`, `redo`): from the envelope and the header fields, which the caller
//! keeps. The answer is always read before the first body byte is taken, so the body, which
//! nobody keeps, never needs encoding again.

mod deadline;
mod limits;
mod macros;
mod negotiate;
mod wire;

pub use crate::content::MAX_HEADER_SECTION;
pub use macros::DEFAULT_MACROS;
pub use negotiate::{offered_actions, offered_protocol, OFFERED_ACTIONS};
pub(crate) use wire::peek;
pub use wire::Timeouts;

use crate::config::{Config, MilterLimits};
use crate::content::{Body, BodyCrlf, ContentReader, HeaderSection, Pushes};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Content, Envelope};
use crate::net::SocketTimeouts;
use crate::outcome::{
    Disposition, Edit, Outcome, RecipientReject, Stage, DEFAULT_REJECT, DEFAULT_TEMPFAIL,
};
use crate::protocol::consts::*;
use crate::protocol::{self, ConnectAddr, Negotiation, Reply, MAX_DATA_LEN};
use deadline::Clock;
use log::warn;
use macros::{ClientText, MacroValues};
use negotiate::{Settled, EDIT_ACTIONS};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use wire::{Splice, Wire, MAX_SPLICED, WRITE_HIGH_WATER};

/// How a stage's packets went: the renegotiation signal is this value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Encoded and, where a reply was due, answered.
    Done,
    /// The reply to OPTNEG differed from the negotiation assumed: everything encoded is void,
    /// and the message so far must be encoded again (`Conversation::redo`).
    Renegotiated,
}

/// What a command's reply means for the conversation.
enum Answer {
    /// Go on (CONTINUE, or no reply expected).
    Continue,
    /// SKIP: send no more of this kind of event.
    Skip,
    /// A final decision.
    Final(Disposition, Option<Vec<u8>>),
    /// The negotiation changed under what was encoded (`Step::Renegotiated`).
    Renegotiated,
}

/// The stages of a message that have been run, in order: what `redo` encodes again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    pub connect: bool,
    pub mail: bool,
    pub rcpts: usize,
    pub data: bool,
    pub headers: usize,
    pub eoh: bool,
}

/// What the message's caller holds of it: the envelope, the header fields, and how far the
/// conversation has gone with them.
pub struct Pushed<'p> {
    pub env: &'p Envelope,
    pub fields: &'p HeaderSection,
    pub done: Done,
}

/// What the conversation holds of one message: cleared when it is encoded again.
struct MessageState {
    /// Edits, quarantine at end of message.
    edits: Vec<Edit>,
    /// REPLBODY came (kept once among the edits).
    body_replaced: bool,
    /// What the Milter has sent for the verdict, against MAX_EDITS and the other limits.
    budget: limits::Budget,
    quarantine: Option<Vec<u8>>,
    /// Recipients refused at RCPT.
    rejected: Vec<RecipientReject>,
    /// SKIP came for these events.
    skip_rcpt: bool,
    skip_headers: bool,
    skip_body: bool,
    /// The body's line-end conversion, and where the open BODY packet starts in `out`.
    body: BodyCrlf,
    open: Option<usize>,
    /// The Milter's final word, once given.
    decided: Option<Outcome>,
}

impl MessageState {
    fn new(limits: MilterLimits) -> MessageState {
        MessageState {
            edits: Vec::new(),
            body_replaced: false,
            budget: limits::Budget::new(limits),
            quarantine: None,
            rejected: Vec::new(),
            skip_rcpt: false,
            skip_headers: false,
            skip_body: false,
            body: BodyCrlf::default(),
            open: None,
            decided: None,
        }
    }
}

/// How a conversation on a kept connection starts.
#[derive(Debug, Clone)]
pub struct Resume {
    /// What was negotiated on the connection.
    pub negotiation: Negotiation,
    /// The Milter answers OPTNEG after QUIT_NC (`crate::resume`): the conversation starts with
    /// QUIT_NC and OPTNEG and reads up to the OPTNEG reply before anything of the message is
    /// sent. Otherwise (libmilter) QUIT_NC goes out with the message's first packets.
    pub prove: bool,
}

/// A conversation that ended, and its connection.
pub struct Finished<S> {
    pub stream: S,
    pub negotiation: Negotiation,
    /// The connection was left open for the next message (no QUIT sent): see `finish`.
    pub reusable: bool,
    /// The timeouts left set on the stream, for its next conversation.
    pub timeouts: SocketTimeouts,
    /// The transcript, when one was kept.
    pub transcript: Vec<String>,
}

impl Finished<()> {
    /// The ended conversation with its stream.
    #[inline(always)]
    fn with<S>(self, stream: S) -> Finished<S> {
        Finished {
            stream,
            negotiation: self.negotiation,
            reusable: self.reusable,
            timeouts: self.timeouts,
            transcript: self.transcript,
        }
    }
}

/// One message's conversation on one connection.
pub struct Conversation<'m, S: Timeouts> {
    wire: Wire<'m, S>,
    neg: Negotiation,
    /// The protocol version offered in OPTNEG.
    offered_version: u32,
    /// The message is being encoded on the negotiation this thread last had with this Milter,
    /// whose OPTNEG reply this is, while the Milter works on its reply: the reply is read
    /// before anything else is written or read (`settle`), and must be the same, byte for byte.
    assumed: Option<Arc<[u8]>>,
    /// On a kept connection.
    kept: bool,
    limits: MilterLimits,
    /// Where this message's packets start in `out` (after a QUIT_NC that is still queued).
    message_start: usize,
    text: ClientText,
    msg: MessageState,
}

impl<'m, S: Timeouts> Conversation<'m, S> {
    /// A conversation on a connected stream; `start` begins it. `traced`: keep a transcript.
    pub fn new(
        config: &Config,
        stream: S,
        peer: Arc<str>,
        timeouts: SocketTimeouts,
        deadline: Instant,
        traced: bool,
    ) -> Conversation<'m, S> {
        let clock = Clock::new(config.timeout, deadline, timeouts);
        Conversation {
            wire: Wire::new(stream, peer, clock, config.debug, traced),
            neg: Negotiation::default(),
            offered_version: config.milter_protocol,
            assumed: None,
            kept: false,
            limits: config.milter_limits,
            message_start: 0,
            text: ClientText::none(),
            msg: MessageState::new(config.milter_limits),
        }
    }

    /// OPTNEG on a new connection; QUIT_NC (and the proof of step, where the Milter gives it)
    /// on a kept one (`resume`).
    pub fn start(&mut self, resume: Option<Resume>) -> Result<()> {
        let c = self;
        c.kept = resume.is_some();
        match resume {
            Some(r) => {
                // The Milter waits in its end-of-message state: QUIT_NC closes that
                // connection's context and the next command is CONNECT. Neither needs a reply
                // of its own, so both go in the first write of this message.
                c.wire.queue(SMFIC_QUIT_NC, &[]);
                if r.prove {
                    c.send_optneg()?;
                    c.prove_in_step()?;
                } else {
                    c.apply(r.negotiation);
                }
                c.wire.note_answered = true;
            }
            None => c.negotiate()?,
        }
        c.message_start = c.wire.bufs.out.len();
        Ok(())
    }

    /// CONNECT, and HELO when the client gave one.
    pub fn connect(&mut self, m: &Pushed<'_>) -> Result<()> {
        self.stage(m, |c| c.try_connect(m.env))
    }

    pub fn mail(&mut self, m: &Pushed<'_>) -> Result<()> {
        self.stage(m, |c| c.try_mail(m.env))
    }

    /// RCPT for recipient `index` of the envelope.
    pub fn rcpt(&mut self, m: &Pushed<'_>, index: usize) -> Result<()> {
        self.stage(m, |c| c.try_rcpt(m.env, index))
    }

    /// DATA, unless every recipient was refused.
    pub fn end_of_recipients(&mut self, m: &Pushed<'_>) -> Result<()> {
        self.stage(m, |c| c.try_data(m.env))
    }

    /// HEADER for field `index` of the header fields.
    pub fn header(&mut self, m: &Pushed<'_>, index: usize) -> Result<()> {
        self.stage(m, |c| c.try_header(m.fields, index))
    }

    pub fn end_of_header(&mut self, m: &Pushed<'_>) -> Result<()> {
        self.stage(m, |c| c.try_eoh(m.env))
    }

    /// Body bytes, into BODY packets of at most 65535 bytes with CRLF line ends.
    pub fn body(&mut self, m: &Pushed<'_>, mut body: Body<'_, 'm, '_>) -> Result<()> {
        self.stage(m, |c| c.try_body(&mut body))
    }

    /// End of message: the edits and the final disposition, taken with `take_decided`.
    pub fn end_of_message(&mut self, m: &Pushed<'_>) -> Result<()> {
        self.stage(m, |c| c.try_eom(m))
    }

    /// The Milter has given its final word (read it with `take_decided`).
    pub fn decided(&self) -> bool {
        self.msg.decided.is_some()
    }

    pub fn take_decided(&mut self) -> Option<Outcome> {
        self.msg.decided.take()
    }

    /// On a kept connection, and no reply of this message has arrived yet: a failure now left
    /// nothing of the message answered, and it may be sent again on a new connection.
    pub fn unanswered_on_kept(&self) -> bool {
        self.kept && !self.wire.answered
    }

    /// The transcript so far, taken.
    pub fn take_transcript(&mut self) -> Vec<String> {
        self.wire.transcript.take().unwrap_or_default()
    }

    pub fn negotiation(&self) -> &Negotiation {
        &self.neg
    }

    pub fn peer(&self) -> &Arc<str> {
        &self.wire.peer
    }

    /// Stops the message's clock between pushes (`deadline.rs`).
    pub fn pause_clock(&mut self) {
        self.wire.clock.pause();
    }

    pub fn resume_clock(&mut self) {
        self.wire.clock.resume();
    }

    /// An error of the caller's (a bad message) while the message went ahead on an assumed
    /// negotiation: the reply to OPTNEG still decides, as it would have had it been read first.
    pub fn settle_before(&mut self, e: Error) -> Error {
        match self.settle() {
            Ok(_) => e,
            Err(e) => e,
        }
    }

    /// Ends the conversation after `outcome`. The connection is left open for the next message
    /// (`keep`, and no QUIT) only when the message went all the way to end of message and ended
    /// with CONTINUE there, and the Milter speaks version 6 and takes CONNECT. QUIT_NC is legal
    /// only in libmilter's end-of-message state, which a CONTINUE at end of message leaves it
    /// in; any other final reply drops it back to its HELO state, where QUIT_NC and the next
    /// CONNECT would be ignored, unanswered. A Milter that asked for no CONNECT sets up its
    /// per-connection state at negotiation, and QUIT_NC has it tear that down (pymilter, and
    /// libmilter filters that allocate in xxfi_negotiate): such a connection is never reused.
    pub fn finish(mut self, outcome: &Outcome, keep: bool) -> Finished<S> {
        let f = self.finishing(outcome, keep);
        f.with(self.wire.stream)
    }

    /// `finish` for a conversation in a box (the push API's): only the stream moves out of
    /// it, not the whole conversation (960 bytes) first.
    #[allow(clippy::boxed_local)] // the box is the point: `*self` would be the move
    pub fn finish_boxed(mut self: Box<Self>, outcome: &Outcome, keep: bool) -> Finished<S> {
        let f = self.finishing(outcome, keep);
        f.with(self.wire.stream)
    }

    /// What `finish` does before the stream is moved out.
    #[inline(always)] // each front has its own copy: one function entered, not two
    fn finishing(&mut self, outcome: &Outcome, keep: bool) -> Finished<()> {
        let reusable = keep
            && outcome.stage == Stage::Eom
            && outcome.disposition == Disposition::Continue
            && self.neg.version >= 6
            && !self.has(SMFIP_NOCONNECT);
        if !reusable {
            // QUIT needs no reply; a failure to write it changes nothing for this message.
            self.wire.queue(SMFIC_QUIT, &[]);
            let _ = self.wire.write_out();
        }
        Finished {
            transcript: self.wire.transcript.take().unwrap_or_default(),
            negotiation: std::mem::take(&mut self.neg),
            reusable,
            timeouts: self.wire.clock.timeouts,
            stream: (),
        }
    }

    /// Ends a conversation its caller gave up on before end of message: ABORT once MAIL went
    /// out (the Milter then forgets the message), and QUIT. What was queued is not sent.
    pub fn abort(mut self, mail_sent: bool) -> S {
        self.wire.discard();
        if mail_sent {
            self.wire.queue(SMFIC_ABORT, &[]);
        }
        self.wire.queue(SMFIC_QUIT, &[]);
        wire::last_words(&mut self.wire.stream, &self.wire.bufs.out);
        self.wire.stream
    }

    /// Runs one stage, encoding the message so far again when the negotiation changed under it.
    fn stage(
        &mut self,
        m: &Pushed<'_>,
        mut f: impl FnMut(&mut Self) -> Result<Step>,
    ) -> Result<()> {
        loop {
            match f(self)? {
                Step::Done => return Ok(()),
                Step::Renegotiated => self.redo(m)?,
            }
        }
    }

    /// Encodes (and runs) again every stage the message has been through: after a changed
    /// negotiation, or on a new connection that replaces a kept one that failed.
    pub fn redo(&mut self, m: &Pushed<'_>) -> Result<()> {
        loop {
            self.wire.bufs.out.truncate(self.message_start);
            self.wire.bufs.spliced.clear();
            self.msg = MessageState::new(self.limits);
            if self.replay(m)? == Step::Done {
                return Ok(());
            }
        }
    }

    fn replay(&mut self, m: &Pushed<'_>) -> Result<Step> {
        // Each stage again, stopping where the negotiation changes under it.
        macro_rules! again {
            ($step:expr) => {
                if $step? == Step::Renegotiated {
                    return Ok(Step::Renegotiated);
                }
            };
        }
        let d = m.done;
        if d.connect {
            again!(self.try_connect(m.env));
        }
        if d.mail {
            again!(self.try_mail(m.env));
        }
        for i in 0..d.rcpts {
            again!(self.try_rcpt(m.env, i));
        }
        if d.data {
            again!(self.try_data(m.env));
        }
        for i in 0..d.headers {
            again!(self.try_header(m.fields, i));
        }
        if d.eoh {
            again!(self.try_eoh(m.env));
        }
        Ok(Step::Done)
    }

    fn has(&self, bit: u32) -> bool {
        self.neg.protocol & bit != 0
    }

    /// The Milter's final word before end of message: the conversation ends here.
    fn decide(&mut self, o: Outcome) -> Result<Step> {
        self.msg.decided = Some(o);
        Ok(Step::Done)
    }

    /// Queues the macros of `stage`, with `rcpt` as the recipient of the RCPT stage.
    fn macros(&mut self, stage: usize, env: &Envelope, rcpt: Option<&[u8]>) {
        let mut values = MacroValues::new(env, &self.text);
        if let Some(r) = rcpt {
            values.set_rcpt(r);
        }
        if let Some(start) = macros::queue(&mut self.wire.bufs.out, &self.neg, stage, &values) {
            self.wire.trace_out(start);
        }
    }

    #[inline(always)] // its stage's runner enters it (and `replay`, seldom): one function, not two
    fn try_connect(&mut self, env: &Envelope) -> Result<Step> {
        self.text = ClientText::of(env);
        self.macros(SMFIM_CONNECT, env, None);
        if !self.has(SMFIP_NOCONNECT) {
            let mut bracketed = [0u8; 50];
            let name = env.client_name.as_deref().filter(|n| !n.is_empty());
            let hostname: &[u8] = match (name, &self.text.addr) {
                (Some(name), _) => name,
                (None, Some(text)) => {
                    let a = text.as_bytes();
                    bracketed[0] = b'[';
                    bracketed[1..1 + a.len()].copy_from_slice(a);
                    bracketed[1 + a.len()] = b']';
                    &bracketed[..a.len() + 2]
                }
                (None, None) => b"localhost",
            };
            let start = self.wire.bufs.out.len();
            protocol::encode_connect(&mut self.wire.bufs.out, hostname, &connect_addr(env));
            self.wire.trace_out(start);
        }
        let expect = !self.has(SMFIP_NOCONNECT) && !self.has(SMFIP_NR_CONN);
        match self.answer(Stage::Connect, expect)? {
            Answer::Renegotiated => return Ok(Step::Renegotiated),
            Answer::Final(d, reply) => return self.connection_level(d, reply, Stage::Connect),
            Answer::Continue | Answer::Skip => {}
        }
        let Some(helo) = &env.helo else {
            return Ok(Step::Done);
        };
        self.macros(SMFIM_HELO, env, None);
        if !self.has(SMFIP_NOHELO) {
            let start = self.wire.bufs.out.len();
            protocol::encode_strings(&mut self.wire.bufs.out, SMFIC_HELO, &[helo]);
            self.wire.trace_out(start);
        }
        let expect = !self.has(SMFIP_NOHELO) && !self.has(SMFIP_NR_HELO);
        match self.answer(Stage::Helo, expect)? {
            Answer::Renegotiated => Ok(Step::Renegotiated),
            Answer::Final(d, reply) => self.connection_level(d, reply, Stage::Helo),
            Answer::Continue | Answer::Skip => Ok(Step::Done),
        }
    }

    #[inline(always)] // its stage's runner enters it (and `replay`, seldom): one function, not two
    fn try_mail(&mut self, env: &Envelope) -> Result<Step> {
        if self.decided() {
            return Ok(Step::Done);
        }
        self.macros(SMFIM_ENVFROM, env, None);
        if !self.has(SMFIP_NOMAIL) {
            let start = self.wire.bufs.out.len();
            protocol::encode_address_command(
                &mut self.wire.bufs.out,
                SMFIC_MAIL,
                &env.sender,
                &env.mail_args,
            );
            self.wire.trace_out(start);
        }
        let expect = !self.has(SMFIP_NOMAIL) && !self.has(SMFIP_NR_MAIL);
        match self.answer(Stage::Mail, expect)? {
            Answer::Renegotiated => Ok(Step::Renegotiated),
            Answer::Final(d, reply) => self.final_outcome(d, reply, Stage::Mail),
            Answer::Continue | Answer::Skip => Ok(Step::Done),
        }
    }

    /// A reject or tempfail refuses that recipient only, and stays its outcome whatever comes
    /// later (the verdict keeps it apart from the message's).
    #[inline(always)] // its stage's runner enters it (and `replay`, seldom): one function, not two
    fn try_rcpt(&mut self, env: &Envelope, index: usize) -> Result<Step> {
        if self.decided() || self.msg.skip_rcpt {
            return Ok(Step::Done);
        }
        let Some(rcpt) = env.recipients.get(index) else {
            return Err(Error::message(format!("no recipient {index} to send")));
        };
        self.macros(SMFIM_ENVRCPT, env, Some(&rcpt.address));
        if !self.has(SMFIP_NORCPT) {
            let start = self.wire.bufs.out.len();
            protocol::encode_address_command(
                &mut self.wire.bufs.out,
                SMFIC_RCPT,
                &rcpt.address,
                &rcpt.esmtp_args,
            );
            self.wire.trace_out(start);
        }
        let expect = !self.has(SMFIP_NORCPT) && !self.has(SMFIP_NR_RCPT);
        let (tempfail, reply) = match self.answer(Stage::Rcpt, expect)? {
            Answer::Renegotiated => return Ok(Step::Renegotiated),
            Answer::Continue => return Ok(Step::Done),
            Answer::Skip => {
                self.msg.skip_rcpt = true;
                return Ok(Step::Done);
            }
            Answer::Final(Disposition::Reject, reply) => {
                (false, reply.unwrap_or_else(|| DEFAULT_REJECT.to_vec()))
            }
            Answer::Final(Disposition::Tempfail, reply) => {
                (true, reply.unwrap_or_else(|| DEFAULT_TEMPFAIL.to_vec()))
            }
            Answer::Final(d, reply) => return self.final_outcome(d, reply, Stage::Rcpt),
        };
        self.msg.rejected.push(RecipientReject {
            index,
            address: rcpt.address.clone(),
            tempfail,
            reply,
        });
        Ok(Step::Done)
    }

    #[inline(always)] // its stage's runner enters it (and `replay`, seldom): one function, not two
    fn try_data(&mut self, env: &Envelope) -> Result<Step> {
        if self.decided() {
            return Ok(Step::Done);
        }
        let rejected = &self.msg.rejected;
        if !env.recipients.is_empty() && rejected.len() == env.recipients.len() {
            // Nobody is left to deliver to: the message is refused as the last recipient was,
            // temporarily only if every refusal was temporary.
            let all_temp = rejected.iter().all(|r| r.tempfail);
            let last = rejected
                .iter()
                .rev()
                .find(|r| r.tempfail == all_temp)
                .map(|r| r.reply.clone());
            let d = match all_temp {
                true => Disposition::Tempfail,
                false => Disposition::Reject,
            };
            self.wire.queue(SMFIC_ABORT, &[]);
            return self.final_outcome(d, last, Stage::Rcpt);
        }
        self.macros(SMFIM_DATA, env, None);
        if !self.has(SMFIP_NODATA) {
            self.wire.queue(SMFIC_DATA, &[]);
        }
        let expect = !self.has(SMFIP_NODATA) && !self.has(SMFIP_NR_DATA);
        match self.answer(Stage::Data, expect)? {
            Answer::Renegotiated => Ok(Step::Renegotiated),
            Answer::Final(d, reply) => self.final_outcome(d, reply, Stage::Data),
            Answer::Continue | Answer::Skip => Ok(Step::Done),
        }
    }

    fn try_header(&mut self, fields: &HeaderSection, index: usize) -> Result<Step> {
        if self.decided() || self.msg.skip_headers || self.has(SMFIP_NOHDRS) {
            return Ok(Step::Done);
        }
        let v = fields.value(index);
        let value: &[u8] = match !self.has(SMFIP_HDR_LEADSPC) && v.first() == Some(&b' ') {
            true => &v[1..],
            false => v,
        };
        let start = self.wire.bufs.out.len();
        protocol::encode_header(&mut self.wire.bufs.out, fields.name(index), value);
        self.wire.trace_out(start);
        match self.answer(Stage::Header, !self.has(SMFIP_NR_HDR))? {
            Answer::Renegotiated => Ok(Step::Renegotiated),
            Answer::Continue => Ok(Step::Done),
            Answer::Skip => {
                self.msg.skip_headers = true;
                Ok(Step::Done)
            }
            Answer::Final(d, reply) => self.final_outcome(d, reply, Stage::Header),
        }
    }

    #[inline(always)] // its stage's runner enters it (and `replay`, seldom): one function, not two
    fn try_eoh(&mut self, env: &Envelope) -> Result<Step> {
        if self.decided() {
            return Ok(Step::Done);
        }
        self.macros(SMFIM_EOH, env, None);
        if !self.has(SMFIP_NOEOH) {
            self.wire.queue(SMFIC_EOH, &[]);
        }
        let expect = !self.has(SMFIP_NOEOH) && !self.has(SMFIP_NR_EOH);
        match self.answer(Stage::Eoh, expect)? {
            Answer::Renegotiated => Ok(Step::Renegotiated),
            Answer::Final(d, reply) => self.final_outcome(d, reply, Stage::Eoh),
            Answer::Continue | Answer::Skip => Ok(Step::Done),
        }
    }

    /// The body is never encoded on an assumed negotiation: nobody keeps it to encode again.
    fn try_body(&mut self, body: &mut Body<'_, 'm, '_>) -> Result<Step> {
        if self.assumed.is_some() && self.settle()? == Settled::Changed {
            return Ok(Step::Renegotiated);
        }
        if self.decided() || self.msg.skip_body || self.has(SMFIP_NOBODY) {
            return Ok(Step::Done);
        }
        match body {
            Body::Piece(src) => self.body_piece(src),
            Body::Rest(rest) => self.body_rest(rest),
            Body::Reader(reader) => self.body_reader(reader),
        }?;
        Ok(Step::Done)
    }

    /// Starts a BODY packet at the end of `out` (its length written when it is closed).
    fn open_packet(&mut self) -> Result<usize> {
        if self.wire.bufs.spliced.len() == MAX_SPLICED {
            self.wire.write_out()?;
            self.wire.unanswered = true;
        }
        let start = self.wire.bufs.out.len();
        self.wire
            .bufs
            .out
            .extend_from_slice(&[0, 0, 0, 0, SMFIC_BODY]);
        self.msg.open = Some(start);
        Ok(start)
    }

    /// Closes the open BODY packet (dropped when empty) and takes its reply; false when no
    /// more of the body is wanted (SKIP, or a final decision).
    fn close_packet(&mut self) -> Result<bool> {
        let Some(start) = self.msg.open.take() else {
            return Ok(true);
        };
        let out = &mut self.wire.bufs.out;
        let len = out.len() - start - 4;
        if len <= 1 {
            out.truncate(start);
            return Ok(true);
        }
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        self.wire.trace_out(start);
        self.body_answer()
    }

    /// The reply to a BODY packet, where one is due.
    fn body_answer(&mut self) -> Result<bool> {
        match self.answer(Stage::Body, !self.has(SMFIP_NR_BODY))? {
            Answer::Continue | Answer::Renegotiated => Ok(true),
            Answer::Skip => {
                self.msg.skip_body = true;
                Ok(false)
            }
            Answer::Final(d, reply) => {
                self.final_outcome(d, reply, Stage::Body)?;
                Ok(false)
            }
        }
    }

    /// Some body bytes, copied into the open packet; the packet stays open for more.
    fn body_piece(&mut self, mut src: &[u8]) -> Result<()> {
        while !src.is_empty() {
            let start = match self.msg.open {
                Some(start) => start,
                None => self.open_packet()?,
            };
            let max = start + 5 + MAX_DATA_LEN;
            let (used, full) = self.msg.body.fill_from(src, &mut self.wire.bufs.out, max);
            src = &src[used..];
            if full && !self.close_packet()? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The rest of the body, in memory for the message's life: a long stretch of CRLF text
    /// goes out as it is, spliced into the write; anything else is converted into the packet.
    fn body_rest(&mut self, mut rest: &'m [u8]) -> Result<()> {
        loop {
            if let Some(start) = self.msg.open {
                let max = start + 5 + MAX_DATA_LEN;
                let (used, full) = self.msg.body.fill_from(rest, &mut self.wire.bufs.out, max);
                rest = &rest[used..];
                if !full {
                    break;
                }
                if !self.close_packet()? {
                    return Ok(());
                }
                continue;
            }
            if rest.is_empty() {
                break;
            }
            let start = self.open_packet()?;
            let Some(part) = self.msg.body.take_as_is(rest, MAX_DATA_LEN) else {
                continue;
            };
            rest = &rest[part.len()..];
            self.msg.open = None;
            let out = &mut self.wire.bufs.out;
            out[start..start + 4].copy_from_slice(&(part.len() as u32 + 1).to_be_bytes());
            let at = out.len();
            self.wire.bufs.spliced.push(Splice { at, bytes: part });
            self.wire.trace_data(SMFIC_BODY, part);
            if !self.body_answer()? {
                return Ok(());
            }
        }
        // Nothing follows: the open packet is the last.
        self.close_packet().map(|_| ())
    }

    /// The rest of the body from the MTA's read callback, read straight into the packets.
    fn body_reader(&mut self, reader: &mut ContentReader<'_>) -> Result<()> {
        loop {
            let start = match self.msg.open {
                Some(start) => start,
                None => self.open_packet()?,
            };
            let max = start + 5 + MAX_DATA_LEN;
            let full = self
                .msg
                .body
                .fill_from_reader(reader, &mut self.wire.bufs.out, max)?;
            if !self.close_packet()? || !full {
                return Ok(());
            }
        }
    }

    /// End of message: the last BODY packet, then BODYEOB; edits, then one disposition.
    fn try_eom(&mut self, m: &Pushed<'_>) -> Result<Step> {
        if self.assumed.is_some() && self.settle()? == Settled::Changed {
            return Ok(Step::Renegotiated);
        }
        if !self.decided() {
            self.close_packet()?;
        }
        if self.decided() {
            return Ok(Step::Done);
        }
        self.macros(SMFIM_EOM, m.env, None);
        self.wire.queue(SMFIC_BODYEOB, &[]);
        let (d, reply) = match self.answer(Stage::Eom, true)? {
            Answer::Final(d, reply) => (d, reply),
            Answer::Continue | Answer::Skip | Answer::Renegotiated => (Disposition::Continue, None),
        };
        // Bytes that came with the final reply break "one command, one reply". Bytes that
        // arrive after it are not waited for: a kept connection is looked at before its next
        // message (handle::unusable), and one with anything unread is closed, not used; one
        // closed now can carry nothing into another message.
        let unread = self.wire.unread();
        if unread > 0 {
            return Err(self.wire.protocol_error(&format!(
                "sent more after its final reply to BODYEOB ({unread} or more unexpected bytes)"
            )));
        }
        self.final_outcome(d, reply, Stage::Eom)?;
        let leadspc = self.has(SMFIP_HDR_LEADSPC);
        let edits = std::mem::take(&mut self.msg.edits);
        let quarantine = self.msg.quarantine.take();
        if let Some(o) = self.msg.decided.as_mut() {
            // The verdict needs the original fields only to place and delete edited ones.
            if !edits.is_empty() {
                o.headers = m.fields.to_headers();
            }
            o.edits = edits;
            if o.quarantine.is_none() {
                o.quarantine = quarantine;
            }
            o.leadspc = leadspc;
        }
        Ok(Step::Done)
    }

    /// A decision at CONNECT or HELO concerns the whole connection: accept ends filtering, and a
    /// discard there means nothing (Postfix ignores it with a warning).
    fn connection_level(
        &mut self,
        d: Disposition,
        reply: Option<Vec<u8>>,
        stage: Stage,
    ) -> Result<Step> {
        let d = if d == Disposition::Discard {
            warn!(
                "milter {}: DISCARD at {stage:?} is not meaningful and is ignored",
                self.wire.peer
            );
            Disposition::Accept
        } else {
            d
        };
        self.final_outcome(d, reply, stage)
    }

    fn final_outcome(
        &mut self,
        d: Disposition,
        reply: Option<Vec<u8>>,
        stage: Stage,
    ) -> Result<Step> {
        let mut o = Outcome::new(d, stage);
        o.reply = match d {
            Disposition::Reject => Some(reply.unwrap_or_else(|| DEFAULT_REJECT.to_vec())),
            Disposition::Tempfail => Some(reply.unwrap_or_else(|| DEFAULT_TEMPFAIL.to_vec())),
            _ => None,
        };
        o.rejected_recipients = std::mem::take(&mut self.msg.rejected);
        o.quarantine = self.msg.quarantine.take();
        o.leadspc = self.has(SMFIP_HDR_LEADSPC);
        self.decide(o)
    }

    /// Writes out what is queued; first reads the reply to OPTNEG when the message went ahead
    /// on an assumed negotiation (`Step::Renegotiated` when it changed: nothing is written).
    fn flush(&mut self) -> Result<Step> {
        if self.assumed.is_some() && self.settle()? == Settled::Changed {
            return Ok(Step::Renegotiated);
        }
        self.wire.write_out()?;
        Ok(Step::Done)
    }

    /// After a stage's packets are queued: read its reply if one is due, else maybe write out.
    #[inline]
    fn answer(&mut self, stage: Stage, expect_reply: bool) -> Result<Answer> {
        if !expect_reply && self.wire.unsent() < WRITE_HIGH_WATER {
            // A packet that needs no reply, queued: most header fields and body pieces.
            return Ok(Answer::Continue);
        }
        self.answer_now(stage, expect_reply)
    }

    /// `answer` when a reply is due or the write buffer is full.
    #[inline(never)]
    fn answer_now(&mut self, stage: Stage, expect_reply: bool) -> Result<Answer> {
        if !expect_reply {
            if self.wire.unsent() >= WRITE_HIGH_WATER {
                if self.flush()? == Step::Renegotiated {
                    return Ok(Answer::Renegotiated);
                }
                self.wire.unanswered = true;
            }
            return Ok(Answer::Continue);
        }
        if self.flush()? == Step::Renegotiated {
            return Ok(Answer::Renegotiated);
        }
        let what = stage_command(stage);
        let mut packets = 0;
        // Edits and the disposition come as separate packets at end of message, and a
        // libmilter Milter writes them without TCP_NODELAY: Nagle holds the next one until the
        // first is ACKed, which Linux delays by about 40 ms. Quick-ACK mode sends each ACK at
        // once while we only read. A Milter allowed to edit usually does (opendkim, spamass-
        // milter, clamav-milter add a header to every message), so it is set before the first
        // reply, and the Milter's kernel sends the final reply as soon as the edit arrives. A
        // Milter allowed no edit sends one packet, the final reply, and costs no call; if it
        // sends another first (PROGRESS), quick-ACK mode is set then.
        let mut quick = stage == Stage::Eom && self.neg.actions & EDIT_ACTIONS != 0;
        if quick {
            self.wire.stream.quickack();
        }
        loop {
            if stage == Stage::Eom && packets == 1 && !quick {
                self.wire.stream.quickack();
                quick = true;
            }
            packets += 1;
            let (cmd, at) = self.wire.read_packet(what)?;
            if cmd == SMFIR_CONTINUE && at.is_empty() {
                // The usual answer, taken without decoding.
                return Ok(Answer::Continue);
            }
            let reply = protocol::decode_reply(cmd, self.wire.data(at)).map_err(|e| {
                self.wire
                    .protocol_error(&format!("bad reply to {what}: {e}"))
            })?;
            if let Some(answer) = self.reply(reply, cmd, stage, what)? {
                return Ok(answer);
            }
        }
    }

    /// What one reply packet means: an answer, or None when more packets follow (PROGRESS,
    /// edits, QUARANTINE at end of message).
    fn reply(
        &mut self,
        reply: Reply,
        cmd: u8,
        stage: Stage,
        what: &'static str,
    ) -> Result<Option<Answer>> {
        let answer = match reply {
            Reply::Continue => Answer::Continue,
            Reply::Accept => Answer::Final(Disposition::Accept, None),
            Reply::Reject => Answer::Final(Disposition::Reject, None),
            Reply::Tempfail => Answer::Final(Disposition::Tempfail, None),
            Reply::Discard => Answer::Final(Disposition::Discard, None),
            Reply::ReplyCode(text) => {
                if let Err(e) = self.msg.budget.reply_text(text.len(), what) {
                    return Err(self.wire.protocol_error(&e));
                }
                let d = match text.first() == Some(&b'4') {
                    true => Disposition::Tempfail,
                    false => Disposition::Reject,
                };
                Answer::Final(d, Some(unescape_percent(&text)))
            }
            Reply::Shutdown => Answer::Final(
                Disposition::Tempfail,
                Some(b"421 4.7.0 Milter asked to shut down".to_vec()),
            ),
            Reply::ConnFail => {
                return Err(self.wire.protocol_error(&format!(
                    "answered {what} with CONN_FAIL (the Milter reports a connection failure)"
                )))
            }
            Reply::Progress => return Ok(None),
            Reply::Skip => {
                if !self.has(SMFIP_SKIP) {
                    return Err(self.wire.protocol_error(&format!(
                        "answered {what} with SKIP, which was not negotiated"
                    )));
                }
                if !matches!(stage, Stage::Rcpt | Stage::Header | Stage::Body) {
                    return Err(self.wire.protocol_error(&format!(
                        "answered {what} with SKIP, which is allowed only for RCPT, HEADER and \
                         BODY"
                    )));
                }
                Answer::Skip
            }
            Reply::Quarantine(reason) => {
                self.msg.quarantine = Some(reason);
                if stage == Stage::Eom {
                    return Ok(None);
                }
                // As Postfix: a quarantine before end of message holds the message and ends
                // filtering.
                Answer::Final(Disposition::Accept, None)
            }
            Reply::OptNeg(_) => {
                return Err(self
                    .wire
                    .protocol_error(&format!("answered {what} with OPTNEG")))
            }
            edit => {
                if stage != Stage::Eom {
                    return Err(self.wire.protocol_error(&format!(
                        "sent {} in reply to {what}; modifications are allowed only at end of \
                         message",
                        reply_name(cmd)
                    )));
                }
                self.edit(edit, cmd)?;
                return Ok(None);
            }
        };
        Ok(Some(answer))
    }

    /// Keeps one modification for the verdict, within the Milter limits (`limits.rs`).
    fn edit(&mut self, reply: Reply, cmd: u8) -> Result<()> {
        let peer = &self.wire.peer;
        let (needs, edit) = match reply {
            Reply::AddHeader { name, value } => (SMFIF_ADDHDRS, Edit::AddHeader { name, value }),
            Reply::InsHeader { index, name, value } => {
                (SMFIF_ADDHDRS, Edit::InsHeader { index, name, value })
            }
            Reply::ChgHeader { index, name, value } => {
                (SMFIF_CHGHDRS, Edit::ChgHeader { index, name, value })
            }
            Reply::AddRcpt(rcpt) => (SMFIF_ADDRCPT, Edit::AddRcpt { rcpt, args: None }),
            Reply::AddRcptPar { rcpt, args } => (SMFIF_ADDRCPT_PAR, Edit::AddRcpt { rcpt, args }),
            Reply::DelRcpt(rcpt) => (SMFIF_DELRCPT, Edit::DelRcpt { rcpt }),
            Reply::ReplBody(_) => {
                // The new body cannot travel in a verdict; the header edits that describe it
                // are left out with it (verdict.rs), so the message stays consistent.
                if !self.msg.body_replaced {
                    log::info!(
                        "milter {peer}: REPLBODY cannot be expressed in a verdict: the body is \
                         kept as it is"
                    );
                    self.msg.body_replaced = true;
                    self.msg.edits.push(Edit::ReplaceBody);
                }
                return Ok(());
            }
            _ => {
                // CHGFROM: no verdict can change the envelope sender.
                log::info!(
                    "milter {peer}: {} cannot be expressed in a verdict and is ignored",
                    reply_name(cmd)
                );
                return Ok(());
            }
        };
        if self.neg.actions & needs == 0 {
            warn!(
                "milter {peer}: sent {} without negotiating {}; applied anyway, as sendmail does",
                reply_name(cmd),
                action_names(needs)
            );
        }
        if let Err(e) = self.msg.budget.edit(&edit, reply_name(cmd)) {
            return Err(self.wire.protocol_error(&e));
        }
        self.msg.edits.push(edit);
        Ok(())
    }
}

/// The client's address as CONNECT carries it (an IPv4-mapped IPv6 address as IPv4).
fn connect_addr(env: &Envelope) -> ConnectAddr {
    let port = env.client_port;
    match env.client_addr {
        None => ConnectAddr::Unknown,
        Some(IpAddr::V4(addr)) => ConnectAddr::Inet4 { port, addr },
        Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(addr) => ConnectAddr::Inet4 { port, addr },
            None => ConnectAddr::Inet6 { port, addr: a },
        },
    }
}

/// The SMTP command word of a stage, for messages.
fn stage_command(stage: Stage) -> &'static str {
    match stage {
        Stage::Negotiate => "OPTNEG",
        Stage::Connect => "CONNECT",
        Stage::Helo => "HELO",
        Stage::Mail => "MAIL",
        Stage::Rcpt => "RCPT",
        Stage::Data => "DATA",
        Stage::Header => "HEADER",
        Stage::Eoh => "EOH",
        Stage::Body => "BODY",
        Stage::Eom => "BODYEOB",
    }
}

/// `%%` → `%`, as sendmail and Postfix turn a Milter's reply text into what the client sees.
fn unescape_percent(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        out.push(text[i]);
        if text[i] == b'%' && text.get(i + 1) == Some(&b'%') {
            i += 1;
        }
        i += 1;
    }
    out
}

/// Sends QUIT on a connection kept for reuse that is now being closed. Best effort: the
/// connection is closed right after, whatever happens.
pub fn quit(stream: &mut std::net::TcpStream) {
    wire::last_words(stream, &[0, 0, 0, 1, SMFIC_QUIT]);
}

/// How a conversation ended, beside what the Milter decided.
#[derive(Debug)]
pub struct Ended {
    pub outcome: Outcome,
    /// What was negotiated (effective values), to be handed back with a reused connection.
    pub negotiation: Negotiation,
    /// The connection was left open for the next message (no QUIT sent): see
    /// `Conversation::finish`. Otherwise QUIT was sent.
    pub reusable: bool,
    /// The timeouts left set on the stream, for its next conversation.
    pub timeouts: SocketTimeouts,
    /// On a kept connection: a reply of this message arrived.
    pub answered: bool,
}

/// Runs the conversation for one whole message on a connected stream (as `spamfilter_filter`
/// does, through the same pushes) and returns what the Milter decided, with what it negotiated.
///
/// `reused`: the stream was kept open after an earlier message: QUIT_NC starts this message.
/// `keep`: leave the stream open at the end when it can be reused, instead of sending QUIT.
/// `timeouts`: those the stream has now, where known.
#[allow(clippy::too_many_arguments)]
pub fn run<S: Timeouts>(
    config: &Config,
    stream: &mut S,
    peer: &str,
    envelope: &Envelope,
    content: Content<'_>,
    deadline: Instant,
    transcript: Option<&mut Vec<String>>,
    reused: Option<Resume>,
    keep: bool,
    timeouts: SocketTimeouts,
) -> Result<Ended> {
    let conv = Conversation::new(
        config,
        stream,
        Arc::from(peer),
        timeouts,
        deadline,
        transcript.is_some(),
    );
    let mut direct = Direct {
        conv,
        env: envelope,
        fields: HeaderSection::default(),
        done: Done::default(),
    };
    let result = direct.conv.start(reused).and_then(|()| direct.all(content));
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            if let Some(t) = transcript {
                t.append(&mut direct.conv.take_transcript());
            }
            return Err(e);
        }
    };
    let answered = direct.conv.wire.answered;
    let mut f = direct.conv.finish(&outcome, keep);
    if let Some(t) = transcript {
        t.append(&mut f.transcript);
    }
    Ok(Ended {
        outcome,
        negotiation: f.negotiation,
        reusable: f.reusable,
        timeouts: f.timeouts,
        answered,
    })
}

/// `run`'s driver: the pushes of one whole message straight into one conversation.
struct Direct<'m, 'e, S: Timeouts> {
    conv: Conversation<'m, S>,
    env: &'e Envelope,
    fields: HeaderSection,
    done: Done,
}

impl<'m, S: Timeouts> Direct<'m, '_, S> {
    fn all(&mut self, content: Content<'m>) -> Result<Outcome> {
        if let Err(e) = crate::content::drive(self, content) {
            return Err(match e.kind {
                ErrorKind::Message => self.conv.settle_before(e),
                _ => e,
            });
        }
        if !self.conv.decided() {
            self.with(|c, m| c.end_of_message(m))?;
        }
        self.conv
            .take_decided()
            .ok_or_else(|| Error::protocol("the conversation ended without an outcome"))
    }

    /// Runs `f` on the conversation with what the message holds.
    fn with<T>(&mut self, f: impl FnOnce(&mut Conversation<'m, S>, &Pushed<'_>) -> T) -> T {
        let m = Pushed {
            env: self.env,
            fields: &self.fields,
            done: self.done,
        };
        f(&mut self.conv, &m)
    }
}

impl<'m, S: Timeouts> Pushes<'m> for Direct<'m, '_, S> {
    fn envelope(&mut self) -> Result<()> {
        self.with(|c, m| c.connect(m))?;
        self.done.connect = true;
        self.with(|c, m| c.mail(m))?;
        self.done.mail = true;
        for i in 0..self.env.recipients.len() {
            self.with(|c, m| c.rcpt(m, i))?;
            self.done.rcpts += 1;
        }
        self.with(|c, m| c.end_of_recipients(m))?;
        self.done.data = true;
        Ok(())
    }

    fn fields(&mut self) -> &mut HeaderSection {
        &mut self.fields
    }

    fn send_field(&mut self, index: usize) -> Result<()> {
        self.with(|c, m| c.header(m, index))?;
        self.done.headers += 1;
        Ok(())
    }

    fn end_of_header(&mut self) -> Result<()> {
        self.with(|c, m| c.end_of_header(m))?;
        self.done.eoh = true;
        Ok(())
    }

    fn body(&mut self, body: Body<'_, 'm, '_>) -> Result<()> {
        self.with(|c, m| c.body(m, body))
    }

    fn decided(&self) -> bool {
        self.conv.decided()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read, Write};
    use std::time::Duration;

    /// A stream that records what the session does with it: writes, reads and quick-ACK.
    struct Recording {
        inner: std::os::unix::net::UnixStream,
        events: Vec<&'static str>,
    }

    impl Read for Recording {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.events.push("read");
            self.inner.read(buf)
        }
    }

    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.events.push("write");
            self.inner.write_all(buf).map(|()| buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timeouts for Recording {
        fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
            self.inner.set_read_timeout(Some(timeout))
        }
        fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
            self.inner.set_write_timeout(Some(timeout))
        }
        fn quickack(&mut self) {
            self.events.push("quickack");
        }
    }

    /// One message against a scripted Milter that negotiates `actions` and asks for nothing
    /// but end of message, where it sends `eom` (packets: command, data) and then CONTINUE.
    /// Returns what the session did with its stream.
    fn events_at_eom(actions: u32, eom: &[(u8, &'static [u8])]) -> Vec<&'static str> {
        let (ours, mut milter) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let eom: Vec<(u8, &'static [u8])> = eom.to_vec();
        let script = std::thread::spawn(move || {
            let packet = |cmd: u8, data: &[u8]| {
                let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
                p.push(cmd);
                p.extend_from_slice(data);
                p
            };
            let read = |m: &mut std::os::unix::net::UnixStream| -> Option<u8> {
                let mut len = [0u8; 4];
                m.read_exact(&mut len).ok()?;
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                m.read_exact(&mut body).ok()?;
                Some(body[0])
            };
            let nothing_but_eom = SMFIP_NOCONNECT
                | SMFIP_NOHELO
                | SMFIP_NOMAIL
                | SMFIP_NORCPT
                | SMFIP_NOBODY
                | SMFIP_NOHDRS
                | SMFIP_NOEOH
                | SMFIP_NOUNKNOWN
                | SMFIP_NODATA;
            while let Some(cmd) = read(&mut milter) {
                let reply = match cmd {
                    SMFIC_OPTNEG => {
                        let mut d = Vec::new();
                        for v in [6, actions, nothing_but_eom] {
                            d.extend_from_slice(&v.to_be_bytes());
                        }
                        packet(SMFIC_OPTNEG, &d)
                    }
                    SMFIC_BODYEOB => {
                        for (cmd, data) in &eom {
                            milter.write_all(&packet(*cmd, data)).unwrap();
                        }
                        packet(SMFIR_CONTINUE, &[])
                    }
                    _ => continue,
                };
                milter.write_all(&reply).unwrap();
            }
        });
        let config = Config::with_host_port("127.0.0.1", 1);
        let env = Envelope {
            sender: b"a@example.org".to_vec(),
            ..Envelope::default()
        };
        let mut stream = Recording {
            inner: ours,
            events: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let timeouts = SocketTimeouts {
            read: None,
            write: None,
        };
        let content = Content::Buffer(b"Subject: t\r\n\r\nbody\r\n");
        run(
            &config,
            &mut stream,
            "test",
            &env,
            content,
            deadline,
            None,
            None,
            false,
            timeouts,
        )
        .expect("the conversation");
        drop(stream.inner);
        script.join().expect("the scripted Milter");
        stream.events
    }

    #[test]
    fn quick_ack_before_end_of_message_replies_only_when_edits_may_come_first() {
        let header: &[u8] = b"X-Test\0yes\0";
        // Allowed to edit: set before the first reply is read, as edits come first.
        let e = events_at_eom(SMFIF_ADDHDRS, &[(SMFIR_ADDHEADER, header)]);
        assert_eq!(e[..4], ["write", "read", "write", "quickack"], "{e:?}");
        assert_eq!(e.iter().filter(|&&x| x == "quickack").count(), 1, "{e:?}");
        // Allowed no edit, one final reply: no call at all.
        let e = events_at_eom(0, &[]);
        assert!(!e.contains(&"quickack"), "{e:?}");
        // Allowed no edit, but a PROGRESS comes first: set once that packet is in.
        let e = events_at_eom(0, &[(SMFIR_PROGRESS, b"")]);
        let at = e
            .iter()
            .position(|&x| x == "quickack")
            .expect("quick-ACK set");
        assert_eq!(e[..at], ["write", "read", "write", "read"], "{e:?}");
        assert_eq!(e.iter().filter(|&&x| x == "quickack").count(), 1, "{e:?}");
    }

    #[test]
    fn percent_unescape() {
        assert_eq!(unescape_percent(b"550 100%% sure"), b"550 100% sure");
        assert_eq!(unescape_percent(b"%%%%"), b"%%");
    }

    /// An in-memory Milter for the push tests: it answers OPTNEG with `protocol` (and every
    /// action), CONTINUE to each command the protocol bits leave a reply for, and an ADDHEADER
    /// then CONTINUE to end of message; one reply packet per read. It records what it was sent.
    struct Answering {
        protocol: u32,
        written: Vec<u8>,
        parsed: usize,
        replies: std::collections::VecDeque<Vec<u8>>,
    }

    impl Answering {
        fn new(protocol: u32) -> Answering {
            Answering {
                protocol,
                written: Vec::new(),
                parsed: 0,
                replies: Default::default(),
            }
        }

        fn reply(&mut self, cmd: u8, data: &[u8]) {
            let mut p = Vec::new();
            protocol::encode_packet(&mut p, cmd, &[data]);
            self.replies.push_back(p);
        }

        /// Queues the replies to the command `cmd` just received.
        fn answer(&mut self, cmd: u8) {
            let silent = |bit: u32| self.protocol & bit != 0;
            let continues = match cmd {
                SMFIC_OPTNEG => {
                    let mut d = Vec::new();
                    for v in [6, OFFERED_ACTIONS, self.protocol] {
                        d.extend_from_slice(&v.to_be_bytes());
                    }
                    return self.reply(SMFIC_OPTNEG, &d);
                }
                SMFIC_BODYEOB => {
                    self.reply(SMFIR_ADDHEADER, b"X-Pushed\0yes\0");
                    true
                }
                SMFIC_CONNECT => !silent(SMFIP_NR_CONN),
                SMFIC_HELO => !silent(SMFIP_NR_HELO),
                SMFIC_MAIL => !silent(SMFIP_NR_MAIL),
                SMFIC_RCPT => !silent(SMFIP_NR_RCPT),
                SMFIC_DATA => !silent(SMFIP_NR_DATA),
                SMFIC_HEADER => !silent(SMFIP_NR_HDR),
                SMFIC_EOH => !silent(SMFIP_NR_EOH),
                SMFIC_BODY => !silent(SMFIP_NR_BODY),
                _ => false,
            };
            if continues {
                self.reply(SMFIR_CONTINUE, &[]);
            }
        }
    }

    impl Read for Answering {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(p) = self.replies.pop_front() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    impl Write for Answering {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            while self.written.len() >= self.parsed + 5 {
                let at = self.parsed;
                let len = u32::from_be_bytes(self.written[at..at + 4].try_into().unwrap());
                let end = at + 4 + len as usize;
                if self.written.len() < end {
                    break;
                }
                self.parsed = end;
                self.answer(self.written[at + 4]);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timeouts for Answering {
        fn set_read_timeout_to(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
        fn set_write_timeout_to(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    const FIELDS: [&[u8]; 3] = [
        b"From: a@example.org\n",
        b"Subject: folded\r\n  over two lines\n",
        b"X-Empty:\r\n",
    ];

    fn pushed_envelope() -> Envelope {
        Envelope {
            client_name: Some(b"client.example".to_vec()),
            client_addr: Some("192.0.2.7".parse().unwrap()),
            client_port: 4000,
            helo: Some(b"helo.example".to_vec()),
            sender: b"a@example.org".to_vec(),
            mail_args: vec![b"SIZE=10".to_vec()],
            recipients: vec![
                crate::Recipient::new(b"b@example.net".to_vec()),
                crate::Recipient::new(b"c@example.net".to_vec()),
            ],
            macros: vec![(b"i".to_vec(), b"Q1".to_vec())],
        }
    }

    /// A body of LF and CRLF lines, longer than one BODY packet.
    fn pushed_body() -> Vec<u8> {
        let mut body = Vec::new();
        for i in 0..9000 {
            body.extend_from_slice(format!("line {i}\n").as_bytes());
            body.extend_from_slice(b"crlf line\r\n");
        }
        body
    }

    /// The whole message through `run`, as `spamfilter_filter` hands it over.
    fn whole(protocol: u32, message: &[u8]) -> (Vec<u8>, Outcome) {
        let config = Config::with_host_port("127.0.0.1", 1);
        let mut milter = Answering::new(protocol);
        let deadline = Instant::now() + Duration::from_secs(5);
        let ended = run(
            &config,
            &mut milter,
            "in-memory",
            &pushed_envelope(),
            Content::Buffer(message),
            deadline,
            None,
            None,
            false,
            SocketTimeouts::default(),
        )
        .expect("the whole message");
        (milter.written, ended.outcome)
    }

    /// The same message pushed field by field and its body one byte at a time.
    fn pushed(protocol: u32, body: &[u8]) -> (Vec<u8>, Outcome) {
        let config = Config::with_host_port("127.0.0.1", 1);
        let mut milter = Answering::new(protocol);
        let deadline = Instant::now() + Duration::from_secs(5);
        let env = pushed_envelope();
        let mut fields = HeaderSection::default();
        let mut done = Done::default();
        let mut c = Conversation::new(
            &config,
            &mut milter,
            Arc::from("in-memory"),
            SocketTimeouts::default(),
            deadline,
            false,
        );
        c.start(None).expect("OPTNEG");
        macro_rules! push {
            ($call:ident $(, $arg:expr)*) => {
                c.$call(&Pushed { env: &env, fields: &fields, done } $(, $arg)*)
                    .expect(stringify!($call))
            };
        }
        push!(connect);
        done.connect = true;
        push!(mail);
        done.mail = true;
        for i in 0..env.recipients.len() {
            push!(rcpt, i);
            done.rcpts += 1;
        }
        push!(end_of_recipients);
        done.data = true;
        for (i, field) in FIELDS.iter().enumerate() {
            fields.push_field(field).expect("a well-formed field");
            push!(header, i);
            done.headers += 1;
        }
        push!(end_of_header);
        done.eoh = true;
        for b in body.chunks(1) {
            push!(body, Body::Piece(b));
        }
        push!(end_of_message);
        let outcome = c.take_decided().expect("an outcome");
        drop(c.finish(&outcome, false));
        (milter.written, outcome)
    }

    /// Every reply a Milter may leave out, left out: only OPTNEG and end of message answered.
    const NO_REPLIES: u32 = SMFIP_NR_CONN
        | SMFIP_NR_HELO
        | SMFIP_NR_MAIL
        | SMFIP_NR_RCPT
        | SMFIP_NR_DATA
        | SMFIP_NR_HDR
        | SMFIP_NR_EOH
        | SMFIP_NR_BODY;

    /// A message pushed field by field and in 1-byte body chunks puts the same bytes on the
    /// wire and gets the same outcome as the whole message, whether every stage is answered
    /// or none but end of message; also when the negotiation this thread remembers for the
    /// Milter is not the one it gives (the pushes so far are encoded again).
    #[test]
    fn pushes_give_the_bytes_and_outcome_of_the_whole_message() {
        let body = pushed_body();
        let message = [FIELDS.concat(), b"\n".to_vec(), body.clone()].concat();
        for protocol in [0, NO_REPLIES, 0, NO_REPLIES] {
            let (push_bytes, push_outcome) = pushed(protocol, &body);
            let (whole_bytes, whole_outcome) = whole(protocol, &message);
            assert_eq!(push_outcome, whole_outcome, "protocol {protocol:#x}");
            assert_eq!(
                push_outcome.edits.len(),
                1,
                "the ADDHEADER at end of message"
            );
            assert!(
                push_bytes == whole_bytes,
                "protocol {protocol:#x}: pushed {} bytes, whole {} bytes",
                push_bytes.len(),
                whole_bytes.len()
            );
            // Two full BODY packets (65535 bytes and the command: length 65536), then the rest.
            let bodies = push_bytes
                .windows(5)
                .filter(|w| w == &[0, 1, 0, 0, SMFIC_BODY])
                .count();
            // 9000 bare LFs each get a CR.
            let full = (body.len() + 9000) / MAX_DATA_LEN;
            assert_eq!(bodies, full, "protocol {protocol:#x}");
        }
    }
}
