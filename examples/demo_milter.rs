//! The demo Milter of `make run`: a small Milter server that decides each message from its
//! content, so that the sample messages in `examples/messages` show every kind of verdict the
//! library builds. It is built on the `miltr-server` crate, a dev-dependency that never reaches
//! the shipped library.
//!
//! ```text
//! demo_milter [ADDRESS:PORT]     default 127.0.0.1:8891; port 0 takes a free port
//! ```
//!
//! The first line on stdout is the port it listens on (so a script can start it on port 0 and
//! read the port back); stderr gets one line per message saying what it decided. SIGTERM or
//! SIGINT stops it. Each connection is served on its own task, with its own state.
//!
//! The decision is taken at end of message; the first rule that matches wins:
//!
//! - Subject contains "reject": REPLYCODE `550 5.7.1 ...` (a reject);
//! - Subject contains "defer": REPLYCODE `451 4.7.1 ...` (a tempfail);
//! - Subject contains "discard": DISCARD;
//! - the body holds the GTUBE-like test word, or Subject contains "spam": ADDHEADER
//!   `X-Spam-Flag: YES`, CHGHEADER the first Subject to `[SPAM] <old subject>`, ADDHEADER
//!   `X-Demo-Milter: scanned`, CONTINUE;
//! - anything else: ADDHEADER `X-Demo-Milter: scanned`, CONTINUE.
//!
//! Subjects are matched without regard to case. It asks only for the actions it uses (ADDHDRS and
//! CHGHDRS) and for every protocol step (no SKIP, no "no reply" flags), which keeps it simple.

use async_trait::async_trait;
use miltr_common::actions::{Action, Continue, Discard, Replycode};
use miltr_common::commands::{Body, Header, Mail};
use miltr_common::modifications::headers::{AddHeader, ChangeHeader};
use miltr_common::modifications::ModificationResponse;
use miltr_common::optneg::{Capability, OptNeg};
use miltr_common::ProtocolError;
use miltr_server::{Milter, Server};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::compat::TokioAsyncReadCompatExt;

const DEFAULT_ADDRESS: &str = "127.0.0.1:8891";

/// The GTUBE-like test word: a body that contains it is spam.
const TEST_WORD: &[u8] = b"XJS*C4JDBQADN1.NSBGSR";

/// The only actions this Milter ever sends; asking for more would be asking for trust it does
/// not need.
const ACTIONS: Capability = Capability::SMFIF_ADDHDRS.union(Capability::SMFIF_CHGHDRS);

/// What this Milter decided for one message.
enum Decision {
    Reject(String),
    Defer(String),
    Discard(String),
    Spam(String),
    Clean,
}

/// What one connection has seen of the current message; reset at MAIL, ABORT and end of message.
#[derive(Default)]
struct DemoMilter {
    sender: String,
    /// The value of the first Subject field (the one CHGHEADER index 1 addresses).
    subject: Option<String>,
    test_word_seen: bool,
    /// The end of the body seen so far, so that the test word is found across BODY chunks.
    tail: Vec<u8>,
}

impl DemoMilter {
    fn reset_message(&mut self) {
        self.sender.clear();
        self.subject = None;
        self.test_word_seen = false;
        self.tail.clear();
    }

