//! One BMI message (`BmiMessage`): a state machine over the engine's push API
//! (`crate::push::Message`). Each BMI call is one push, checked against the order Exim and
//! Messaging Server call them in:
//!
//! ```text
//! bmiProcessConnection  CONNECT (the client's IP only; no host name, no HELO)
//! bmiProcessFROM        MAIL
//! bmiAccumulateTO       RCPT, once per recipient
//! bmiEndTO              end of the envelope (DATA)
//! bmiAccumulateHeaders  HEADER, one whole field per call
//! bmiEndHeaders         EOH
//! bmiAccumulateBody     BODY, chunks of any size
//! bmiEndBody            (nothing on the wire: the body is complete)
//! bmiEndMessage         end of message: the verdicts
//! ```
//!
//! A call out of order, a bad argument, or a failure of the conversation ends the message: the
//! Milter conversation is dropped at once (its connection closed or handed back by the engine),
//! and every later call returns the same fatal error without doing anything. After
//! bmiEndMessage the message holds its verdicts and nothing else: MTAs do not always free it.

use super::error::{self, Failure};
use super::verdict::{self, Verdict};
use crate::handle::Handle;
use crate::message::Client;
use std::net::IpAddr;
use std::sync::Arc;

/// At most this many recipients per message (as the spamfilter_* API allows).
pub const MAX_RECIPIENTS: usize = 1 << 20;

/// A push message and the handle it borrows, kept together.
struct Pushed {
    // Declared before `handle`, so dropped before it: the message borrows the handle.
    message: crate::push::Message<'static>,
    handle: Arc<Handle>,
}

impl Pushed {
    fn new(handle: Arc<Handle>) -> Pushed {
        // SAFETY: the Handle lives in the Arc's allocation, which does not move and which this
        // struct keeps alive for at least as long as the message borrowing it: `message` is
        // dropped first (field order) or consumed by `end` while `handle` is still held. The
        // 'static lifetime never leaves this module's private struct.
        let h: &'static Handle = unsafe { &*Arc::as_ptr(&handle) };
        Pushed {
            message: h.message(),
            handle,
        }
    }
}

/// Where a message is between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    New,
    Connected,
    Sender,
    Recipients,
    EndOfRecipients,
    Header,
    Body,
    EndOfBody,
    /// Inside bmiEndMessage (the message's end runs in place, nothing of it moved out); seen
    /// by a later call only if that call panicked.
    Ending,
}

impl Step {
    /// The call that may come next, for the STATE error's text.
    fn expected(self) -> &'static str {
        match self {
            Step::New => "bmiProcessConnection",
            Step::Connected => "bmiProcessFROM",
            Step::Sender => "bmiAccumulateTO or bmiEndTO",
            Step::Recipients => "bmiAccumulateTO or bmiEndTO",
            Step::EndOfRecipients | Step::Header => "bmiAccumulateHeaders or bmiEndHeaders",
            Step::Body => "bmiAccumulateBody or bmiEndBody",
            Step::EndOfBody => "bmiEndMessage",
            Step::Ending => "nothing: bmiEndMessage did not finish",
        }
    }
}

// The large variant is the one a message lives in until its end; boxing it would be a second
// allocation per message.
#[allow(clippy::large_enum_variant)]
enum State {
    Open {
        /// In the message's own allocation: one per message (the C face boxes `Message`).
        pushed: Pushed,
        step: Step,
        /// How many recipients were pushed (the engine's envelope holds them: the verdicts
        /// name them from there).
        recipients: usize,
    },
    Ended(Vec<Verdict>),
    Failed(Failure),
}

/// What a message left at `Step::Ending` says (its error is made then, not for every
/// message).
fn unfinished() -> Failure {
    Failure::new(error::INTERNAL, "bmiEndMessage did not finish")
}

/// One message (`BmiMessage`).
pub struct Message {
    state: State,
}

// The MTA may hand a message from one thread to another between calls.
const _: () = {
    const fn send<T: Send>() {}
    send::<Message>();
};

