//! The push API: one message handed over piece by piece, as the MTA learns it. Both C faces
//! drive it: the BMI calls push each piece as it comes, and `spamfilter_filter` splits its
//! buffer or read callback into the same pushes (`content::drive`), so there is one
//! implementation of the Milter conversation (`session::Conversation`).
//!
//! Each push advances the conversation as far as its data allows: MAIL at `mail`, RCPT per
//! `rcpt` (a recipient refused there is known at once), HEADER per field, BODY as chunks arrive
//! (at most one BODY packet is held), end of message at `end_of_message`. A decision that ends
//! the conversation early makes the later pushes cheap no-ops. A failure is returned by the push
//! where it happened, and every later push returns it again; the connection is finished there.
//! Dropping a `Message` before `end_of_message` aborts it: ABORT and QUIT, and its connection
//! is closed, never leaked.
//!
//! What a message keeps: its envelope and its header fields (the verdict needs them, and they
//! are what is sent again when the negotiation changes under the message, or when a kept
//! connection fails before any reply and a new one replaces it), never its body.

use crate::content::{self, Body, HeaderSection, Pushes};
use crate::error::{Error, ErrorKind, Result};
use crate::handle::{describe_verdict, Filtered, Handle, Pooled};
use crate::message::{Client, Content, Envelope, Recipient};
use crate::outcome::Outcome;
use crate::protocol::Negotiation;
use crate::session::{Conversation, Done, Pushed, Resume};
use crate::verdict;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The envelope: built by the pushes, or lent whole by `spamfilter_filter`.
enum Env<'a> {
    Lent(&'a Envelope),
    Own(Envelope),
}

impl Env<'_> {
    fn get(&self) -> &Envelope {
        match self {
            Env::Lent(e) => e,
            Env::Own(e) => e,
        }
    }
}

/// Where the message's conversation is. Not boxed: a message in the steady state allocates
/// nothing of its own, and a `Message` lives on its caller's stack or in one allocation of its
/// C face.
#[allow(clippy::large_enum_variant)]
enum State<'a> {
    /// No connection yet (or the one it had failed and is being replaced).
    New,
    /// Boxed: the state moves (`mem::replace`) at every turn of a message, and a push message
    /// of a C face lives in one allocation small enough for the allocator's per-thread cache.
    Talking(Box<Conversation<'a, TcpStream>>),
    /// The Milter's final word is in; the conversation is over.
    Decided(Outcome),
    /// The conversation failed with this error.
    Failed(Error),
    /// `end_of_message` returned.
    Ended,
}

/// A stage's runner, for the stages a push implies.
type Stage<'a> = fn(&mut Message<'a>) -> Result<()>;

/// The pushes in their order; a message is at the last one pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    New,
    Connect,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    End,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::New => "nothing",
            Phase::Connect => "connect()",
            Phase::Mail => "mail()",
            Phase::Rcpt => "rcpt()",
            Phase::Data => "end_of_recipients()",
            Phase::Header => "header()",
            Phase::Eoh => "end_of_header()",
            Phase::Body => "body()",
            Phase::End => "end_of_message()",
        }
    }
}

/// One message being filtered through a handle. Pushes come in SMTP order: `connect`, `mail`,
/// `rcpt`..., `end_of_recipients`, `header`..., `end_of_header`, `body`..., `end_of_message`.
/// A stage may be left out: the stages before a push that were not pushed are run with what is
/// known (an unknown client, the null sender, no recipient, no header field). A push out of
/// order (a `rcpt` after a `header`) is an error that changes nothing.
///
/// A `Message` may move between threads between pushes (it is `Send`). MESSAGE_TIMEOUT counts
/// only the time spent inside its pushes, not the caller's time between them.
pub struct Message<'a> {
    handle: &'a Handle,
    env: Env<'a>,
    fields: HeaderSection,
    /// The stages run so far (what a new connection must be told again).
    done: Done,
    phase: Phase,
    state: State<'a>,
    /// When the first push went to the network, and the deadline it set.
    start: Option<(Instant, Instant)>,
    transcript: Option<Vec<String>>,
    /// Take no kept connection.
    fresh: bool,
    /// Body bytes were pushed: nobody holds them to send again.
    body_pushed: bool,
    /// A kept connection failed before any reply, after body bytes went out: only a caller
    /// that holds the whole message can send it again (`Handle::filter`).
    retry_whole: bool,
    negotiation: Negotiation,
    peer: Option<Arc<str>>,
}

