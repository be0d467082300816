//! A handle: one loaded option file, and everything needed to filter a message with it.
//! This is the safe Rust API that `ffi.rs` wraps; tests and Rust callers use it directly.

use crate::config::Config;
use crate::error::Result;
use crate::logging::LogSink;
use crate::message::{Content, Envelope};
use crate::net::Connection;
use crate::protocol::Negotiation;
use crate::push::Message;
use crate::session;
use crate::verdict::{Outcome, Verdict, VerdictKind, VerdictOptions};
use std::net::TcpStream;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The result of filtering one message.
#[derive(Debug, Clone)]
pub struct Filtered {
    /// What the MTA acts on.
    pub verdict: Verdict,
    /// What the Milter decided, in structured form.
    pub outcome: Outcome,
    /// What the Milter negotiated (effective values).
    pub negotiation: Negotiation,
    /// How the Milter was reached.
    pub peer: Arc<str>,
    /// Wall-clock time of the whole conversation.
    pub elapsed: Duration,
}

/// An opened option file. Safe to share between threads: every call to `filter` runs its own
/// Milter conversation, on its own connection (a kept one is used by one message at a time).
pub struct Handle {
    config: Config,
    verdict_options: VerdictOptions,
    log: Arc<LogSink>,
    /// Idle connections kept for the next message: CONNECTION_REUSE slots, each empty or
    /// holding one.
    pool: Vec<Slot>,
    /// Whether the Milter answers OPTNEG after QUIT_NC: UNKNOWN, ANSWERS or SILENT.
    optneg_after_quit_nc: AtomicU8,
}

const UNKNOWN: u8 = 0;
const ANSWERS: u8 = 1;
const SILENT: u8 = 2;

/// A connection kept open after a message that ended cleanly at end of message.
pub(crate) struct Pooled {
    pub stream: TcpStream,
    pub peer: Arc<str>,
    pub negotiation: Negotiation,
    /// The timeouts its last conversation left set.
    pub timeouts: crate::net::SocketTimeouts,
}

/// One slot of the pool: empty (null) or owning one idle connection, boxed. A connection is
/// taken out or put in with one atomic operation, so a thread looking at a slot sees either
/// the connection or none, never a slot "in use" by another thread (with a lock per slot, a
/// thread that found its own slot locked for a moment went on to take another thread's
/// connection, which then had to connect anew). A cache line each: every thread takes from and
/// puts into its own slot once a message.
#[repr(align(64))]
struct Slot(AtomicPtr<Pooled>);

// A slot hands its connection from one thread to another (AtomicPtr is Send and Sync whatever
// it points to, so this is checked here).
const _: () = {
    const fn send<T: Send>() {}
    send::<Pooled>();
};

impl Slot {
    fn empty() -> Slot {
        Slot(AtomicPtr::new(ptr::null_mut()))
    }

    /// The connection in the slot, leaving it empty.
    fn take(&self) -> Option<Box<Pooled>> {
        // A look before the swap, so that passing over empty slots writes nothing.
        if self.0.load(Ordering::Relaxed).is_null() {
            return None;
        }
        let p = self.0.swap(ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: a non-null pointer in a slot comes from Box::into_raw in `put`, and the swap
        // made this thread its one owner.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Puts `p` into the slot if it is empty; hands it back if not.
    fn put(&self, p: Box<Pooled>) -> std::result::Result<(), Box<Pooled>> {
        if !self.0.load(Ordering::Relaxed).is_null() {
            return Err(p);
        }
        let raw = Box::into_raw(p);
        match self
            .0
            .compare_exchange(ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Ok(()),
            // SAFETY: `raw` was not published (the exchange failed); this thread still owns it.
            Err(_) => Err(unsafe { Box::from_raw(raw) }),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        for slot in &self.pool {
            if let Some(mut p) = slot.take() {
                session::quit(&mut p.stream);
            }
        }
    }
}

/// This thread's place among the pool's slots: threads are numbered as they first filter.
fn thread_slot() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SLOT.try_with(|s| *s).unwrap_or(0)
}

/// Why a kept connection cannot serve another message.
enum Unusable {
    /// The Milter closed it (a restart, an idle timeout): nothing wrong.
    Closed,
    /// Bytes wait unread: the Milter sent more after its final reply, which the next message
    /// would pair with its own commands.
    Unread,
    /// The socket reports an error.
    Failed,
}

/// None when a kept connection can serve another message: still open, with nothing unread. One
/// system call, made when the connection is taken for a message rather than when it is kept, so
/// that it sees whatever came in between.
fn unusable(stream: &TcpStream) -> Option<Unusable> {
    match session::peek(stream) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Ok(0) => Some(Unusable::Closed),
        Ok(_) => Some(Unusable::Unread),
        Err(_) => Some(Unusable::Failed),
    }
}

impl Handle {
    /// Reads the option file and sets up logging at its DEBUG level.
    pub fn open(path: &Path) -> Result<Handle> {
        Ok(Handle::new(Config::from_file(path)?))
    }