    fn decide(&self) -> Decision {
        let subject = self.subject.as_deref().unwrap_or("").to_lowercase();
        if subject.contains("reject") {
            Decision::Reject(r#"the Subject contains "reject""#.into())
        } else if subject.contains("defer") {
            Decision::Defer(r#"the Subject contains "defer", try again later"#.into())
        } else if subject.contains("discard") {
            Decision::Discard(r#"the Subject contains "discard""#.into())
        } else if self.test_word_seen {
            Decision::Spam("the body contains the test word".into())
        } else if subject.contains("spam") {
            Decision::Spam(r#"the Subject contains "spam""#.into())
        } else {
            Decision::Clean
        }
    }
}

#[async_trait]
impl Milter for DemoMilter {
    type Error = io::Error;

    async fn option_negotiation(
        &mut self,
        theirs: OptNeg,
    ) -> Result<OptNeg, miltr_server::Error<Self::Error>> {
        // As libmilter does: an MTA that cannot take the edits this filter makes is refused.
        if !theirs.capabilities.contains(ACTIONS) {
            return Err(miltr_server::Error::Impl {
                source: io::Error::other(format!(
                    "the MTA offers actions {:?}, but this Milter needs ADDHDRS and CHGHDRS",
                    theirs.capabilities
                )),
            });
        }
        let ours = OptNeg {
            capabilities: ACTIONS,
            ..OptNeg::default()
        };
        let agreed = ours
            .merge_compatible(&theirs)
            .map_err(ProtocolError::CompatibilityError)?;
        Ok(agreed)
    }

    async fn mail(&mut self, mail: Mail) -> Result<Action, Self::Error> {
        self.reset_message();
        self.sender = mail.sender().into_owned();
        Ok(Continue.into())
    }

    async fn header(&mut self, header: Header) -> Result<Action, Self::Error> {
        if self.subject.is_none() && header.name().eq_ignore_ascii_case("Subject") {
            // Bytes that are not UTF-8 become U+FFFD here (miltr hands out text only); for a
            // demo that only prefixes the Subject, that is acceptable.
            self.subject = Some(header.value().into_owned());
        }
        Ok(Continue.into())
    }

    async fn body(&mut self, body: Body) -> Result<Action, Self::Error> {
        if !self.test_word_seen {
            let mut window = std::mem::take(&mut self.tail);
            window.extend_from_slice(body.as_bytes());
            self.test_word_seen = window.windows(TEST_WORD.len()).any(|w| w == TEST_WORD);
            let keep = window.len().saturating_sub(TEST_WORD.len() - 1);
            self.tail = window.split_off(keep);
        }
        Ok(Continue.into())
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, Self::Error> {
        let subject = self.subject.clone().unwrap_or_default();
        let mut edits = ModificationResponse::builder();
        let (response, said) = match self.decide() {
            Decision::Reject(why) => {
                let text = format!("Rejected by the demo Milter: {why}");
                let said = format!("reject: 550 5.7.1 {text}");
                (
                    edits.build(Replycode::new([5, 5, 0], [5, 7, 1], &text)),
                    said,
                )
            }
            Decision::Defer(why) => {
                let text = format!("Deferred by the demo Milter: {why}");
                let said = format!("tempfail: 451 4.7.1 {text}");
                (
                    edits.build(Replycode::new([4, 5, 1], [4, 7, 1], &text)),
                    said,
                )
            }
            Decision::Discard(why) => (edits.build(Discard), format!("discard: {why}")),
            Decision::Spam(why) => {
                edits.push(AddHeader::new(b"X-Spam-Flag", b"YES"));
                let tagged = format!("[SPAM] {}", subject.trim_start());
                if self.subject.is_some() {
                    edits.push(ChangeHeader::new(1, b"Subject", tagged.as_bytes()));
                } else {
                    edits.push(AddHeader::new(b"Subject", tagged.as_bytes()));
                }
                edits.push(AddHeader::new(b"X-Demo-Milter", b"scanned"));
                let said = format!(
                    "spam ({why}): add X-Spam-Flag: YES, Subject to {tagged:?}, \
                     add X-Demo-Milter: scanned, continue"
                );
                (edits.contin(), said)
            }
            Decision::Clean => {
                edits.push(AddHeader::new(b"X-Demo-Milter", b"scanned"));
                let said = "clean: add X-Demo-Milter: scanned, continue".to_string();
                (edits.contin(), said)
            }
        };
        // Written before the answer goes out, so that the line is there when the MTA has it.
        eprintln!(
            "demo_milter: <{}> {:?}: {said}",
            self.sender.trim_start_matches('<').trim_end_matches('>'),
            subject.trim_start()
        );
        self.reset_message();
        Ok(response)
    }

    async fn abort(&mut self) -> Result<(), Self::Error> {
        self.reset_message();
        Ok(())
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr) {
    // The edits at end of message go out as several small packets; without NODELAY each one after
    // the first waits for the MTA's delayed ACK (some 40 ms on Linux).
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("demo_milter: connection from {peer}: TCP_NODELAY: {e}");
    }
    let mut milter = DemoMilter::default();
    let mut server = Server::default_postfix(&mut milter);
    if let Err(e) = server.handle_connection(stream.compat()).await {
        eprintln!("demo_milter: connection from {peer}: {e}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
    if args.next().is_some() || address.starts_with('-') {
        eprintln!("usage: demo_milter [ADDRESS:PORT]   (default {DEFAULT_ADDRESS}; port 0: any)");
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(&address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo_milter: cannot listen on {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("demo_milter: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo_milter: {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The port goes out only now that connections are accepted, and after the line on stderr,
    // so that a script reading the port finds the start-up line already there.
    eprintln!("demo_milter: listening on {local}");
    let mut out = io::stdout();
    if writeln!(out, "{}", local.port())
        .and_then(|()| out.flush())
        .is_err()
    {
        eprintln!("demo_milter: cannot write the port to stdout");
        return ExitCode::FAILURE;
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve(stream, peer));
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little instead of spinning.
                    eprintln!("demo_milter: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => {
                eprintln!("demo_milter: SIGTERM, stopping");
                break;
            }
            _ = int.recv() => {
                eprintln!("demo_milter: SIGINT, stopping");
                break;
            }
        }
    }
    ExitCode::SUCCESS
}
