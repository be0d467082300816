//! A handle: one loaded option file, and everything needed to filter a message with it.
//! This is the safe Rust API that `ffi.rs` wraps; tests and Rust callers use it directly.

use crate::config::Config;
use crate::error::Result;
use crate::logging::LogSink;
use crate::message::{Content, Envelope};
use crate::net::Connection;
use crate::protocol::Negotiation;
use crate::session;
use crate::verdict::{self, Outcome, Verdict, VerdictKind, VerdictOptions};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    pool: Vec<Mutex<Option<Pooled>>>,
}

/// A connection kept open after a message that ended cleanly at end of message.
struct Pooled {
    stream: TcpStream,
    peer: Arc<str>,
    negotiation: Negotiation,
    /// The timeouts its last conversation left set.
    timeouts: crate::net::SocketTimeouts,
}

impl Drop for Handle {
    fn drop(&mut self) {
        for slot in &mut self.pool {
            let kept = slot.get_mut().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut p) = kept {
                session::quit(&mut p.stream);
            }
        }
    }
}

/// A pool slot, unless another thread is using it right now (never waited for).
fn free_slot(slot: &Mutex<Option<Pooled>>) -> Option<std::sync::MutexGuard<'_, Option<Pooled>>> {
    match slot.try_lock() {
        Ok(guard) => Some(guard),
        // A poisoned lock only means another thread panicked holding it; the slot's value is
        // whole (take and put cannot panic half-way).
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
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
            .map(|_| Mutex::new(None))
            .collect();
        let log = LogSink::new(&config);
        let verdict_options = VerdictOptions {
            context_edits: config.context_edits,
            dialect: config.sieve_dialect,
            quarantine_folder: config.quarantine_folder.clone(),
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
        }
    }

    /// A connection for the next message: an idle one kept from an earlier message (with what
    /// was negotiated on it), or a new one.
    fn connection(&self, deadline: Instant) -> Result<(Connection, Option<Negotiation>)> {
        while let Some(p) = self.take_pooled() {
            let Some(why) = unusable(&p.stream) else {
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

    /// A kept connection, if one is idle. The slots are looked at from this thread's own one
    /// on, and one that another thread is using right now is passed over, never waited for: an
    /// MTA thread usually gets back the connection it used last, and threads never queue on a
    /// lock whose holder the scheduler has just preempted.
    fn take_pooled(&self) -> Option<Pooled> {
        let n = self.pool.len();
        if n == 0 {
            return None;
        }
        let first = thread_slot();
        (0..n).find_map(|i| free_slot(&self.pool[(first + i) % n])?.take())
    }

    /// Keeps a connection whose conversation ended cleanly at end of message in a free slot,
    /// this thread's own first, or closes it (with QUIT) when every slot is taken.
    fn give_back(&self, p: Pooled) {
        let n = self.pool.len();
        let first = thread_slot();
        let mut p = Some(p);
        for i in 0..n {
            let Some(mut slot) = free_slot(&self.pool[(first + i) % n]) else {
                continue;
            };
            if slot.is_none() {
                *slot = p.take();
                return;
            }
        }
        if let Some(mut p) = p {
            session::quit(&mut p.stream);
        }
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one complete Milter conversation for one message and builds the verdict.
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
    fn hint(&self, e: &crate::Error) -> Option<String> {
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
        content: Content<'_>,
        mut transcript: Option<&mut Vec<String>>,
    ) -> Result<Filtered> {
        let start = Instant::now();
        let deadline = start + self.config.message_timeout;
        let id = || {
            envelope
                .macro_value(b"i")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "-".to_string())
        };
        if let Some(t) = transcript.as_deref_mut() {
            t.push(format!(
                "connecting to Milter {}:{}{}",
                self.config.host,
                self.config.port,
                if self.config.socks_host.is_empty() {
                    String::new()
                } else {
                    format!(
                        " through SOCKS proxy {}:{}",
                        self.config.socks_host, self.config.socks_port
                    )
                }
            ));
        }
        let keep = self.config.connection_reuse > 0;
        let result = self.connection(deadline).and_then(|(conn, reused)| {
            if let Some(t) = transcript.as_deref_mut() {
                match &reused {
                    Some(_) => t.push(format!("reusing the open connection to {}", conn.peer)),
                    None => t.push(format!(
                        "connected to {} in {} ms",
                        conn.peer,
                        start.elapsed().as_millis()
                    )),
                }
            }
            let mut stream = conn.stream;
            let ended = session::run(
                &self.config,
                &mut stream,
                &conn.peer,
                envelope,
                content,
                deadline,
                transcript,
                reused,
                keep,
                conn.timeouts,
            )?;
            if ended.reusable {
                self.give_back(Pooled {
                    stream,
                    peer: Arc::clone(&conn.peer),
                    negotiation: ended.negotiation.clone(),
                    timeouts: ended.timeouts,
                });
            }
            Ok((ended.outcome, ended.negotiation, conn.peer))
        });
        let elapsed = start.elapsed();
        match result {
            Ok((outcome, negotiation, peer)) => {
                let verdict = verdict::build(&outcome, &self.verdict_options);
                // Built only when this handle logs at DEBUG≥1: the escaped verdict is not free.
                if self.config.debug >= 1 {
                    log::info!(
                        "message {}: milter {peer}: {} in {} ms",
                        id(),
                        describe_verdict(&verdict),
                        elapsed.as_millis()
                    );
                }
                Ok(Filtered {
                    verdict,
                    outcome,
                    negotiation,
                    peer,
                    elapsed,
                })
            }
            Err(mut e) => {
                if let Some(h) = self.hint(&e) {
                    e.message = format!("{}: {h}", e.message);
                }
                log::error!(
                    "message {}: milter {}:{}: failed after {} ms: {e}",
                    id(),
                    self.config.host,
                    self.config.port,
                    elapsed.as_millis()
                );
                Err(e)
            }
        }
    }
}

fn describe_verdict(v: &Verdict) -> String {
    match v.kind {
        VerdictKind::None => "no verdict".to_string(),
        VerdictKind::Defer => format!(
            "defer \"{}\"",
            crate::error::escape(v.reply.as_deref().unwrap_or(b""))
        ),
        VerdictKind::Sieve => format!("verdict \"{}\"", crate::error::escape(&v.script)),
    }
}
