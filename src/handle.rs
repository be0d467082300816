//! A handle: one loaded option file, and everything needed to filter a message with it.
//! This is the safe Rust API that `ffi.rs` wraps; tests and Rust callers use it directly.

use crate::config::Config;
use crate::error::Result;
use crate::logging::LogSink;
use crate::message::{Content, Envelope};
use crate::protocol::Negotiation;
use crate::session;
use crate::verdict::{self, Outcome, Verdict, VerdictKind, VerdictOptions};
use std::path::Path;
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
    pub peer: String,
    /// Wall-clock time of the whole conversation.
    pub elapsed: Duration,
}

/// An opened option file. Safe to share between threads: every call to `filter` runs its own
/// Milter conversation.
pub struct Handle {
    config: Config,
    verdict_options: VerdictOptions,
    log: Arc<LogSink>,
}

impl Handle {
    /// Reads the option file and sets up logging at its DEBUG level.
    pub fn open(path: &Path) -> Result<Handle> {
        Ok(Handle::new(Config::from_file(path)?))
    }

    /// A handle for an already validated configuration.
    pub fn new(config: Config) -> Handle {
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
        }
    }

    /// The configuration this handle was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one complete Milter conversation for one message and builds the verdict.
    pub fn filter(&self, envelope: &Envelope, content: Content<'_>) -> Result<Filtered> {
        self.log.run(|| self.filter_logged(envelope, content))
    }

    fn filter_logged(&self, envelope: &Envelope, content: Content<'_>) -> Result<Filtered> {
        let start = Instant::now();
        let deadline = start + self.config.message_timeout;
        let id = envelope
            .macro_value(b"i")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "-".to_string());
        let result = crate::net::connect(&self.config, deadline).and_then(|conn| {
            let mut stream = conn.stream;
            let mut reader: Box<dyn std::io::Read + '_> = match content {
                Content::Buffer(bytes) => Box::new(bytes),
                Content::Reader(r) => Box::new(r),
            };
            session::run(
                &self.config,
                &mut stream,
                &conn.peer,
                envelope,
                &mut *reader,
                deadline,
            )
            .map(|(outcome, negotiation)| (outcome, negotiation, conn.peer))
        });
        let elapsed = start.elapsed();
        match result {
            Ok((outcome, negotiation, peer)) => {
                let verdict = verdict::build(&outcome, &self.verdict_options);
                log::info!(
                    "message {id}: milter {peer}: {} in {} ms",
                    describe_verdict(&verdict),
                    elapsed.as_millis()
                );
                Ok(Filtered {
                    verdict,
                    outcome,
                    negotiation,
                    peer,
                    elapsed,
                })
            }
            Err(e) => {
                log::error!(
                    "message {id}: milter {}:{}: failed after {} ms: {e}",
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