    /// A handle for an already validated configuration.
    pub fn new(config: Config) -> Handle {
        let pool = (0..config.connection_reuse)
            .map(|_| Slot::empty())
            .collect();
        let log = LogSink::new(&config);
        let verdict_options = VerdictOptions {
            context_edits: config.context_edits,
            dialect: config.sieve_dialect,
            quarantine_folder: config.quarantine_folder.clone(),
            limits: config.sieve_limits,
        };
        log.run(|| {
            for warning in &config.warnings {
                log::warn!("{warning}");
            }
        });
        Handle {
            config,
            verdict_options,
            log,
            pool,
            optneg_after_quit_nc: AtomicU8::new(UNKNOWN),
        }
    }

    /// A connection for the next message: an idle one kept from an earlier message (with what
    /// was negotiated on it), or a new one.
    pub(crate) fn connection(
        &self,
        deadline: Instant,
        fresh: bool,
    ) -> Result<(Connection, Option<Negotiation>)> {
        while let Some(p) = self.take_pooled().filter(|_| !fresh) {
            let Some(why) = unusable(&p.stream) else {
                self.learn_whether_it_proves_step(deadline);
                return Ok((
                    Connection {
                        stream: p.stream,
                        peer: p.peer,
                        timeouts: p.timeouts,
                    },
                    Some(p.negotiation),
                ));
            };
            match why {
                Unusable::Unread => log::warn!(
                    "milter {}: sent more after its final reply; its kept connection is closed, \
                     not reused",
                    p.peer
                ),
                Unusable::Closed => {
                    log::debug!(
                        "milter {}: the kept connection was closed; not reused",
                        p.peer
                    )
                }
                Unusable::Failed => {
                    log::debug!("milter {}: the kept connection failed; not reused", p.peer)
                }
            }
        }
        crate::net::connect(&self.config, deadline).map(|c| (c, None))
    }

    /// Asks the Milter, the first time a kept connection is used, whether it answers OPTNEG
    /// after QUIT_NC (`crate::resume`): then every reused message proves its connection in
    /// step first. A failure to ask leaves the question for the next time.
    fn learn_whether_it_proves_step(&self, deadline: Instant) {
        if self.optneg_after_quit_nc.load(Ordering::Relaxed) != UNKNOWN {
            return;
        }
        match crate::resume::answers_optneg_after_quit_nc(&self.config, deadline) {
            Ok(answers) => {
                log::info!(
                    "milter {}:{}: {}",
                    self.config.host,
                    self.config.port,
                    if answers {
                        "answers OPTNEG after QUIT_NC: each reused connection is proven in \
                         step with it first"
                    } else {
                        "does not answer OPTNEG after QUIT_NC (libmilter): reused connections \
                         go on without that proof"
                    }
                );
                let v = if answers { ANSWERS } else { SILENT };
                self.optneg_after_quit_nc.store(v, Ordering::Relaxed);
            }
            Err(e) => {
                log::debug!("cannot ask whether the Milter answers OPTNEG after QUIT_NC: {e}")
            }
        }
    }

    /// A kept connection, if one is idle. The slots are looked at from this thread's own one
    /// on: an MTA thread usually gets back the connection it used last.
    fn take_pooled(&self) -> Option<Box<Pooled>> {
        let n = self.pool.len();
        if n == 0 {
            return None;
        }
        let first = thread_slot();
        (0..n).find_map(|i| self.pool[(first + i) % n].take())
    }