/// One push of the message, by the BMI call that makes it.
pub enum Push<'a> {
    Connection(&'a [u8]),
    From(&'a [u8]),
    To(&'a [u8]),
    EndTo,
    Header(&'a [u8]),
    EndHeaders,
    Body(&'a [u8]),
    EndBody,
}

impl Push<'_> {
    fn call(&self) -> &'static str {
        match self {
            Push::Connection(_) => "bmiProcessConnection",
            Push::From(_) => "bmiProcessFROM",
            Push::To(_) => "bmiAccumulateTO",
            Push::EndTo => "bmiEndTO",
            Push::Header(_) => "bmiAccumulateHeaders",
            Push::EndHeaders => "bmiEndHeaders",
            Push::Body(_) => "bmiAccumulateBody",
            Push::EndBody => "bmiEndBody",
        }
    }

    /// The step this push may follow and the one it leads to; None when it may not come now.
    fn next_step(&self, now: Step) -> Option<Step> {
        use Step::*;
        Some(match (self, now) {
            (Push::Connection(_), New) => Connected,
            (Push::From(_), Connected) => Sender,
            (Push::To(_), Sender | Recipients) => Recipients,
            (Push::EndTo, Sender | Recipients) => EndOfRecipients,
            (Push::Header(_), EndOfRecipients | Header) => Header,
            (Push::EndHeaders, EndOfRecipients | Header) => Body,
            (Push::Body(_), Body) => Body,
            (Push::EndBody, Body) => EndOfBody,
            _ => return None,
        })
    }
}

/// The client's address as BMI gives it: an IPv4 or IPv6 address in text ("127.0.0.1" for a
/// local submission); empty means unknown.
fn client_addr(text: &[u8]) -> Result<Option<IpAddr>, Failure> {
    // The usual text, a plain IPv4 address, without the general parser (every message).
    if let Some(v4) = crate::net::dotted_quad(text) {
        return Ok(Some(IpAddr::V4(v4)));
    }
    let s = String::from_utf8_lossy(text);
    let t = s.trim();
    let bare = t
        .strip_prefix("IPv6:")
        .or_else(|| t.strip_prefix("ipv6:"))
        .unwrap_or(t)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if bare.is_empty() {
        return Ok(None);
    }
    bare.parse().map(Some).map_err(|_| {
        Failure::new(
            error::INVALID_ARG,
            format!(
                "bmiProcessConnection: \"{}\" is not an IPv4 or IPv6 address",
                crate::error::escape(text)
            ),
        )
    })
}

impl Message {
    /// A new message filtered through `handle`; nothing happens on the network yet.
    pub fn new(handle: Arc<Handle>) -> Message {
        Message {
            state: State::Open {
                pushed: Pushed::new(handle),
                step: Step::New,
                recipients: 0,
            },
        }
    }

    /// Ends the message with `f` (its conversation dropped) and returns `f`.
    fn fail(&mut self, f: Failure) -> Failure {
        self.state = State::Failed(f.clone());
        f
    }

    /// A bad argument to a push: it ends the message as a failed push does (unless it has
    /// ended or failed already: then that stands, and `f` is returned as is).
    pub fn fail_with(&mut self, f: Failure) -> Failure {
        match &self.state {
            State::Open {
                step: Step::Ending, ..
            } => unfinished(),
            State::Open { .. } => self.fail(f),
            State::Failed(first) => first.clone(),
            State::Ended(_) => f,
        }
    }

    /// Makes one push, in order.
    pub fn push(&mut self, push: Push<'_>) -> Result<(), Failure> {
        let (pushed, step, recipients) = match &mut self.state {
            State::Open {
                step: Step::Ending, ..
            } => return Err(unfinished()),
            State::Open {
                pushed,
                step,
                recipients,
            } => (pushed, step, recipients),
            State::Failed(f) => return Err(f.clone()),
            State::Ended(_) => {
                // The verdicts stay: a stray call after the end does not take them away.
                return Err(Failure::new(
                    error::STATE,
                    format!("{}: the message has ended (bmiEndMessage)", push.call()),
                ));
            }
        };
        let Some(next) = push.next_step(*step) else {
            let f = Failure::new(
                error::STATE,
                format!("{} out of order: expected {}", push.call(), step.expected()),
            );
            return Err(self.fail(f));
        };
        let m = &mut pushed.message;
        let done = match push {
            Push::Connection(ip) => match client_addr(ip) {
                Ok(addr) => m.connect(Client {
                    addr,
                    ..Client::default()
                }),
                Err(f) => return Err(self.fail(f)),
            },
            Push::From(sender) => m.mail(sender, &[]),
            Push::To(address) => {
                if *recipients >= MAX_RECIPIENTS {
                    let f = Failure::new(
                        error::INVALID_ARG,
                        format!("bmiAccumulateTO: more than {MAX_RECIPIENTS} recipients"),
                    );
                    return Err(self.fail(f));
                }
                *recipients += 1;
                m.rcpt(address, &[])
            }
            Push::EndTo => m.end_of_recipients(),
            Push::Header(field) => m.header(field),
            Push::EndHeaders => m.end_of_header(),
            Push::Body(chunk) => m.body(chunk),
            Push::EndBody => Ok(()),
        };
        match done {
            Ok(()) => {
                *step = next;
                Ok(())
            }
            Err(e) => {
                let f = Failure::from(e);
                let f = Failure::new(f.code, format!("{}: {}", push.call(), f.message));
                Err(self.fail(f))
            }
        }
    }

    /// bmiEndMessage: the end of the conversation, and the verdicts. The message ends where it
    /// lies: nothing of it (672 bytes) is moved out first.
    pub fn end(&mut self) -> Result<(), Failure> {
        let pushed = match &mut self.state {
            State::Open {
                pushed,
                step: step @ Step::EndOfBody,
                ..
            } => {
                *step = Step::Ending;
                pushed
            }
            State::Open {
                step: Step::Ending, ..
            } => return Err(unfinished()),
            State::Open { step, .. } => {
                let f = Failure::new(
                    error::STATE,
                    format!("bmiEndMessage out of order: expected {}", step.expected()),
                );
                return Err(self.fail(f));
            }
            State::Failed(f) => return Err(f.clone()),
            State::Ended(_) => {
                return Err(Failure::new(
                    error::STATE,
                    "bmiEndMessage: the message has ended already",
                ))
            }
        };
        let (outcome, envelope) = pushed.message.end_of_message_with_envelope();
        let verdicts = outcome
            .map_err(|e| {
                let f = Failure::from(e);
                Failure::new(f.code, format!("bmiEndMessage: {}", f.message))
            })
            .and_then(|o| {
                verdict::group(&envelope.recipients, &o, pushed.handle.verdict_options())
            });
        match verdicts {
            // The push message (its conversation over) and the handle's count go with `Open`.
            Ok(v) => {
                self.state = State::Ended(v);
                Ok(())
            }
            Err(f) => Err(self.fail(f)),
        }
    }

    /// The verdicts, once the message has ended.
    #[inline]
    pub fn verdicts(&self) -> Result<&[Verdict], Failure> {
        match &self.state {
            State::Ended(v) => Ok(v),
            State::Failed(f) => Err(f.clone()),
            State::Open {
                step: Step::Ending, ..
            } => Err(unfinished()),
            State::Open { step, .. } => Err(Failure::new(
                error::STATE,
                format!(
                    "no verdicts before bmiEndMessage (the message expects {} next)",
                    step.expected()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_as_bmi_callers_give_them() {
        assert_eq!(
            client_addr(b"127.0.0.1").unwrap(),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            client_addr(b"IPv6:[::1]").unwrap(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(
            client_addr(b" 2001:db8::5 ").unwrap(),
            Some("2001:db8::5".parse().unwrap())
        );
        assert_eq!(client_addr(b"").unwrap(), None);
        let e = client_addr(b"mx.example.org").unwrap_err();
        assert_eq!(e.code, error::INVALID_ARG);
        assert!(e.message.contains("\"mx.example.org\""), "{}", e.message);
    }

    fn message() -> Message {
        let config = crate::Config::parse("t.opt", b"HOST=127.0.0.1\nPORT=1\n").unwrap();
        Message::new(Arc::new(Handle::new(config)))
    }

    #[test]
    fn a_push_out_of_order_ends_the_message_and_every_later_call_says_so() {
        let mut m = message();
        let e = m.push(Push::From(b"a@b")).unwrap_err();
        assert_eq!(e.code, error::STATE);
        assert!(
            e.message.contains("expected bmiProcessConnection"),
            "{}",
            e.message
        );
        // The same error again, whatever comes next, and no verdicts.
        assert_eq!(m.push(Push::Connection(b"127.0.0.1")).unwrap_err(), e);
        assert_eq!(m.end().unwrap_err(), e);
        assert_eq!(m.verdicts().unwrap_err(), e);
    }

    #[test]
    fn every_out_of_order_pair_is_refused() {
        use Step::*;
        let pushes = [
            Push::Connection(b""),
            Push::From(b""),
            Push::To(b""),
            Push::EndTo,
            Push::Header(b""),
            Push::EndHeaders,
            Push::Body(b""),
            Push::EndBody,
        ];
        let steps = [
            New,
            Connected,
            Sender,
            Recipients,
            EndOfRecipients,
            Header,
            Body,
            EndOfBody,
        ];
        let mut allowed = 0;
        for s in steps {
            for p in &pushes {
                if p.next_step(s).is_some() {
                    allowed += 1;
                }
            }
        }
        // Exactly the transitions of the call order: 1+1+2+2+2+2+2+0.
        assert_eq!(allowed, 12);
    }
}