// The C faces hand a message from one MTA thread to another between pushes.
const _: () = {
    const fn send<T: Send>() {}
    send::<Message<'static>>();
};

/// Header-field buffers grown past this are dropped instead of kept for the next message.
const SPARE_LIMIT: usize = 384 << 10;

thread_local! {
    /// The header-field buffers of the thread's last message, for its next one.
    static SPARE_FIELDS: std::cell::RefCell<Option<HeaderSection>> =
        const { std::cell::RefCell::new(None) };
}

impl Handle {
    /// A new message, filtered through this handle. Nothing happens on the network until its
    /// first push (the connection is made, or a kept one taken, then).
    pub fn message(&self) -> Message<'_> {
        Message::new(self, Env::Own(Envelope::default()), false, false)
    }
}

impl<'a> Message<'a> {
    fn new(handle: &'a Handle, env: Env<'a>, traced: bool, fresh: bool) -> Message<'a> {
        let fields = SPARE_FIELDS
            .try_with(|s| s.borrow_mut().take())
            .ok()
            .flatten()
            .unwrap_or_default();
        Message {
            handle,
            env,
            fields,
            done: Done::default(),
            phase: Phase::New,
            state: State::New,
            start: None,
            transcript: traced.then(Vec::new),
            fresh,
            body_pushed: false,
            retry_whole: false,
            negotiation: Negotiation::default(),
            peer: None,
        }
    }

    /// A message whose envelope is known whole (`Handle::filter`): `traced` keeps a transcript,
    /// `fresh` takes no kept connection.
    pub(crate) fn lent(
        handle: &'a Handle,
        env: &'a Envelope,
        traced: bool,
        fresh: bool,
    ) -> Message<'a> {
        Message::new(handle, Env::Lent(env), traced, fresh)
    }

    /// The SMTP client: connects to the Milter (or takes a kept connection), negotiates, and
    /// sends CONNECT and HELO (when the client has one) with their macros.
    pub fn connect(&mut self, client: Client) -> Result<()> {
        self.paced(|m| {
            m.enter(Phase::Connect)?;
            let env = m.own_env()?;
            env.client_name = client.name;
            env.client_addr = client.addr;
            env.client_port = client.port;
            env.helo = client.helo;
            env.macros = client.macros;
            m.connect_stage()
        })
    }

    /// MAIL FROM: the reverse path without angle brackets (empty for `<>`), and each ESMTP
    /// parameter (`SIZE=1000`) as its own string.
    pub fn mail(&mut self, sender: &[u8], esmtp_args: &[&[u8]]) -> Result<()> {
        self.paced(|m| {
            m.enter(Phase::Mail)?;
            let env = m.own_env()?;
            env.sender = sender.to_vec();
            env.mail_args = esmtp_args.iter().map(|a| a.to_vec()).collect();
            m.mail_stage()
        })
    }

    /// RCPT TO: one recipient without angle brackets, with its ESMTP parameters. A recipient
    /// the Milter refuses here gets its own outcome (`Outcome::rejected_recipients`).
    pub fn rcpt(&mut self, address: &[u8], esmtp_args: &[&[u8]]) -> Result<()> {
        self.paced(|m| {
            m.enter(Phase::Rcpt)?;
            let env = m.own_env()?;
            if env.recipients.capacity() == 0 {
                // Allocated at its size for most messages, not grown from nothing (one
                // function fewer entered a message).
                env.recipients = Vec::with_capacity(4);
            }
            env.recipients.push(Recipient {
                address: address.to_vec(),
                esmtp_args: esmtp_args.iter().map(|a| a.to_vec()).collect(),
            });
            m.rcpt_stage(env_len(&m.env) - 1)
        })
    }

    /// The envelope is complete: DATA (where the Milter asked for it). A message whose every
    /// recipient was refused ends here.
    pub fn end_of_recipients(&mut self) -> Result<()> {
        self.paced(|m| {
            m.enter(Phase::Data)?;
            m.data_stage()
        })
    }

    /// One whole header field as the MTA holds it: name, colon, value, its folded lines, and
    /// its line end (LF or CRLF). A malformed field is an error and is left out.
    pub fn header(&mut self, field: &[u8]) -> Result<()> {
        self.paced(|m| {
            m.enter(Phase::Header)?;
            m.fields.push_field(field)?;
            m.header_stage(m.fields.len() - 1)
        })
    }

    /// The header section is complete: EOH (where the Milter asked for it).
    pub fn end_of_header(&mut self) -> Result<()> {
        self.paced(|m| {
            m.enter(Phase::Eoh)?;
            m.eoh_stage()
        })
    }

    /// A piece of the body: any size, split anywhere (even inside a CRLF), LF or CRLF line
    /// ends; sent with CRLF line ends, in BODY packets of at most 65535 bytes.
    pub fn body(&mut self, chunk: &[u8]) -> Result<()> {
        self.paced(|m| m.body_push(Body::Piece(chunk)))
    }

    /// End of message: the Milter's edits and final decision, and the verdict made of them.
    pub fn end_of_message(mut self) -> Result<Filtered> {
        self.paced(|m| m.finish())
    }

    /// End of message for a face that makes its own verdicts of the outcome (BMI): the
    /// Milter's outcome, and the envelope the pushes built (the verdicts name its recipients;
    /// the face keeps no copy of its own). No spamfilter_* verdict is built for it. The message
    /// ends in place (it is not moved into this call): any later push is refused, and dropping
    /// it finishes nothing more.
    pub fn end_of_message_with_envelope(&mut self) -> (Result<Outcome>, Envelope) {
        let outcome = self.paced(|m| {
            let outcome = m.finish_outcome()?;
            if m.handle.config().debug >= 1 {
                // The log line names the verdict the spamfilter_* face would have returned.
                let verdict = verdict::build(&outcome, m.handle.verdict_options());
                m.log_verdict(&verdict, m.elapsed());
            }
            Ok(outcome)
        });
        let envelope = match &mut self.env {
            Env::Own(e) => std::mem::take(e),
            Env::Lent(e) => Envelope::clone(e),
        };
        (outcome, envelope)
    }

    /// Runs one push under the handle's logger, with the message's clock running.
    fn paced<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        // The handle is borrowed for 'a, not from self: no count of the shared Arc is touched
        // (two atomic operations a push, on a line every MTA thread shares).
        let handle: &'a Handle = self.handle;
        handle.log().run(|| {
            if let State::Talking(c) = &mut self.state {
                c.resume_clock();
            }
            let r = f(self);
            if let State::Talking(c) = &mut self.state {
                c.pause_clock();
            }
            r
        })
    }

    /// The envelope, to fill in (a lent one is whole already).
    fn own_env(&mut self) -> Result<&mut Envelope> {
        match &mut self.env {
            Env::Own(e) => Ok(e),
            Env::Lent(_) => Err(Error::message(
                "this message's envelope was given whole; it takes no envelope push",
            )),
        }
    }

    /// Moves the message to `phase`, running the stages before it that were not pushed.
    #[inline]
    fn enter(&mut self, phase: Phase) -> Result<()> {
        let repeats = matches!(phase, Phase::Rcpt | Phase::Header | Phase::Body);
        if self.phase == phase && repeats {
            // The next field or body piece: nothing to run before it (the common case).
            return Ok(());
        }
        self.enter_anew(phase, repeats)
    }

    /// `enter` when the phase changes.
    #[inline(never)]
    fn enter_anew(&mut self, phase: Phase, repeats: bool) -> Result<()> {
        if self.phase > phase || (self.phase == phase && !repeats) {
            return Err(Error::message(format!(
                "{} after {}: a message's pushes come in SMTP order (connect, mail, rcpt, \
                 end_of_recipients, header, end_of_header, body, end_of_message), each once \
                 but rcpt, header and body",
                phase.name(),
                self.phase.name()
            )));
        }
        let implied: [(Phase, Stage<'a>); 4] = [
            (Phase::Connect, Self::connect_stage),
            (Phase::Mail, Self::mail_stage),
            (Phase::Data, Self::data_stage),
            (Phase::Eoh, Self::eoh_stage),
        ];
        for (stage, run) in implied {
            if self.phase < stage && phase > stage {
                self.phase = stage;
                run(self)?;
            }
        }
        self.phase = phase;
        Ok(())
    }

    #[inline(always)] // in its push; `enter_anew` keeps a copy for the stages a push implies
    fn connect_stage(&mut self) -> Result<()> {
        self.run(|c, m| c.connect(m))?;
        self.done.connect = true;
        Ok(())
    }

    #[inline(always)] // in its push; `enter_anew` keeps a copy for the stages a push implies
    fn mail_stage(&mut self) -> Result<()> {
        self.run(|c, m| c.mail(m))?;
        self.done.mail = true;
        Ok(())
    }

    #[inline(always)] // in its push; `enter_anew` keeps a copy for the stages a push implies
    fn rcpt_stage(&mut self, index: usize) -> Result<()> {
        self.run(|c, m| c.rcpt(m, index))?;
        self.done.rcpts += 1;
        Ok(())
    }

    #[inline(always)] // in its push; `enter_anew` keeps a copy for the stages a push implies
    fn data_stage(&mut self) -> Result<()> {
        self.run(|c, m| c.end_of_recipients(m))?;
        self.done.data = true;
        Ok(())
    }

    fn header_stage(&mut self, index: usize) -> Result<()> {
        self.run(|c, m| c.header(m, index))?;
        self.done.headers += 1;
        Ok(())
    }

    #[inline(always)] // in its push; `enter_anew` keeps a copy for the stages a push implies
    fn eoh_stage(&mut self) -> Result<()> {
        self.run(|c, m| c.end_of_header(m))?;
        self.done.eoh = true;
        Ok(())
    }

    fn body_push(&mut self, body: Body<'_, 'a, '_>) -> Result<()> {
        self.enter(Phase::Body)?;
        self.body_pushed = true;
        let mut body = Some(body);
        self.run(|c, m| match body.take() {
            Some(body) => c.body(m, body),
            None => Ok(()),
        })
    }

    /// End of message, and the verdict.
    fn finish(&mut self) -> Result<Filtered> {
        let outcome = self.finish_outcome()?;
        Ok(self.filtered(outcome))
    }

    /// End of message: the Milter's outcome.
    fn finish_outcome(&mut self) -> Result<Outcome> {
        self.enter(Phase::End)?;
        self.run(|c, m| c.end_of_message(m))?;
        match std::mem::replace(&mut self.state, State::Ended) {
            State::Decided(outcome) => Ok(outcome),
            State::Failed(e) => Err(e),
            _ => Err(Error::protocol("the conversation ended without an outcome")),
        }
    }

    /// The time since the message's first push went to the network.
    fn elapsed(&self) -> Duration {
        self.start.map(|s| s.0.elapsed()).unwrap_or_default()
    }

    /// The message's line at DEBUG≥1 (built only then: the escaped verdict is not free).
    fn log_verdict(&self, verdict: &verdict::Verdict, elapsed: Duration) {
        let peer = self.peer.as_deref().unwrap_or("");
        log::info!(
            "message {}: milter {peer}: {} in {} ms",
            self.id(),
            describe_verdict(verdict),
            elapsed.as_millis()
        );
    }

    fn filtered(&mut self, outcome: Outcome) -> Filtered {
        let verdict = verdict::build(&outcome, self.handle.verdict_options());
        let elapsed = self.elapsed();
        if self.handle.config().debug >= 1 {
            self.log_verdict(&verdict, elapsed);
        }
        let peer = self.peer.take().unwrap_or_else(|| Arc::from(""));
        Filtered {
            verdict,
            outcome,
            negotiation: std::mem::take(&mut self.negotiation),
            peer,
            elapsed,
        }
    }

    /// Runs a stage on the conversation: connects first if there is none, and replaces a kept
    /// connection that fails before any reply to this message (once) by a new one that is told
    /// the message so far.
    fn run(
        &mut self,
        mut f: impl FnMut(&mut Conversation<'a, TcpStream>, &Pushed<'_>) -> Result<()>,
    ) -> Result<()> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Decided(_) | State::Ended => return Ok(()),
            State::New | State::Talking(_) => {}
        }
        loop {
            let e = match self.attempt(&mut f) {
                Ok(()) => return self.after_stage(),
                Err(e) => e,
            };
            let unanswered = matches!(&self.state, State::Talking(c) if c.unanswered_on_kept())
                && matches!(e.kind, ErrorKind::Io | ErrorKind::Protocol);
            if !unanswered || self.fresh {
                return Err(self.fail(e));
            }
            if self.body_pushed {
                self.retry_whole = true;
                return Err(self.fail(e));
            }
            // Nothing of the message was answered, and all of it that went out is kept: it is
            // sent again, once, on a new connection.
            log::info!("{e}; the message is sent again on a new connection");
            self.note(|| {
                format!(
                    "the kept connection failed before any reply to this message: {e}; \
                     connecting anew"
                )
            });
            self.retire();
            self.fresh = true;
        }
    }

    /// Opens the conversation if needed (telling a new one what the message went through), then
    /// runs `f` on it.
    fn attempt(
        &mut self,
        f: &mut impl FnMut(&mut Conversation<'a, TcpStream>, &Pushed<'_>) -> Result<()>,
    ) -> Result<()> {
        if matches!(self.state, State::New) {
            self.open()?;
            if self.done != Done::default() {
                self.with(|c, m| c.redo(m))?;
            }
        }
        self.with(|c, m| match f(c, m) {
            // A bad message while the negotiation is still assumed: its reply still decides.
            Err(e) if e.kind == ErrorKind::Message => Err(c.settle_before(e)),
            r => r,
        })
    }

    /// Runs `f` on the conversation with what the message holds.
    fn with(
        &mut self,
        f: impl FnOnce(&mut Conversation<'a, TcpStream>, &Pushed<'_>) -> Result<()>,
    ) -> Result<()> {
        let State::Talking(c) = &mut self.state else {
            return Ok(());
        };
        let m = Pushed {
            env: self.env.get(),
            fields: &self.fields,
            done: self.done,
        };
        f(c, &m)
    }

    /// Connects (or takes a kept connection) and starts the conversation.
    fn open(&mut self) -> Result<()> {
        let config = self.handle.config();
        let first = self.start.is_none();
        let (start, deadline) = *self.start.get_or_insert_with(|| {
            let now = Instant::now();
            (now, now + config.message_timeout)
        });
        if first && !self.fresh {
            self.note(|| {
                format!(
                    "connecting to Milter {}:{}{}",
                    config.host,
                    config.port,
                    match config.socks_host.is_empty() {
                        true => String::new(),
                        false => format!(
                            " through SOCKS proxy {}:{}",
                            config.socks_host, config.socks_port
                        ),
                    }
                )
            });
        }
        let (conn, reused) = self.handle.connection(deadline, self.fresh)?;
        let peer = Arc::clone(&conn.peer);
        self.note(|| match &reused {
            Some(_) => format!("reusing the open connection to {peer}"),
            None => format!("connected to {peer} in {} ms", start.elapsed().as_millis()),
        });
        let resume = reused.map(|negotiation| Resume {
            negotiation,
            prove: self.handle.proves_step(),
        });
        let traced = self.transcript.is_some();
        let conv = Conversation::new(
            config,
            conn.stream,
            conn.peer,
            conn.timeouts,
            deadline,
            traced,
        );
        self.state = State::Talking(Box::new(conv));
        let State::Talking(c) = &mut self.state else {
            return Ok(());
        };
        c.start(resume)
    }

    /// After a stage: once the Milter has given its final word, the conversation ends (its
    /// connection kept for the next message where that is allowed, else closed).
    #[inline]
    fn after_stage(&mut self) -> Result<()> {
        match &self.state {
            State::Talking(c) if c.decided() => self.conclude(),
            // Most stages: the Milter has not decided (a field, a body piece under NR_*).
            _ => Ok(()),
        }
    }

    /// The Milter has decided: the conversation ends (see `after_stage`).
    #[inline(never)]
    fn conclude(&mut self) -> Result<()> {
        let State::Talking(c) = &mut self.state else {
            return Ok(());
        };
        let Some(outcome) = c.take_decided() else {
            return Ok(());
        };
        let State::Talking(c) = std::mem::replace(&mut self.state, State::New) else {
            return Ok(());
        };
        let peer = Arc::clone(c.peer());
        let keep = self.handle.config().connection_reuse > 0;
        let f = c.finish_boxed(&outcome, keep);
        if let Some(t) = self.transcript.as_mut() {
            t.extend(f.transcript);
        }
        self.negotiation = f.negotiation;
        if f.reusable {
            self.handle.give_back(Pooled {
                stream: f.stream,
                peer: Arc::clone(&peer),
                negotiation: self.negotiation.clone(),
                timeouts: f.timeouts,
            });
        }
        self.peer = Some(peer);
        self.state = State::Decided(outcome);
        Ok(())
    }

    /// Takes the conversation out of the message (keeping its transcript); dropping it closes
    /// its connection.
    fn retire(&mut self) -> Option<Box<Conversation<'a, TcpStream>>> {
        match std::mem::replace(&mut self.state, State::New) {
            State::Talking(mut c) => {
                let lines = c.take_transcript();
                if let Some(t) = self.transcript.as_mut() {
                    t.extend(lines);
                }
                Some(c)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The conversation failed: its connection is closed now, the error explained, logged, and
    /// kept for every later push.
    fn fail(&mut self, mut e: Error) -> Error {
        drop(self.retire());
        if let Some(h) = self.handle.hint(&e) {
            e.message = format!("{}: {h}", e.message);
        }
        let config = self.handle.config();
        log::error!(
            "message {}: milter {}:{}: failed after {} ms: {e}",
            self.id(),
            config.host,
            config.port,
            self.start
                .map(|s| s.0.elapsed().as_millis())
                .unwrap_or_default()
        );
        self.state = State::Failed(e.clone());
        e
    }

    /// The MTA's queue id (macro `i`), for log lines.
    fn id(&self) -> String {
        self.env
            .get()
            .macro_value(b"i")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "-".to_string())
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.transcript.as_mut() {
            t.push(line());
        }
    }

    /// A failure on a kept connection before any reply, after body bytes went out.
    pub(crate) fn retry_whole(&self) -> bool {
        self.retry_whole
    }

    /// The transcript so far, taken.
    pub(crate) fn take_transcript(&mut self) -> Vec<String> {
        if let State::Talking(c) = &mut self.state {
            let lines = c.take_transcript();
            if let Some(t) = self.transcript.as_mut() {
                t.extend(lines);
            }
        }
        self.transcript.take().unwrap_or_default()
    }

    /// The whole message at once (`Handle::filter`): its pushes, end of message, the verdict.
    pub(crate) fn filter(&mut self, content: Content<'a>) -> Result<Filtered> {
        if let Err(e) = content::drive(self, content) {
            if let State::Failed(_) = self.state {
                return Err(e);
            }
            // The MTA's message failed outside a stage (its read callback, while the header
            // section was read): the conversation ends here as on any failure.
            let e = match &mut self.state {
                State::Talking(c) if e.kind == ErrorKind::Message => c.settle_before(e),
                _ => e,
            };
            return Err(self.fail(e));
        }
        self.finish()
    }
}