    /// Keeps a connection whose conversation ended cleanly at end of message in an empty slot,
    /// this thread's own first, or closes it (with QUIT) when every slot holds one.
    pub(crate) fn give_back(&self, p: Pooled) {
        let n = self.pool.len();
        let first = thread_slot();
        let mut p = Box::new(p);
        for i in 0..n {
            match self.pool[(first + i) % n].put(p) {
                Ok(()) => return,
                Err(back) => p = back,
            }
        }
        session::quit(&mut p.stream);
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one complete Milter conversation for one message and builds the verdict: the
    /// message's pushes (`push::Message`), made from the whole message.
    pub fn filter(&self, envelope: &Envelope, content: Content<'_>) -> Result<Filtered> {
        self.log.run(|| self.filter_logged(envelope, content, None))
    }

    /// As `filter`, and also returns a transcript of the conversation, one line per event: how
    /// the Milter was reached, what was negotiated, every packet each way (the check tool's
    /// output). The transcript is there whether the conversation succeeded or not.
    pub fn filter_traced(
        &self,
        envelope: &Envelope,
        content: Content<'_>,
    ) -> (Result<Filtered>, Vec<String>) {
        let mut transcript = Vec::new();
        let result = self
            .log
            .run(|| self.filter_logged(envelope, content, Some(&mut transcript)));
        (result, transcript)
    }

    /// The logger of this handle's options.
    pub(crate) fn log(&self) -> &Arc<LogSink> {
        &self.log
    }

    pub(crate) fn verdict_options(&self) -> &VerdictOptions {
        &self.verdict_options
    }

    /// Whether a kept connection proves itself in step before a message (`crate::resume`).
    pub(crate) fn proves_step(&self) -> bool {
        self.optneg_after_quit_nc.load(Ordering::Relaxed) == ANSWERS
    }

    /// Where an option's value comes from, for hints: `PORT at milter.opt:3` or
    /// `PORT (default)`.
    pub fn where_set(&self, name: &str) -> String {
        match self.config.sources.iter().find(|s| s.name == name) {
            Some(s) => match s.line {
                Some(line) => format!("{name} at {}:{line}", self.config.path),
                None => format!("{name} (not set in {}, default)", self.config.path),
            },
            None => name.to_string(),
        }
    }

    /// What an administrator can do about an error, appended to its message.
    pub(crate) fn hint(&self, e: &crate::Error) -> Option<String> {
        use crate::ErrorKind;
        let socks = !self.config.socks_host.is_empty();
        Some(match e.kind {
            ErrorKind::Connect if socks && e.message.contains("SOCKS proxy") => format!(
                "is the SOCKS proxy running? see {} and {}",
                self.where_set("SOCKS_HOST"),
                self.where_set("SOCKS_PORT")
            ),
            ErrorKind::Connect => format!(
                "is the Milter running and listening there? see {} and {}",
                self.where_set("HOST"),
                self.where_set("PORT")
            ),
            ErrorKind::Socks => format!(
                "check the proxy's rules and credentials: see {}, {} and {}",
                self.where_set("SOCKS_HOST"),
                self.where_set("SOCKS_USERNAME"),
                self.where_set("SOCKS_PASSWORD")
            ),
            ErrorKind::Timeout => {
                // The limit the message names (its own words), so the hint never contradicts it.
                let which = ["MESSAGE_TIMEOUT", "CONNECT_TIMEOUT"]
                    .into_iter()
                    .find(|n| e.message.contains(n))
                    .unwrap_or("TIMEOUT");
                format!(
                    "is the Milter overloaded or stuck? see {}",
                    self.where_set(which)
                )
            }
            ErrorKind::Protocol => format!(
                "the Milter's reply was not valid Milter protocol; {} shows the packets",
                if self.config.debug >= 2 {
                    "the DEBUG=2 log".to_string()
                } else {
                    format!("DEBUG=2 (now {})", self.where_set("DEBUG"))
                }
            ),
            _ => return None,
        })
    }

    fn filter_logged(
        &self,
        envelope: &Envelope,
        mut content: Content<'_>,
        mut transcript: Option<&mut Vec<String>>,
    ) -> Result<Filtered> {
        let mut fresh = false;
        let in_memory = matches!(content, Content::Buffer(_));
        loop {
            let this = match &mut content {
                Content::Buffer(b) => Content::Buffer(b),
                Content::Reader(r) => Content::Reader(&mut **r),
            };
            let mut message = Message::lent(self, envelope, transcript.is_some(), fresh);
            let result = message.filter(this);
            if let Some(t) = transcript.as_deref_mut() {
                t.append(&mut message.take_transcript());
            }
            // A kept connection that failed before any reply of this message arrived, after
            // body bytes went out: a message in memory is sent again whole, once, on a new
            // connection (the pushes could not send again what nobody keeps).
            let again = result.is_err() && message.retry_whole() && !fresh && in_memory;
            drop(message);
            if !again {
                return result;
            }
            if let Some(t) = transcript.as_deref_mut() {
                t.push(
                    "the kept connection failed before any reply to this message; \
                        connecting anew"
                        .to_string(),
                );
            }
            fresh = true;
        }
    }
}

pub(crate) fn describe_verdict(v: &Verdict) -> String {
    let mut text = match v.kind {
        VerdictKind::None => "no verdict".to_string(),
        VerdictKind::Defer => format!(
            "defer \"{}\"",
            crate::error::escape(v.reply.as_deref().unwrap_or(b""))
        ),
        VerdictKind::Sieve => format!("verdict \"{}\"", crate::error::escape(&v.script)),
    };
    // The recipients refused at RCPT have their own outcome: the log says which and how.
    for r in &v.recipients {
        text.push_str(&format!(
            "; recipient {} <{}> {} \"{}\"",
            r.index,
            crate::error::escape(&r.address),
            if r.tempfail { "defer" } else { "reject" },
            crate::error::escape(&r.reply)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;

    fn handle(reuse: u32) -> Handle {
        let text = format!("HOST=127.0.0.1\nPORT=1\nCONNECTION_REUSE={reuse}\n");
        Handle::new(Config::parse("test.opt", text.as_bytes()).expect("a valid option file"))
    }

    /// A kept connection's local port: what tells the test's connections apart.
    fn port(p: &Pooled) -> u16 {
        p.stream.local_addr().unwrap().port()
    }

    /// Kept connections to a listener of our own; each one's index is its local port's place.
    fn kept(n: usize) -> (TcpListener, Vec<Pooled>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pooled = (0..n)
            .map(|_| Pooled {
                stream: TcpStream::connect(addr).unwrap(),
                peer: Arc::from("127.0.0.1"),
                negotiation: Negotiation::default(),
                timeouts: Default::default(),
            })
            .collect();
        (listener, pooled)
    }

    #[test]
    fn threads_racing_for_slots_never_share_lose_or_double_a_connection() {
        let h = handle(4);
        let (_listener, pooled) = kept(4);
        let ports: Vec<u16> = pooled.iter().map(port).collect();
        for p in pooled {
            h.give_back(p);
        }
        // Which connection is out of the pool right now, by the index of its port.
        let out: Vec<AtomicBool> = ports.iter().map(|_| AtomicBool::new(false)).collect();
        let (h, ports, out) = (&h, &ports, &out);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(move || {
                    // Each thread takes a connection 2,000 times, trying until it gets one.
                    for _ in 0..2_000 {
                        let p = loop {
                            match h.take_pooled() {
                                Some(p) => break p,
                                None => std::thread::yield_now(),
                            }
                        };
                        let port = port(&p);
                        let i = ports.iter().position(|&q| q == port).expect("a known port");
                        assert!(
                            !out[i].swap(true, Ordering::SeqCst),
                            "connection {i} handed to two threads at once"
                        );
                        std::thread::yield_now();
                        out[i].store(false, Ordering::SeqCst);
                        h.give_back(*p);
                    }
                });
            }
        });
        // Four connections and four slots: none was closed for want of a slot, none doubled.
        let mut left: Vec<u16> = (0..4)
            .filter_map(|_| h.take_pooled())
            .map(|p| port(&p))
            .collect();
        left.sort_unstable();
        let mut want = ports.clone();
        want.sort_unstable();
        assert_eq!(left, want, "the pool lost or doubled a connection");
        assert!(h.take_pooled().is_none(), "more connections than were kept");
    }

    #[test]
    fn a_full_pool_closes_what_it_cannot_keep() {
        let h = handle(2);
        let (listener, pooled) = kept(3);
        let ports: Vec<u16> = pooled.iter().map(port).collect();
        let accepted: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        for p in pooled {
            h.give_back(p);
        }
        // The third found both slots taken: it got QUIT and was closed; the others are kept.
        let mut third = accepted
            .into_iter()
            .find(|a| a.peer_addr().unwrap().port() == ports[2])
            .unwrap();
        third
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut third, &mut got).unwrap();
        assert_eq!(
            got, b"\0\0\0\x01Q",
            "the connection the pool could not keep"
        );
        let mut kept: Vec<u16> = std::iter::from_fn(|| h.take_pooled())
            .map(|p| port(&p))
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, ports[..2].to_vec());
    }
}