fn env_len(env: &Env<'_>) -> usize {
    env.get().recipients.len()
}

impl<'a> Pushes<'a> for Message<'a> {
    fn envelope(&mut self) -> Result<()> {
        self.enter(Phase::Connect)?;
        self.connect_stage()?;
        self.enter(Phase::Mail)?;
        self.mail_stage()?;
        self.enter(Phase::Rcpt)?;
        for i in 0..env_len(&self.env) {
            self.rcpt_stage(i)?;
        }
        self.enter(Phase::Data)?;
        self.data_stage()
    }

    fn fields(&mut self) -> &mut HeaderSection {
        &mut self.fields
    }

    fn send_field(&mut self, index: usize) -> Result<()> {
        self.enter(Phase::Header)?;
        self.header_stage(index)
    }

    fn end_of_header(&mut self) -> Result<()> {
        self.enter(Phase::Eoh)?;
        self.eoh_stage()
    }

    fn body(&mut self, body: Body<'_, 'a, '_>) -> Result<()> {
        self.body_push(body)
    }

    fn decided(&self) -> bool {
        matches!(self.state, State::Decided(_))
    }
}

impl Drop for Message<'_> {
    #[inline] // in its drop glue: one function fewer entered a message
    fn drop(&mut self) {
        if let State::Talking(c) = std::mem::replace(&mut self.state, State::Ended) {
            log::debug!(
                "message {}: given up before end of message; the conversation is aborted",
                self.id()
            );
            drop(c.abort(self.done.mail));
        }
        let mut fields = std::mem::take(&mut self.fields);
        if fields.worth_keeping(SPARE_LIMIT) {
            fields.clear();
            let _ = SPARE_FIELDS.try_with(|s| *s.borrow_mut() = Some(fields));
        }
    }
}
