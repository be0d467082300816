//! One Milter conversation for one message, as Postfix's milter8.c runs it: negotiate, then one
//! event per SMTP stage (its macros, the command unless the Milter asked not to get it, and the
//! reply unless it asked not to answer), the header and body streamed from the MTA's message,
//! the edits at end of message, QUIT. Packets that need no reply are held and written together
//! with the next one that does, so a conversation costs the fewest round trips the negotiation
//! allows. Any protocol error ends the conversation at once: replies may already be in flight.
//!
//! While the Milter answers OPTNEG, the message is already encoded on the negotiation this thread
//! had with the same Milter last; the answer is read before anything else is written and must be
//! the same, byte for byte, or the message is encoded again on what it says (`settle`).

use crate::config::Config;
use crate::error::escape;
use crate::error::{Error, Result};
use crate::message::{bare_macro_name, Content, Envelope};
use crate::net::SocketTimeouts;
use crate::protocol::consts::*;
use crate::protocol::{self, ConnectAddr, Negotiation, Reply, MAX_DATA_LEN};
use crate::scan::{find_bare_lf, find_lf};
use crate::verdict::{
    Disposition, Edit, Header, Outcome, RecipientReject, Stage, DEFAULT_REJECT, DEFAULT_TEMPFAIL,
};
use log::{debug, trace, warn};
use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

mod limits;

/// The actions we offer: all of them, as sendmail and Postfix do. libmilter drops a Milter that
/// registered an action the MTA did not offer ("does not fulfill action requirements"), and
/// real ones register what they might use (spamass-milter CHGBODY, mimedefang everything). What
/// a verdict cannot carry (CHGFROM, the new body of REPLBODY) is logged and left out.
pub const OFFERED_ACTIONS: u32 = SMFIF_ADDHDRS
    | SMFIF_CHGBODY
    | SMFIF_ADDRCPT
    | SMFIF_DELRCPT
    | SMFIF_CHGHDRS
    | SMFIF_QUARANTINE
    | SMFIF_CHGFROM
    | SMFIF_ADDRCPT_PAR
    | SMFIF_SETSYMLIST;

/// The actions a protocol version defines: version 2 (and 3, 4) know the first six.
pub fn offered_actions(version: u32) -> u32 {
    if version >= 6 {
        OFFERED_ACTIONS
    } else {
        OFFERED_ACTIONS & 0x3F
    }
}

/// The protocol bits we can honour, per offered version (as Postfix's table: 2, 3, 4, 6).
pub fn offered_protocol(version: u32) -> u32 {
    let v2 = SMFIP_NOCONNECT
        | SMFIP_NOHELO
        | SMFIP_NOMAIL
        | SMFIP_NORCPT
        | SMFIP_NOBODY
        | SMFIP_NOHDRS
        | SMFIP_NOEOH;
    match version {
        2 => v2,
        3 => v2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN,
        4 | 5 => v2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA,
        _ => {
            v2 | SMFIP_NR_HDR
                | SMFIP_NOUNKNOWN
                | SMFIP_NODATA
                | SMFIP_SKIP
                | SMFIP_NR_CONN
                | SMFIP_NR_HELO
                | SMFIP_NR_MAIL
                | SMFIP_NR_RCPT
                | SMFIP_NR_DATA
                | SMFIP_NR_UNKN
                | SMFIP_NR_EOH
                | SMFIP_NR_BODY
                | SMFIP_HDR_LEADSPC
        }
    }
}

/// Macros sent at each stage when the Milter asks for no list of its own: sendmail's and Postfix's
/// defaults together. A macro the MTA has no value for is left out.
pub const DEFAULT_MACROS: [&[&[u8]]; 7] = [
    // CONNECT
    &[
        b"j",
        b"_",
        b"{daemon_name}",
        b"{daemon_addr}",
        b"{if_name}",
        b"{if_addr}",
        b"{client_addr}",
        b"{client_name}",
        b"{client_port}",
        b"{client_ptr}",
        b"v",
    ],
    // HELO
    &[
        b"{tls_version}",
        b"{cipher}",
        b"{cipher_bits}",
        b"{cert_subject}",
        b"{cert_issuer}",
    ],
    // ENVFROM
    &[
        b"i",
        b"{auth_type}",
        b"{auth_authen}",
        b"{auth_ssf}",
        b"{auth_author}",
        b"{mail_mailer}",
        b"{mail_host}",
        b"{mail_addr}",
    ],
    // ENVRCPT
    &[b"i", b"{rcpt_mailer}", b"{rcpt_host}", b"{rcpt_addr}"],
    // DATA
    &[b"i"],
    // EOM
    &[b"i", b"{msg_id}"],
    // EOH
    &[b"i"],
];

/// Largest header section we read; past it the message is refused as malformed input.
pub const MAX_HEADER_SECTION: usize = 4 << 20;

/// Holding at most this many unsent bytes, the session writes them out even without a reply due
/// (a long body under NR_BODY).
const WRITE_HIGH_WATER: usize = 256 << 10;

/// What a socket timeout is set for (`Conversation::arm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A small write with nothing unanswered before it, and the read of its reply: together
    /// bounded by one timeout.
    QuickExchange,
    /// A read of its own (another packet of a reply, PROGRESS): bounded by one timeout.
    Read,
    /// Any other write: it may take more than one timeout, so the clock is read after it too.
    LongWrite,
}

/// At most this many parts of the message are spliced into one write.
const MAX_SPLICED: usize = 8;

/// A part of the message this long or longer is spliced into the write instead of copied: a
/// copy of less costs less than the bookkeeping.
const SPLICE_MIN: usize = 16 << 10;

/// Message bytes written as they are after the first `at` bytes of the write buffer.
struct Splice<'m> {
    at: usize,
    bytes: &'m [u8],
}

/// A packet we send, for the transcript and the DEBUG=2 log.
fn trace_packet(
    transcript: Option<&mut Vec<String>>,
    trace_packets: bool,
    peer: &str,
    cmd: u8,
    data: &[u8],
) {
    if let Some(t) = transcript {
        t.push(protocol::trace::describe(true, cmd, data));
    }
    if trace_packets {
        debug!(
            "milter {peer}: {}\n{}",
            protocol::trace::describe(true, cmd, data),
            protocol::trace::hexdump(&data[..data.len().min(4096)])
        );
    }
}

/// A write this small fits in a TCP socket's send buffer (16 KiB by default, and it only grows
/// from there): when nothing else is unsent it never blocks.
const SMALL_WRITE: usize = 4096;

/// What a command's reply means for the conversation.
enum Answer {
    /// Go on (CONTINUE, or no reply expected).
    Continue,
    /// SKIP: send no more of this kind of event.
    Skip,
    /// A final decision.
    Final(Disposition, Option<Vec<u8>>),
}

struct Conversation<'a, 'm, S: Read + Write + Timeouts> {
    stream: &'a mut S,
    /// Every packet, described (the check tool's transcript), when asked for.
    transcript: Option<&'a mut Vec<String>>,
    peer: &'a str,
    out: Vec<u8>,
    /// Parts of the MTA's message that go out as they are, without a copy: each is written
    /// after the first `at` bytes of `out` (a BODY packet's header), in order.
    spliced: Vec<Splice<'m>>,
    /// Replies as read: `rbuf[rpos..rend]` is unread; the storage past `rend` is reused, never
    /// zero-filled again.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    timeout: Duration,
    deadline: Instant,
    /// The timeouts set on the socket now (to save system calls).
    timeouts: SocketTimeouts,
    /// The last write was armed and small enough never to block, so the read of its reply
    /// may run on the same arming: no second look at the clock (one per round trip).
    read_armed: bool,
    /// Quick exchanges that may still run on the timeouts set without reading the clock (see
    /// `arm`).
    quick_exchanges: u32,
    /// Bytes were written that no reply has answered yet (a long body under NR_BODY): they may
    /// still fill the socket's send buffer.
    unanswered: bool,
    neg: Negotiation,
    /// The message's header fields, as parsed.
    headers: HeaderSection,
    /// Edits, quarantine at end of message.
    edits: Vec<Edit>,
    /// REPLBODY came (kept once among the edits).
    body_replaced: bool,
    /// What the Milter has sent for the verdict, against MAX_EDITS and the other limits.
    budget: limits::Budget,
    quarantine: Option<Vec<u8>>,
    trace_packets: bool,
    /// Every read and write is logged in hex (DEBUG=3). Asked once per message: the question
    /// goes through the logger's dispatch each time.
    trace_io: bool,
    /// The command whose reply was read last, once one was.
    replied_to: Option<&'static str>,
    /// The message is being encoded on the negotiation this thread last had with this Milter,
    /// while the Milter works on its reply to OPTNEG: the reply is read before anything else
    /// is written or read (`settle`), and must be the same, byte for byte.
    assumed: bool,
    /// The reply to OPTNEG was not the one assumed: what was encoded is void, and the message
    /// is encoded again on the negotiation it gave.
    reencode: bool,
    /// The protocol version offered in OPTNEG.
    offered_version: u32,
    /// On a kept connection: set when the first reply of this message arrives (see `Resume`).
    answered: Option<&'a std::cell::Cell<bool>>,
}

/// Stream timeouts, so that the session can bound every read and write.
pub trait Timeouts: Write {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()>;
    fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()>;
    /// Writes all of `parts`, in order (as `write_all` of their concatenation).
    fn send_all_vectored(&mut self, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        all_vectored(parts, |p| self.write_vectored(p))
    }
    /// Acknowledge what arrives at once instead of delaying the ACK: a Milter that writes two
    /// reply packets without TCP_NODELAY (opendkim: INSHEADER, then ACCEPT) otherwise has its
    /// second packet held by Nagle's algorithm until our delayed ACK, 40 ms on every message.
    fn quickack(&mut self) {}
}

impl Timeouts for std::net::TcpStream {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
    fn send_all_vectored(&mut self, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        // sendmsg with MSG_NOSIGNAL: writev would raise SIGPIPE in the MTA when the Milter has
        // gone away, and the MTA's handling of that signal is not ours to change.
        let socket = socket2::SockRef::from(&*self);
        all_vectored(parts, |p| {
            socket.send_vectored_with_flags(p, libc::MSG_NOSIGNAL)
        })
    }
    fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(timeout))
    }
    fn quickack(&mut self) {
        // Only a missed optimisation if it fails.
        let _ = socket2::SockRef::from(&*self).set_tcp_quickack(true);
    }
}

/// Sends all of `parts` with `send`, which may take part of them each time.
fn all_vectored(
    mut parts: &mut [IoSlice<'_>],
    mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match send(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Looks at what waits unread on `stream` without taking it or blocking: Ok(1) when bytes are
/// waiting, Ok(0) when the peer has closed, an error (WouldBlock) when nothing has arrived.
pub(crate) fn peek(stream: &std::net::TcpStream) -> io::Result<usize> {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    socket2::SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

impl Timeouts for std::os::unix::net::UnixStream {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
    fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(timeout))
    }
}

/// How a conversation ended, beside what the Milter decided.
#[derive(Debug)]
pub struct Ended {
    pub outcome: Outcome,
    /// What was negotiated (effective values), to be handed back with a reused connection.
    pub negotiation: Negotiation,
    /// The connection was left open for the next message (no QUIT sent): the message went all
    /// the way to end of message without an error and ended with CONTINUE there, and the
    /// Milter speaks version 6 and takes CONNECT, so that QUIT_NC and a new CONNECT can follow.
    /// Otherwise QUIT was sent.
    pub reusable: bool,
    /// The timeouts left set on the stream, for its next conversation.
    pub timeouts: SocketTimeouts,
}

/// Runs the conversation for one message on a connected stream and returns what the Milter
/// decided, with what it negotiated.
///
/// `reused`: the stream was kept open after an earlier message and this is what was negotiated
/// on it then: QUIT_NC starts this message, with no new negotiation. `keep`: leave the stream
/// open at the end when it can be reused, instead of sending QUIT. `timeouts`: those the stream
/// has now, where known.
#[allow(clippy::too_many_arguments)]
pub fn run<S: Read + Write + Timeouts>(
    config: &Config,
    stream: &mut S,
    peer: &str,
    envelope: &Envelope,
    content: Content<'_>,
    deadline: Instant,
    transcript: Option<&mut Vec<String>>,
    reused: Option<Resume<'_>>,
    keep: bool,
    timeouts: SocketTimeouts,
) -> Result<Ended> {
    let spare = take_buffers();
    let mut c = Conversation {
        stream,
        transcript,
        peer,
        out: spare.out,
        spliced: Vec::new(),
        rbuf: spare.rbuf,
        rpos: 0,
        rend: 0,
        timeout: config.timeout,
        deadline,
        timeouts,
        read_armed: false,
        quick_exchanges: 0,
        unanswered: false,
        neg: Negotiation::default(),
        headers: spare.headers,
        edits: Vec::new(),
        body_replaced: false,
        budget: limits::Budget::new(config.milter_limits),
        quarantine: None,
        // The handle's DEBUG level, read from its options: asking the logger goes through its
        // dispatch on every call.
        trace_packets: config.debug >= 2,
        trace_io: config.debug >= 3,
        replied_to: None,
        assumed: false,
        reencode: false,
        offered_version: config.milter_protocol,
        answered: None,
    };
    match reused {
        Some(r) => {
            // The Milter waits in its end-of-message state: QUIT_NC closes that connection's
            // context and the next command is CONNECT. Neither needs a reply of its own, so
            // both go in the first write of this message.
            c.queue(SMFIC_QUIT_NC, &[]);
            if r.prove {
                // A Milter that answers OPTNEG after QUIT_NC proves the connection in step
                // before anything of the message goes out: see `Conversation::prove_in_step`.
                c.send_optneg()?;
                c.prove_in_step()?;
            } else {
                c.apply(r.negotiation);
            }
            c.answered = Some(r.answered);
        }
        None => {
            c.send_optneg()?;
            // A Milter answers OPTNEG the same way every time: the message is encoded on the
            // negotiation this thread had with it last while it answers, instead of after.
            // Not when packets are traced: the trace would show them before the reply.
            let last = match c.trace_packets || c.transcript.is_some() {
                true => None,
                false => remembered(peer, c.offered_version),
            };
            match last {
                Some(neg) => {
                    c.apply(neg);
                    c.assumed = true;
                }
                None => c.read_optneg()?,
            }
        }
    }
    let mut content = Some(content);
    let outcome = loop {
        match c.message(envelope, &mut content) {
            Ok(outcome) => break outcome,
            Err(e) => {
                // An error before anything was written (a bad message): the reply to OPTNEG
                // still decides, as it would have had it been read first.
                if c.assumed {
                    match c.settle() {
                        Ok(()) => return Err(e),
                        Err(_) if c.reencode => {}
                        Err(e) => return Err(e),
                    }
                }
                if !c.reencode {
                    return Err(e);
                }
                // Nothing of the void encoding was written, and nothing of the message read
                // but what is in memory (`settle` comes before the read callback is called).
                c.reencode = false;
                c.out.clear();
                c.spliced.clear();
                c.headers.clear();
                c.edits.clear();
                c.body_replaced = false;
                c.budget = limits::Budget::new(config.milter_limits);
                c.quarantine = None;
            }
        }
    };
    debug_assert!(!c.assumed, "a message ended without reading a reply");
    // QUIT_NC is legal only in libmilter's end-of-message state, which a CONTINUE at end of
    // message leaves it in; any other final reply (accept, reject, tempfail, discard) drops it
    // back to its HELO state, where QUIT_NC and the next CONNECT would be ignored, unanswered.
    // A Milter that asked for no CONNECT sets up its per-connection state at negotiation, and
    // QUIT_NC has it tear that down (pymilter, and libmilter filters that allocate in
    // xxfi_negotiate, then fail on the next message): such a connection is never reused.
    let reusable = keep
        && outcome.stage == Stage::Eom
        && outcome.disposition == Disposition::Continue
        && c.neg.version >= 6
        && !c.has(SMFIP_NOCONNECT);
    if !reusable {
        // QUIT needs no reply; a failure to write it changes nothing for this message.
        c.queue(SMFIC_QUIT, &[]);
        let _ = c.flush();
    }
    Ok(Ended {
        outcome,
        negotiation: std::mem::take(&mut c.neg),
        reusable,
        timeouts: c.timeouts,
    })
}

/// How a conversation on a kept connection starts.
pub struct Resume<'a> {
    /// What was negotiated on the connection.
    pub negotiation: Negotiation,
    /// The Milter answers OPTNEG after QUIT_NC (`crate::resume`): the conversation starts with
    /// QUIT_NC and OPTNEG and reads up to the OPTNEG reply before anything of the message is
    /// sent. Otherwise (libmilter) QUIT_NC goes out with the message's first packets.
    pub prove: bool,
    /// Set when the first reply of the message arrives (the OPTNEG reply of the proof does not
    /// count): until then a failure leaves nothing of the message answered, and the handle
    /// sends the message again on a new connection.
    pub answered: &'a std::cell::Cell<bool>,
}

/// Sends QUIT on a connection kept for reuse that is now being closed. Best effort: the
/// connection is closed right after, whatever happens.
pub fn quit(stream: &mut std::net::TcpStream) {
    let mut packet = Vec::with_capacity(5);
    protocol::encode_packet(&mut packet, SMFIC_QUIT, &[]);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(&packet);
}

/// A conversation's buffers: what it writes, what it reads, the header fields it parses.
struct Buffers {
    out: Vec<u8>,
    rbuf: Vec<u8>,
    headers: HeaderSection,
}

thread_local! {
    /// The buffers of the last conversation on this thread, for the next one: an MTA thread
    /// filters message after message, and fresh buffers cost allocations and a zero-fill each
    /// time.
    static SPARE: std::cell::RefCell<Option<Buffers>> = const { std::cell::RefCell::new(None) };
}

/// The actions that let a Milter send packets before its final reply to end of message: all we
/// offer but SETSYMLIST, which is used at negotiation.
const EDIT_ACTIONS: u32 = OFFERED_ACTIONS & !SMFIF_SETSYMLIST;

/// Buffers grown past this are dropped instead of kept, so an idle thread holds little: the
/// write buffer holds at most `WRITE_HIGH_WATER` and one BODY packet, the others a large header
/// section or reply.
const SPARE_LIMIT: usize = WRITE_HIGH_WATER + (128 << 10);

fn take_buffers() -> Buffers {
    SPARE
        .try_with(|s| s.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or_else(|| Buffers {
            out: Vec::with_capacity(8192),
            rbuf: Vec::new(),
            headers: HeaderSection::default(),
        })
}

/// The last negotiation a thread had with a Milter: its reply to OPTNEG as sent, and what was
/// made of it.
struct Remembered {
    peer: Box<str>,
    /// The protocol version offered (MILTER_PROTOCOL): what is made of a reply depends on it.
    version: u32,
    reply: Vec<u8>,
    negotiation: Negotiation,
}

thread_local! {
    static LAST_NEGOTIATION: std::cell::RefCell<Option<Remembered>> =
        const { std::cell::RefCell::new(None) };
}

/// The negotiation to assume with `peer`: the one this thread had with it last.
fn remembered(peer: &str, version: u32) -> Option<Negotiation> {
    LAST_NEGOTIATION
        .try_with(|l| {
            l.borrow()
                .as_ref()
                .filter(|r| r.version == version && *r.peer == *peer)
                .map(|r| r.negotiation.clone())
        })
        .ok()
        .flatten()
}

fn remember(peer: &str, version: u32, reply: &[u8], negotiation: &Negotiation) {
    let _ = LAST_NEGOTIATION.try_with(|l| {
        let mut l = l.borrow_mut();
        match l.as_mut() {
            Some(r) if *r.peer == *peer && r.version == version && r.reply == reply => {}
            _ => {
                *l = Some(Remembered {
                    peer: peer.into(),
                    version,
                    reply: reply.to_vec(),
                    negotiation: negotiation.clone(),
                })
            }
        }
    });
}

impl<S: Read + Write + Timeouts> Drop for Conversation<'_, '_, S> {
    fn drop(&mut self) {
        let mut b = Buffers {
            out: std::mem::take(&mut self.out),
            rbuf: std::mem::take(&mut self.rbuf),
            headers: std::mem::take(&mut self.headers),
        };
        b.out.clear();
        b.headers.clear();
        if b.out.capacity() <= SPARE_LIMIT
            && b.rbuf.len() <= SPARE_LIMIT
            && b.headers.bytes.capacity() <= SPARE_LIMIT
            && b.headers.fields.capacity() <= SPARE_LIMIT / 16
        {
            let _ = SPARE.try_with(|s| *s.borrow_mut() = Some(b));
        }
    }
}

impl<'m, S: Read + Write + Timeouts> Conversation<'_, 'm, S> {
    fn send_optneg(&mut self) -> Result<()> {
        let version = self.offered_version;
        let start = self.out.len();
        protocol::encode_optneg(
            &mut self.out,
            version,
            offered_actions(version),
            offered_protocol(version),
        );
        self.trace_out(start);
        self.flush()
    }

    /// On a kept connection, after QUIT_NC and OPTNEG: the first packet must be the OPTNEG
    /// reply. OPTNEG is the one command whose reply no other reply can pass for, and the Milter
    /// sends it after every packet it sent before it read our OPTNEG, so reading it proves that
    /// nothing from an earlier message is left unread. A packet before it is one an earlier
    /// message left (a late or extra reply): the connection is out of step, and the error
    /// (before anything of the message was sent) has the handle send the message anew on a
    /// new connection. The reply may negotiate differently from the last time; it is taken.
    fn prove_in_step(&mut self) -> Result<()> {
        let (cmd, at) = self.read_packet("OPTNEG")?;
        if cmd != SMFIC_OPTNEG {
            return Err(self.protocol_error(&format!(
                "the kept connection is out of step: {} ('{}') came before the reply to OPTNEG;                  it belongs to an earlier message",
                reply_name(cmd),
                escape(&[cmd])
            )));
        }
        let neg = self.negotiated(cmd, at)?;
        self.apply(neg);
        Ok(())
    }

    /// Reads the reply to OPTNEG and takes what it negotiates.
    fn read_optneg(&mut self) -> Result<()> {
        let (cmd, at) = self.read_packet("OPTNEG")?;
        let neg = self.negotiated(cmd, at)?;
        self.apply(neg);
        Ok(())
    }

    /// Reads the reply to OPTNEG when the message went ahead on the negotiation assumed: Ok
    /// when it is the same; otherwise takes the new one, sets `reencode` and returns an
    /// error that only `run` sees.
    fn settle(&mut self) -> Result<()> {
        self.assumed = false;
        let (cmd, at) = self.read_packet("OPTNEG")?;
        let same = cmd == SMFIC_OPTNEG
            && LAST_NEGOTIATION
                .try_with(|l| {
                    l.borrow()
                        .as_ref()
                        .is_some_and(|r| r.reply[..] == self.rbuf[at.clone()])
                })
                .unwrap_or(false);
        if same {
            return Ok(());
        }
        let neg = self.negotiated(cmd, at)?;
        debug!(
            "milter {}: negotiated differently than on this thread's last connection to it; \
             the message is encoded again",
            self.peer
        );
        self.apply(neg);
        self.reencode = true;
        Err(Error::protocol("the negotiation changed".to_string()))
    }

    /// What a reply to OPTNEG negotiates, checked against what was offered; remembered for
    /// this thread's next conversation with the same Milter.
    fn negotiated(&mut self, cmd: u8, at: std::ops::Range<usize>) -> Result<Negotiation> {
        let version = self.offered_version;
        let actions = offered_actions(version);
        let offered = offered_protocol(version);
        if cmd != SMFIC_OPTNEG {
            return Err(self.protocol_error(&format!(
                "answered OPTNEG with {} ('{}') instead of OPTNEG",
                reply_name(cmd),
                escape(&[cmd])
            )));
        }
        let neg = protocol::decode_optneg(&self.rbuf[at.clone()])
            .map_err(|e| self.protocol_error(&format!("bad OPTNEG reply: {e}")))?;
        if neg.version < 2 || neg.version > version {
            return Err(self.protocol_error(&format!(
                "answered with protocol version {}, but version {version} was offered \
                 (versions 2 to {version} are accepted)",
                neg.version
            )));
        }
        if neg.actions & !actions != 0 {
            // rspamd asks for every action whatever was offered; what it then sends and we cannot
            // express is ignored at end of message.
            debug!(
                "milter {}: asks for actions that were not offered: {}",
                self.peer,
                action_names(neg.actions & !actions)
            );
        }
        let mut neg = neg;
        if neg.protocol & !offered != 0 {
            warn!(
                "milter {}: asks for protocol steps that were not offered, ignored: {}",
                self.peer,
                protocol_names(neg.protocol & !offered)
            );
            neg.protocol &= offered;
        }
        // Steps and replies an older version does not define are neither honoured nor expected.
        neg.protocol &= offered_protocol(neg.version);
        // What an older version lacks is never sent.
        if neg.version <= 2 {
            neg.protocol |= SMFIP_NOUNKNOWN;
        }
        if neg.version <= 3 {
            neg.protocol |= SMFIP_NODATA;
        }
        // log! evaluates its arguments whenever the global level allows, which the per-handle
        // dispatcher sets to everything: the names are built only when this handle logs them.
        if self.trace_packets {
            debug!(
                "milter {}: negotiated version {}, actions {}, protocol {}",
                self.peer,
                neg.version,
                action_names(neg.actions),
                protocol_names(neg.protocol)
            );
        }
        remember(self.peer, version, &self.rbuf[at], &neg);
        Ok(neg)
    }

    /// Takes the negotiated values: what to send and expect, and the macros per stage.
    fn apply(&mut self, neg: Negotiation) {
        if let Some(t) = self.transcript.as_deref_mut() {
            t.push(format!(
                "negotiated: version {}, actions {}, protocol {}",
                neg.version,
                action_names(neg.actions),
                protocol_names(neg.protocol)
            ));
            const STAGE_NAMES: [&str; 7] =
                ["connect", "helo", "mail", "rcpt", "data", "eom", "eoh"];
            // In the order of the conversation (EOH comes before EOM).
            for stage in [0, 1, 2, 3, 4, 6, 5] {
                let names: Vec<String> = match &neg.macros[stage] {
                    Some(names) => names.iter().map(|n| escape(n)).collect(),
                    None => DEFAULT_MACROS[stage].iter().map(|n| escape(n)).collect(),
                };
                t.push(format!(
                    "macros at {}: {} ({})",
                    STAGE_NAMES[stage],
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(" ")
                    },
                    if neg.macros[stage].is_some() {
                        "asked for by the Milter"
                    } else {
                        "default"
                    }
                ));
            }
        }
        self.neg = neg;
    }

    fn has(&self, bit: u32) -> bool {
        self.neg.protocol & bit != 0
    }

    /// The message's conversation after negotiation. `content` is taken when it is read,
    /// unless it is in memory: a message in memory can be encoded again (`reencode`).
    fn message(&mut self, env: &Envelope, content: &mut Option<Content<'m>>) -> Result<Outcome> {
        let mut values = MacroValues::new(env);

        // CONNECT
        let mut bracketed = [0u8; 50];
        let hostname: &[u8] = match (values.name, &values.addr) {
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
        let addr = match env.client_addr {
            None => ConnectAddr::Unknown,
            Some(IpAddr::V4(a)) => ConnectAddr::Inet4 {
                port: env.client_port,
                addr: a,
            },
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => ConnectAddr::Inet4 {
                    port: env.client_port,
                    addr: v4,
                },
                None => ConnectAddr::Inet6 {
                    port: env.client_port,
                    addr: a,
                },
            },
        };
        self.macros(SMFIM_CONNECT, &values);
        if !self.has(SMFIP_NOCONNECT) {
            let start = self.out.len();
            protocol::encode_connect(&mut self.out, hostname, &addr);
            self.trace_out(start);
        }
        let expect = !self.has(SMFIP_NOCONNECT) && !self.has(SMFIP_NR_CONN);
        if let Answer::Final(d, reply) = self.answer(Stage::Connect, expect)? {
            return Ok(self.connection_level(d, reply, Stage::Connect));
        }

        // HELO
        if let Some(helo) = &env.helo {
            self.macros(SMFIM_HELO, &values);
            if !self.has(SMFIP_NOHELO) {
                self.command_strings(SMFIC_HELO, &[helo]);
            }
            let expect = !self.has(SMFIP_NOHELO) && !self.has(SMFIP_NR_HELO);
            if let Answer::Final(d, reply) = self.answer(Stage::Helo, expect)? {
                return Ok(self.connection_level(d, reply, Stage::Helo));
            }
        }

        // MAIL
        self.macros(SMFIM_ENVFROM, &values);
        if !self.has(SMFIP_NOMAIL) {
            let start = self.out.len();
            protocol::encode_address_command(
                &mut self.out,
                SMFIC_MAIL,
                &env.sender,
                &env.mail_args,
            );
            self.trace_out(start);
        }
        let expect = !self.has(SMFIP_NOMAIL) && !self.has(SMFIP_NR_MAIL);
        if let Answer::Final(d, reply) = self.answer(Stage::Mail, expect)? {
            return Ok(self.final_outcome(d, reply, Stage::Mail, Vec::new()));
        }

        // RCPT, each: a reject or tempfail refuses that recipient only, and stays its outcome
        // whatever comes later (the verdict keeps it apart from the message's).
        let mut rejected: Vec<RecipientReject> = Vec::new();
        let mut skip_rcpt = false;
        for (index, rcpt) in env.recipients.iter().enumerate() {
            if skip_rcpt {
                break;
            }
            values.set_rcpt(&rcpt.address);
            self.macros(SMFIM_ENVRCPT, &values);
            if !self.has(SMFIP_NORCPT) {
                let start = self.out.len();
                protocol::encode_address_command(
                    &mut self.out,
                    SMFIC_RCPT,
                    &rcpt.address,
                    &rcpt.esmtp_args,
                );
                self.trace_out(start);
            }
            let expect = !self.has(SMFIP_NORCPT) && !self.has(SMFIP_NR_RCPT);
            match self.answer(Stage::Rcpt, expect)? {
                Answer::Continue => {}
                Answer::Skip => skip_rcpt = true,
                Answer::Final(Disposition::Reject, reply) => rejected.push(RecipientReject {
                    index,
                    address: rcpt.address.clone(),
                    tempfail: false,
                    reply: reply.unwrap_or_else(|| DEFAULT_REJECT.to_vec()),
                }),
                Answer::Final(Disposition::Tempfail, reply) => rejected.push(RecipientReject {
                    index,
                    address: rcpt.address.clone(),
                    tempfail: true,
                    reply: reply.unwrap_or_else(|| DEFAULT_TEMPFAIL.to_vec()),
                }),
                Answer::Final(d, reply) => {
                    return Ok(self.final_outcome(d, reply, Stage::Rcpt, rejected));
                }
            }
        }
        if !env.recipients.is_empty() && rejected.len() == env.recipients.len() {
            // Nobody is left to deliver to: the message is refused as the last recipient was,
            // temporarily only if every refusal was temporary.
            let all_temp = rejected.iter().all(|r| r.tempfail);
            let last = rejected
                .iter()
                .rev()
                .find(|r| r.tempfail == all_temp)
                .map(|r| r.reply.clone());
            let d = if all_temp {
                Disposition::Tempfail
            } else {
                Disposition::Reject
            };
            self.queue(SMFIC_ABORT, &[]);
            return Ok(self.final_outcome(d, last, Stage::Rcpt, rejected));
        }

        // DATA
        self.macros(SMFIM_DATA, &values);
        if !self.has(SMFIP_NODATA) {
            self.queue(SMFIC_DATA, &[]);
        }
        let expect = !self.has(SMFIP_NODATA) && !self.has(SMFIP_NR_DATA);
        if let Answer::Final(d, reply) = self.answer(Stage::Data, expect)? {
            return Ok(self.final_outcome(d, reply, Stage::Data, rejected));
        }

        // Header fields, streamed from the message. The read callback is called only once
        // the negotiation is certain: a message read from it cannot be encoded again.
        let content = match content {
            Some(Content::Buffer(b)) => Content::Buffer(b),
            _ => {
                if self.assumed {
                    self.settle()?;
                }
                content
                    .take()
                    .ok_or_else(|| Error::message("the message was read already".to_string()))?
            }
        };
        let mut reader = ContentReader::new(content);
        let body_start = reader.read_header_section(&mut self.headers)?;
        let leadspc = self.has(SMFIP_HDR_LEADSPC);
        if !self.has(SMFIP_NOHDRS) {
            let expect = !self.has(SMFIP_NR_HDR);
            for i in 0..self.headers.len() {
                let v = self.headers.value(i);
                let value: &[u8] = if !leadspc && v.first() == Some(&b' ') {
                    &v[1..]
                } else {
                    v
                };
                let start = self.out.len();
                protocol::encode_header(&mut self.out, self.headers.name(i), value);
                self.trace_out(start);
                match self.answer(Stage::Header, expect)? {
                    Answer::Continue => {}
                    Answer::Skip => break,
                    Answer::Final(d, reply) => {
                        return Ok(self.final_outcome(d, reply, Stage::Header, rejected));
                    }
                }
            }
        }

        // EOH
        self.macros(SMFIM_EOH, &values);
        if !self.has(SMFIP_NOEOH) {
            self.queue(SMFIC_EOH, &[]);
        }
        let expect = !self.has(SMFIP_NOEOH) && !self.has(SMFIP_NR_EOH);
        if let Answer::Final(d, reply) = self.answer(Stage::Eoh, expect)? {
            return Ok(self.final_outcome(d, reply, Stage::Eoh, rejected));
        }

        // BODY, in chunks of at most 65535 bytes with CRLF line ends, each built in place.
        if !self.has(SMFIP_NOBODY) {
            let expect = !self.has(SMFIP_NR_BODY);
            let mut body = BodyCrlf::new(body_start);
            loop {
                if self.spliced.len() == MAX_SPLICED {
                    self.flush()?;
                    self.unanswered = true;
                }
                let start = self.out.len();
                self.out.extend_from_slice(&[0, 0, 0, 0, SMFIC_BODY]);
                // A long stretch of a message in memory that is CRLF text already goes out as
                // it is; anything else is converted into the packet.
                let spliced = body.take_as_is(&mut reader, MAX_DATA_LEN);
                let (len, more) = match spliced {
                    Some(part) => {
                        self.spliced.push(Splice {
                            at: self.out.len(),
                            bytes: part,
                        });
                        (part.len() + 1, true)
                    }
                    None => {
                        let more =
                            body.fill(&mut reader, &mut self.out, start + 5 + MAX_DATA_LEN)?;
                        (self.out.len() - start - 4, more)
                    }
                };
                if len > 1 {
                    self.out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
                    match spliced {
                        Some(part) => self.trace_data(SMFIC_BODY, part),
                        None => self.trace_out(start),
                    }
                    match self.answer(Stage::Body, expect)? {
                        Answer::Continue => {}
                        Answer::Skip => break,
                        Answer::Final(d, reply) => {
                            return Ok(self.final_outcome(d, reply, Stage::Body, rejected));
                        }
                    }
                } else {
                    self.out.truncate(start);
                }
                if !more {
                    break;
                }
            }
        }

        // End of message: edits, then one disposition.
        self.macros(SMFIM_EOM, &values);
        self.queue(SMFIC_BODYEOB, &[]);
        let (d, reply) = match self.answer(Stage::Eom, true)? {
            Answer::Final(d, reply) => (d, reply),
            Answer::Continue | Answer::Skip => (Disposition::Continue, None),
        };
        // Bytes that came with the final reply break "one command, one reply". Bytes that
        // arrive after it are not waited for: a kept connection is looked at before its next
        // message (handle::unusable), and one with anything unread is closed, not used; one
        // closed now can carry nothing into another message.
        let unread = self.unread();
        if unread > 0 {
            return Err(self.protocol_error(&format!(
                "sent more after its final reply to BODYEOB ({unread} or more unexpected bytes)"
            )));
        }
        let mut o = self.final_outcome(d, reply, Stage::Eom, rejected);
        o.edits = std::mem::take(&mut self.edits);
        // The verdict needs the original fields only to place and delete edited ones.
        if !o.edits.is_empty() {
            o.headers = self.headers.to_headers();
        }
        if o.quarantine.is_none() {
            o.quarantine = self.quarantine.take();
        }
        o.leadspc = leadspc;
        Ok(o)
    }

    /// A decision at CONNECT or HELO concerns the whole connection: accept ends filtering, and a
    /// discard there means nothing (Postfix ignores it with a warning).
    fn connection_level(
        &mut self,
        d: Disposition,
        reply: Option<Vec<u8>>,
        stage: Stage,
    ) -> Outcome {
        let d = if d == Disposition::Discard {
            warn!(
                "milter {}: DISCARD at {stage:?} is not meaningful and is ignored",
                self.peer
            );
            Disposition::Accept
        } else {
            d
        };
        self.final_outcome(d, reply, stage, Vec::new())
    }

    fn final_outcome(
        &mut self,
        d: Disposition,
        reply: Option<Vec<u8>>,
        stage: Stage,
        rejected: Vec<RecipientReject>,
    ) -> Outcome {
        let mut o = Outcome::new(d, stage);
        o.reply = match d {
            Disposition::Reject => Some(reply.unwrap_or_else(|| DEFAULT_REJECT.to_vec())),
            Disposition::Tempfail => Some(reply.unwrap_or_else(|| DEFAULT_TEMPFAIL.to_vec())),
            _ => None,
        };
        o.rejected_recipients = rejected;
        o.quarantine = self.quarantine.take();
        o.leadspc = self.has(SMFIP_HDR_LEADSPC);
        o
    }

    /// Queues the macros of `stage`: the requested (or default) names that have a value, each
    /// value written straight into the packet. No packet when none has a value.
    fn macros(&mut self, stage: usize, values: &MacroValues<'_>) {
        let start = protocol::begin_macros(&mut self.out, STAGE_CMD[stage]);
        let mut any = false;
        let mut add = |out: &mut Vec<u8>, name: &[u8], bare: &[u8], kind: Derived| {
            if let Some(v) = values.value(bare, kind) {
                any |= protocol::push_macro_named(out, start, name, v.parts());
            }
        };
        // Most names have no value: neither derived from the envelope nor among the MTA's
        // macros (a clear bit in `mta_names` says so without looking).
        match &self.neg.macros[stage] {
            Some(names) => {
                for name in names {
                    let bare = bare_macro_name(name);
                    let kind = Derived::of(bare);
                    if kind != Derived::No || values.mta_names & name_bit(bare) != 0 {
                        add(&mut self.out, name, bare, kind);
                    }
                }
            }
            None => {
                for m in &default_plan()[stage] {
                    if m.kind != Derived::No || values.mta_names & m.bit != 0 {
                        add(&mut self.out, m.name, m.bare, m.kind);
                    }
                }
            }
        }
        if !any {
            self.out.truncate(start);
            return;
        }
        protocol::end_packet(&mut self.out, start);
        self.trace_out(start);
    }

    fn command_strings(&mut self, cmd: u8, strings: &[&[u8]]) {
        let start = self.out.len();
        protocol::encode_strings(&mut self.out, cmd, strings);
        self.trace_out(start);
    }

    fn queue(&mut self, cmd: u8, data: &[u8]) {
        let start = self.out.len();
        protocol::encode_packet(&mut self.out, cmd, &[data]);
        self.trace_out(start);
    }

    /// After a stage's packets are queued: read its reply if one is due, else maybe write out.
    fn answer(&mut self, stage: Stage, expect_reply: bool) -> Result<Answer> {
        if !expect_reply {
            if self.unsent() >= WRITE_HIGH_WATER {
                self.flush()?;
                self.unanswered = true;
            }
            return Ok(Answer::Continue);
        }
        self.flush()?;
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
            self.stream.quickack();
        }
        loop {
            if stage == Stage::Eom && packets == 1 && !quick {
                self.stream.quickack();
                quick = true;
            }
            packets += 1;
            let (cmd, at) = self.read_packet(what)?;
            if cmd == SMFIR_CONTINUE && at.is_empty() {
                // The usual answer, taken without decoding.
                return Ok(Answer::Continue);
            }
            let reply = protocol::decode_reply(cmd, &self.rbuf[at])
                .map_err(|e| self.protocol_error(&format!("bad reply to {what}: {e}")))?;
            match reply {
                Reply::Continue => return Ok(Answer::Continue),
                Reply::Accept => return Ok(Answer::Final(Disposition::Accept, None)),
                Reply::Reject => return Ok(Answer::Final(Disposition::Reject, None)),
                Reply::Tempfail => return Ok(Answer::Final(Disposition::Tempfail, None)),
                Reply::Discard => return Ok(Answer::Final(Disposition::Discard, None)),
                Reply::ReplyCode(text) => {
                    if let Err(e) = self.budget.reply_text(text.len(), what) {
                        return Err(self.protocol_error(&e));
                    }
                    let d = if text.first() == Some(&b'4') {
                        Disposition::Tempfail
                    } else {
                        Disposition::Reject
                    };
                    return Ok(Answer::Final(d, Some(unescape_percent(&text))));
                }
                Reply::Shutdown => {
                    return Ok(Answer::Final(
                        Disposition::Tempfail,
                        Some(b"421 4.7.0 Milter asked to shut down".to_vec()),
                    ))
                }
                Reply::ConnFail => {
                    return Err(self.protocol_error(&format!(
                        "answered {what} with CONN_FAIL (the Milter reports a connection failure)"
                    )))
                }
                Reply::Progress => continue,
                Reply::Skip => {
                    if !self.has(SMFIP_SKIP) {
                        return Err(self.protocol_error(&format!(
                            "answered {what} with SKIP, which was not negotiated"
                        )));
                    }
                    if !matches!(stage, Stage::Rcpt | Stage::Header | Stage::Body) {
                        return Err(self.protocol_error(&format!(
                            "answered {what} with SKIP, which is allowed only for RCPT, HEADER \
                             and BODY"
                        )));
                    }
                    return Ok(Answer::Skip);
                }
                Reply::Quarantine(reason) => {
                    self.quarantine = Some(reason);
                    if stage != Stage::Eom {
                        // As Postfix: a quarantine before end of message holds the message and
                        // ends filtering.
                        return Ok(Answer::Final(Disposition::Accept, None));
                    }
                }
                Reply::OptNeg(_) => {
                    return Err(self.protocol_error(&format!("answered {what} with OPTNEG")))
                }
                edit => {
                    if stage != Stage::Eom {
                        return Err(self.protocol_error(&format!(
                            "sent {} in reply to {what}; modifications are allowed only at end \
                             of message",
                            reply_name(cmd)
                        )));
                    }
                    self.edit(edit, cmd)?;
                }
            }
        }
    }

    /// Keeps one modification for the verdict, within the Milter limits (`limits.rs`).
    fn edit(&mut self, reply: Reply, cmd: u8) -> Result<()> {
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
                if !self.body_replaced {
                    log::info!(
                        "milter {}: REPLBODY cannot be expressed in a verdict: the body is kept \
                         as it is",
                        self.peer
                    );
                    self.body_replaced = true;
                    self.edits.push(Edit::ReplaceBody);
                }
                return Ok(());
            }
            _ => {
                // CHGFROM: no verdict can change the envelope sender.
                log::info!(
                    "milter {}: {} cannot be expressed in a verdict and is ignored",
                    self.peer,
                    reply_name(cmd)
                );
                return Ok(());
            }
        };
        if self.neg.actions & needs == 0 {
            warn!(
                "milter {}: sent {} without negotiating {}; applied anyway, as sendmail does",
                self.peer,
                reply_name(cmd),
                action_names(needs)
            );
        }
        if let Err(e) = self.budget.edit(&edit, reply_name(cmd)) {
            return Err(self.protocol_error(&e));
        }
        self.edits.push(edit);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.assumed {
            self.settle()?;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        // Exactly one reply per command: bytes that wait unread now are a reply nobody asked
        // for, and answering on would pair every later reply with the wrong command.
        // Checked against what has been read (a reply that came with the previous one); the
        // socket itself is probed once per message, after the final reply.
        if let Some(what) = self.replied_to {
            let unread = self.unread();
            if unread > 0 {
                let end = self.rend.min(self.rpos + 64);
                debug!(
                    "milter {}: unexpected bytes\n{}",
                    self.peer,
                    protocol::trace::hexdump(&self.rbuf[self.rpos..end])
                );
                return Err(self.protocol_error(&format!(
                    "sent more after its reply to {what} ({unread} or more unexpected bytes): \
                     one command, one reply"
                )));
            }
        }
        // When every earlier write has been answered, the Milter has read it and the socket's
        // send buffer is empty: a write this small goes straight into it and returns at once,
        // and the timeout set for it also bounds the reply. Such an exchange lasts at most one
        // timeout. Any other write may take longer: the clock is read before and after it.
        let quick = self.unsent() <= SMALL_WRITE && !self.unanswered;
        self.arm(if quick {
            Op::QuickExchange
        } else {
            Op::LongWrite
        })?;
        self.read_armed = quick;
        if self.trace_io {
            trace!(
                "milter {}: write {} octets\n{}",
                self.peer,
                self.out.len(),
                protocol::trace::hexdump(&self.out)
            );
        }
        let result = if self.spliced.is_empty() {
            self.stream.write_all(&self.out)
        } else {
            // The packets with the spliced parts in their places, in one system call.
            let mut parts = [IoSlice::new(&[]); 2 * MAX_SPLICED + 1];
            let mut n = 0;
            let mut from = 0;
            for sp in &self.spliced {
                parts[n] = IoSlice::new(&self.out[from..sp.at]);
                parts[n + 1] = IoSlice::new(sp.bytes);
                n += 2;
                from = sp.at;
            }
            parts[n] = IoSlice::new(&self.out[from..]);
            self.stream.send_all_vectored(&mut parts[..n + 1])
        };
        self.out.clear();
        self.spliced.clear();
        result.map_err(|e| self.io_error("writing to", e))
    }

    /// Sets the socket timeout to min(TIMEOUT, time left before the message deadline).
    ///
    /// The clock is read only when needed: while the deadline is more than n + 1 timeouts
    /// away, n more quick exchanges (a small write and its reply, each bounded by TIMEOUT)
    /// cannot bring it closer than one timeout, so TIMEOUT stays right for them.
    fn arm(&mut self, op: Op) -> Result<()> {
        if op == Op::QuickExchange && self.quick_exchanges > 0 {
            self.quick_exchanges -= 1;
            return Ok(());
        }
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(Error::timeout(format!(
                "milter {}: the conversation took longer than MESSAGE_TIMEOUT",
                self.peer
            )));
        }
        let t = self.timeout.min(left);
        // Reset only when needed: TIMEOUT stays set until the deadline comes closer than it.
        let stale = |cur: Option<Duration>| match cur {
            None => true,
            Some(cur) => t < cur || (t > cur && cur < self.timeout),
        };
        let setting =
            |e: io::Error| Error::io(format!("milter {}: setting timeout: {e}", self.peer));
        if stale(self.timeouts.read) {
            self.stream.set_read_timeout_to(t).map_err(setting)?;
            self.timeouts.read = Some(t);
        }
        if stale(self.timeouts.write) {
            self.stream.set_write_timeout_to(t).map_err(setting)?;
            self.timeouts.write = Some(t);
        }
        // Whole timeouts left beyond this exchange's, less one for the moments between
        // exchanges: that many more may run without the clock.
        self.quick_exchanges = if op != Op::LongWrite && t == self.timeout {
            (left.as_nanos() / t.as_nanos()).saturating_sub(2) as u32
        } else {
            0
        };
        Ok(())
    }

    /// Reads one packet: its command, and where its data is in `rbuf` (valid until the next
    /// read). Memory grows only as the bytes actually arrive.
    fn read_packet(&mut self, what: &'static str) -> Result<(u8, std::ops::Range<usize>)> {
        self.replied_to = Some(what);
        self.unanswered = false;
        self.fill(4, what)?;
        if let Some(answered) = self.answered {
            answered.set(true);
        }
        let p = self.rpos;
        let prefix = [
            self.rbuf[p],
            self.rbuf[p + 1],
            self.rbuf[p + 2],
            self.rbuf[p + 3],
        ];
        let len = match protocol::decode_len(prefix) {
            Ok(len) => len,
            Err(e) => {
                // Only what has already arrived: waiting for more would only delay the error.
                let end = self.rend.min(self.rpos + 64);
                debug!(
                    "milter {}: bad packet\n{}",
                    self.peer,
                    protocol::trace::hexdump(&self.rbuf[self.rpos..end])
                );
                return Err(self.protocol_error(&format!("bad reply to {what}: {e}")));
            }
        };
        self.fill(4 + len, what)?;
        let cmd = self.rbuf[self.rpos + 4];
        let at = self.rpos + 5..self.rpos + 4 + len;
        self.rpos += 4 + len;
        if self.rpos == self.rend {
            // The next read starts at the front again; this packet's bytes stay until then.
            self.rpos = 0;
            self.rend = 0;
        }
        let data = &self.rbuf[at.clone()];
        if self.trace_packets {
            debug!(
                "milter {}: {}\n{}",
                self.peer,
                protocol::trace::describe(false, cmd, data),
                protocol::trace::hexdump(data)
            );
        }
        if let Some(t) = self.transcript.as_deref_mut() {
            t.push(protocol::trace::describe(false, cmd, data));
        }
        Ok((cmd, at))
    }

    /// Bytes read but not yet taken as a packet.
    fn unread(&self) -> usize {
        self.rend - self.rpos
    }

    /// Makes `n` unread bytes available in the read buffer. The buffer grows by at most 64 KiB
    /// beyond what has arrived, so a length that lies allocates nothing near what it claims.
    fn fill(&mut self, n: usize, what: &str) -> Result<()> {
        if self.unread() >= n {
            return Ok(());
        }
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        while self.rend < n {
            if self.rend == self.rbuf.len() {
                let grown = (self.rbuf.len() * 2)
                    .max(4096)
                    .max(n)
                    .min(self.rend + (1 << 16));
                self.rbuf.resize(grown, 0);
            }
            if !std::mem::take(&mut self.read_armed) {
                // A read of its own (a second packet, PROGRESS): the clock is read for it.
                self.arm(Op::Read)?;
            }
            let have = self.rend;
            let got = loop {
                match self.stream.read(&mut self.rbuf[have..]) {
                    Ok(got) => break Ok(got),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
            match got {
                Ok(0) => {
                    return Err(Error::io(format!(
                        "milter {} closed the connection while {what} awaited its reply",
                        self.peer
                    )));
                }
                Ok(got) => {
                    self.rend += got;
                    if self.trace_io {
                        trace!(
                            "milter {}: read {got} octets\n{}",
                            self.peer,
                            protocol::trace::hexdump(&self.rbuf[have..self.rend])
                        );
                    }
                }
                Err(e) => {
                    return Err(self.io_error(&format!("reading the reply to {what} from"), e));
                }
            }
        }
        Ok(())
    }

    /// The packet queued at `start` of `out`, for the transcript and the DEBUG=2 log.
    fn trace_out(&mut self, start: usize) {
        if (self.transcript.is_some() || self.trace_packets) && self.out.len() >= start + 5 {
            trace_packet(
                self.transcript.as_deref_mut(),
                self.trace_packets,
                self.peer,
                self.out[start + 4],
                &self.out[start + 5..],
            );
        }
    }

    /// A packet whose data is not in `out` (a spliced BODY), for the same.
    fn trace_data(&mut self, cmd: u8, data: &[u8]) {
        if self.transcript.is_some() || self.trace_packets {
            trace_packet(
                self.transcript.as_deref_mut(),
                self.trace_packets,
                self.peer,
                cmd,
                data,
            );
        }
    }

    /// Bytes queued and not yet written: those in `out` and those spliced in.
    fn unsent(&self) -> usize {
        self.out.len() + self.spliced.iter().map(|s| s.bytes.len()).sum::<usize>()
    }

    fn protocol_error(&self, what: &str) -> Error {
        Error::protocol(format!("milter {}: {what}", self.peer))
    }

    fn io_error(&self, doing: &str, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                // The wait was bounded by the message deadline when that was nearer than
                // TIMEOUT (the socket was armed with less than TIMEOUT).
                let left = self.deadline.saturating_duration_since(Instant::now());
                let by_deadline = self.timeouts.read.is_some_and(|t| t < self.timeout);
                if left.is_zero() || by_deadline {
                    Error::timeout(format!(
                        "milter {}: {doing} the Milter: the conversation took longer than \
                         MESSAGE_TIMEOUT",
                        self.peer
                    ))
                } else {
                    Error::timeout(format!(
                        "milter {}: {doing} the Milter timed out after {:.2} s (TIMEOUT)",
                        self.peer,
                        self.timeout.as_secs_f64()
                    ))
                }
            }
            _ => Error::io(format!("milter {}: {doing} the Milter: {e}", self.peer)),
        }
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

/// A macro the library can derive from the envelope when the MTA gives no value of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derived {
    No,
    RcptAddr,
    RcptHost,
    RcptMailer,
    ClientAddr,
    ClientPort,
    ClientName,
    ClientPtr,
    /// `_`: "name [addr]", as sendmail writes the client's identity.
    Ident,
    MailAddr,
    MailHost,
    MailMailer,
}

impl Derived {
    /// The kind of a macro by its name without braces.
    fn of(bare: &[u8]) -> Derived {
        match bare {
            b"rcpt_addr" => Derived::RcptAddr,
            b"rcpt_host" => Derived::RcptHost,
            b"rcpt_mailer" => Derived::RcptMailer,
            b"client_addr" => Derived::ClientAddr,
            b"client_port" => Derived::ClientPort,
            b"client_name" => Derived::ClientName,
            b"client_ptr" => Derived::ClientPtr,
            b"_" => Derived::Ident,
            b"mail_addr" => Derived::MailAddr,
            b"mail_host" => Derived::MailHost,
            b"mail_mailer" => Derived::MailMailer,
            _ => Derived::No,
        }
    }
}

/// One macro of the default lists, with its bare name and kind worked out once.
struct Planned {
    name: &'static [u8],
    bare: &'static [u8],
    kind: Derived,
    /// `name_bit` of the bare name.
    bit: u64,
}

/// `DEFAULT_MACROS` with each name's bare form and kind, built once per process.
fn default_plan() -> &'static [Vec<Planned>; 7] {
    static PLAN: std::sync::OnceLock<[Vec<Planned>; 7]> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        DEFAULT_MACROS.map(|names| {
            names
                .iter()
                .map(|&name| {
                    let bare = bare_macro_name(name);
                    Planned {
                        name,
                        bare,
                        kind: Derived::of(bare),
                        bit: name_bit(bare),
                    }
                })
                .collect()
        })
    })
}

/// A macro value as up to four pieces written one after the other (`[`, address, `]`), so
/// that composed values need no buffer of their own.
struct Parts<'v> {
    parts: [&'v [u8]; 4],
    n: usize,
}

impl<'v> Parts<'v> {
    fn one(s: &'v [u8]) -> Parts<'v> {
        Parts {
            parts: [s, &[], &[], &[]],
            n: 1,
        }
    }

    fn of(parts: [&'v [u8]; 4], n: usize) -> Parts<'v> {
        Parts { parts, n }
    }

    fn parts(&self) -> &[&'v [u8]] {
        &self.parts[..self.n]
    }

    fn is_empty(&self) -> bool {
        self.parts().iter().all(|p| p.is_empty())
    }
}

/// Macro values for the current stage: the MTA's own, and those derived from the envelope.
/// Nothing is allocated per message: composed values are handed out as parts.
struct MacroValues<'e> {
    env: &'e Envelope,
    /// The client's host name, when known and not empty.
    name: Option<&'e [u8]>,
    /// The client's address as text, when there is one.
    addr: Option<protocol::InlineText>,
    /// The client's port in decimal.
    port: protocol::InlineText,
    /// The recipient of the last RCPT, once there is one.
    rcpt: Option<&'e [u8]>,
    /// The MTA's macros by bare name, the last of a name first (it wins), worked out once
    /// instead of for every name looked up; None when there are more than fit.
    mta: Option<(MtaTable<'e>, usize)>,
    /// A bit per MTA macro name (`name_bit`): most names looked up are none of the MTA's, and
    /// a clear bit says so without comparing names.
    mta_names: u64,
}

/// One of 64 bits for a macro's bare name, from its length and its first and last bytes.
fn name_bit(bare: &[u8]) -> u64 {
    let (first, last) = match bare {
        [] => (0, 0),
        [f, .., l] => (*f, *l),
        [f] => (*f, *f),
    };
    1 << ((bare.len() as u64 * 7 + u64::from(first) * 3 + u64::from(last)) % 64)
}

/// (bare name, value) pairs.
type MtaTable<'e> = [(&'e [u8], &'e [u8]); MTA_MACROS];

/// The MTA's macros looked up from a small table when there are at most this many.
const MTA_MACROS: usize = 16;

impl<'e> MacroValues<'e> {
    fn new(env: &'e Envelope) -> MacroValues<'e> {
        let mta_names = if env.macros.len() <= MTA_MACROS {
            env.macros
                .iter()
                .fold(0, |bits, (name, _)| bits | name_bit(bare_macro_name(name)))
        } else {
            u64::MAX
        };
        MacroValues {
            env,
            mta_names,
            name: env.client_name.as_deref().filter(|n| !n.is_empty()),
            addr: env.client_addr.as_ref().map(protocol::InlineText::new),
            port: protocol::InlineText::decimal(u32::from(env.client_port)),
            rcpt: None,
            mta: (env.macros.len() <= MTA_MACROS).then(|| {
                let mut table: MtaTable<'_> = [(&[], &[]); MTA_MACROS];
                for (slot, (name, value)) in table.iter_mut().zip(env.macros.iter().rev()) {
                    *slot = (bare_macro_name(name), value.as_slice());
                }
                (table, env.macros.len())
            }),
        }
    }

    /// The MTA's value of the macro whose bare name is `bare`.
    fn mta_value(&self, bare: &[u8]) -> Option<&'e [u8]> {
        if self.mta_names & name_bit(bare) == 0 {
            return None;
        }
        match &self.mta {
            Some((table, n)) => table[..*n]
                .iter()
                .find(|(name, _)| *name == bare)
                .map(|m| m.1),
            None => self.env.macro_value(bare),
        }
    }

    fn set_rcpt(&mut self, address: &'e [u8]) {
        self.rcpt = Some(address);
    }

    /// The value of the macro whose bare name is `bare` (of kind `kind`), or None when it has
    /// none. The MTA's value wins over a derived one; an empty value counts as none, except the
    /// null sender's empty `mail_addr`.
    fn value(&self, bare: &[u8], kind: Derived) -> Option<Parts<'_>> {
        if let Some(v) = self.mta_value(bare) {
            return (!v.is_empty()).then(|| Parts::one(v));
        }
        let env = self.env;
        let addr = self.addr.as_ref().map(|a| a.as_bytes());
        let at_host = |a: &'e [u8]| a.iter().rposition(|&b| b == b'@').map(|at| &a[at + 1..]);
        let v = match kind {
            Derived::No => return None,
            Derived::RcptAddr => Parts::one(self.rcpt?),
            Derived::RcptHost => Parts::one(at_host(self.rcpt?)?),
            Derived::RcptMailer => Parts::one(match at_host(self.rcpt?) {
                Some(_) => b"smtp",
                None => b"local",
            }),
            Derived::ClientAddr => Parts::one(addr?),
            Derived::ClientPort => {
                addr?;
                Parts::one(self.port.as_bytes())
            }
            Derived::ClientPtr => Parts::one(self.name?),
            Derived::ClientName => match (self.name, addr) {
                (Some(n), _) => Parts::one(n),
                (None, Some(a)) => Parts::of([b"[", a, b"]", &[]], 3),
                (None, None) => return None,
            },
            Derived::Ident => match (self.name, addr) {
                (Some(n), Some(a)) => Parts::of([n, b" [", a, b"]"], 4),
                (None, Some(a)) => Parts::of([b"[", a, b"]", &[]], 3),
                (Some(n), None) => Parts::one(n),
                (None, None) => return None,
            },
            Derived::MailAddr => return Some(Parts::one(&env.sender)),
            Derived::MailHost => Parts::one(at_host(&env.sender)?),
            Derived::MailMailer => Parts::one(if addr.is_some() { b"smtp" } else { b"local" }),
        };
        (!v.is_empty()).then_some(v)
    }
}

/// The message's header fields as parsed: names and values side by side in one buffer, which
/// the thread keeps for its next message, so that parsing allocates nothing per field.
#[derive(Default)]
struct HeaderSection {
    bytes: Vec<u8>,
    /// Per field: where its name starts, where the name ends and the value starts (the colon is
    /// not kept), where the value ends.
    fields: Vec<(usize, usize, usize)>,
}

impl HeaderSection {
    fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
    }

    fn len(&self) -> usize {
        self.fields.len()
    }

    fn name(&self, i: usize) -> &[u8] {
        let (start, end, _) = self.fields[i];
        &self.bytes[start..end]
    }

    /// Everything after the colon: leading white space kept, folded lines joined with `\n`.
    fn value(&self, i: usize) -> &[u8] {
        let (_, start, end) = self.fields[i];
        &self.bytes[start..end]
    }

    fn to_headers(&self) -> Vec<Header> {
        (0..self.len())
            .map(|i| Header {
                name: self.name(i).to_vec(),
                value: self.value(i).to_vec(),
            })
            .collect()
    }
}

/// Reads the MTA's message: the header section line by line, then the body in blocks. A message
/// in memory is read in place; one behind a read callback through a buffer that grows as needed
/// and is never zero-filled again.
struct ContentReader<'r> {
    /// The read callback; `None` for a message in memory.
    inner: Option<&'r mut dyn Read>,
    /// A message in memory: all of it.
    slice: &'r [u8],
    /// A message behind a callback: `buf[pos..end]` is unread.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
}

impl<'r> ContentReader<'r> {
    fn new(content: Content<'r>) -> ContentReader<'r> {
        match content {
            Content::Buffer(slice) => ContentReader {
                inner: None,
                slice,
                buf: Vec::new(),
                pos: 0,
                end: slice.len(),
                eof: true,
            },
            Content::Reader(inner) => ContentReader {
                inner: Some(inner),
                slice: &[],
                buf: Vec::new(),
                pos: 0,
                end: 0,
                eof: false,
            },
        }
    }

    /// For a message in memory, the rest of it, borrowed for as long as the message lives.
    fn in_memory(&self) -> Option<&'r [u8]> {
        match self.inner {
            None => Some(&self.slice[self.pos..]),
            Some(_) => None,
        }
    }

    /// The bytes available now.
    fn data(&self) -> &[u8] {
        if self.inner.is_none() {
            &self.slice[self.pos..]
        } else {
            &self.buf[self.pos..self.end]
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Reads more bytes from the callback; false at end of input (at once for a message in
    /// memory, which is all there).
    fn more(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Ok(false);
        };
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).max(1 << 16);
            self.buf.resize(grown, 0);
        }
        let n = loop {
            match inner.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::message(format!("reading the message failed: {e}"))),
            }
        };
        self.end += n.min(self.buf.len() - self.end);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// For a message behind a callback whose buffer is empty: reads straight into `dest`
    /// instead of through the buffer, saving a copy of every body byte. None when the bytes
    /// must come from the buffer (a message in memory, bytes left in the buffer, end of input).
    fn read_direct(&mut self, dest: &mut [u8]) -> Result<Option<usize>> {
        if self.eof || self.pos < self.end {
            return Ok(None);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Ok(None);
        };
        let n = loop {
            match inner.read(dest) {
                Ok(n) => break n.min(dest.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::message(format!("reading the message failed: {e}"))),
            }
        };
        if n == 0 {
            self.eof = true;
        }
        Ok(Some(n))
    }

    /// Gives back bytes read past where they could be used, to be read again first.
    fn unread_bytes(&mut self, bytes: &[u8]) {
        debug_assert!(self.pos == self.end);
        if self.buf.len() < bytes.len() {
            self.buf.resize(bytes.len(), 0);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.pos = 0;
        self.end = bytes.len();
    }

    /// The length of the next line, including its LF (the last line may lack one), which is
    /// then `data()[..len]`, not yet consumed; None at end of input.
    fn next_line(&mut self, consumed: &mut usize) -> Result<Option<usize>> {
        let mut scanned = 0;
        loop {
            let data = self.data();
            if let Some(i) = find_lf(&data[scanned..]) {
                let len = scanned + i + 1;
                *consumed += len;
                return Ok(Some(len));
            }
            scanned = data.len();
            if *consumed + scanned > MAX_HEADER_SECTION {
                return Err(Error::message(format!(
                    "the message's header section is larger than {MAX_HEADER_SECTION} bytes"
                )));
            }
            if !self.more()? {
                let len = self.data().len();
                if len == 0 {
                    return Ok(None);
                }
                *consumed += len;
                return Ok(Some(len));
            }
        }
    }

    /// Parses the header section into `fields`. Returns the bytes that already belong to the
    /// body (a first line that is not a header field when no blank line separates them).
    fn read_header_section(&mut self, fields: &mut HeaderSection) -> Result<Vec<u8>> {
        fields.clear();
        let mut consumed = 0usize;
        while let Some(len) = self.next_line(&mut consumed)? {
            let line = &self.data()[..len];
            let content = strip_eol(line);
            if content.is_empty() {
                self.consume(len);
                return Ok(Vec::new());
            }
            if content[0] == b' ' || content[0] == b'\t' {
                if let Some(last) = fields.fields.last_mut() {
                    fields.bytes.push(b'\n');
                    fields.bytes.extend_from_slice(content);
                    last.2 = fields.bytes.len();
                    self.consume(len);
                    continue;
                }
                let body = line.to_vec();
                self.consume(len);
                return Ok(body);
            }
            match content.iter().position(|&b| b == b':') {
                Some(colon) if colon > 0 && is_field_name(&content[..colon]) => {
                    let start = fields.bytes.len();
                    fields.bytes.extend_from_slice(&content[..colon]);
                    let name_end = fields.bytes.len();
                    fields.bytes.extend_from_slice(&content[colon + 1..]);
                    fields.fields.push((start, name_end, fields.bytes.len()));
                    self.consume(len);
                }
                _ => {
                    let body = line.to_vec();
                    self.consume(len);
                    return Ok(body);
                }
            }
        }
        Ok(Vec::new())
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    if end > 0 && line[end - 1] == b'\n' {
        end -= 1;
        if end > 0 && line[end - 1] == b'\r' {
            end -= 1;
        }
    }
    &line[..end]
}

/// RFC 5322 field name: printable US-ASCII except colon (and no white space).
fn is_field_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

/// Turns the body into CRLF text: a LF not preceded by CR gets one. Whole runs between line
/// ends are copied at once.
struct BodyCrlf {
    /// Body bytes the header parser already took (a first line that was no header field).
    pending: Vec<u8>,
    pending_pos: usize,
    /// The last byte written was a CR (so a LF at the start of the next run needs none).
    last_cr: bool,
    /// How far the write buffer's current allocation (`out_at`) is known to hold initialized
    /// bytes beyond its length: read into before, or zero-filled once. A body read straight
    /// into the buffer then needs no zero-fill for each chunk.
    out_init: usize,
    out_at: (*const u8, usize),
}

impl BodyCrlf {
    fn new(start: Vec<u8>) -> BodyCrlf {
        BodyCrlf {
            pending: start,
            pending_pos: 0,
            last_cr: false,
            out_init: 0,
            out_at: (std::ptr::null(), 0),
        }
    }

    /// Makes `out` `len` bytes long for a read into its tail, without zero-filling bytes that
    /// an earlier read of this body already initialized in the same allocation.
    fn grow_for_read(&mut self, out: &mut Vec<u8>, len: usize) {
        let at = (out.as_ptr(), out.capacity());
        if at != self.out_at || self.out_init < out.len() {
            // A new allocation (or a first use): nothing beyond the length is known.
            self.out_at = at;
            self.out_init = out.len();
        }
        if len > self.out_init {
            let known = self.out_init;
            // SAFETY: out.len() <= known <= capacity: bytes out.len()..known of this same
            // allocation (pointer and capacity unchanged since they were recorded) were written
            // by an earlier resize or read, and truncating a Vec<u8> does not uninitialize them.
            unsafe { out.set_len(known) };
            out.resize(len, 0);
            if out.as_ptr() != at.0 || out.capacity() != at.1 {
                self.out_at = (out.as_ptr(), out.capacity());
            }
            self.out_init = len;
        } else {
            // SAFETY: len <= out_init, and bytes up to out_init of this allocation are
            // initialized (see above).
            unsafe { out.set_len(len) };
        }
    }

    /// Reads the body from the MTA's callback straight into `out` (up to `max`) when nothing
    /// is held anywhere else, and checks the bytes in place: CRLF text, the usual case, then
    /// costs no copy of its own. From a bare LF on, the bytes go back to the reader, for the
    /// conversion in `fill`. None when the bytes must come through the reader's buffer.
    fn read_direct(
        &mut self,
        reader: &mut ContentReader<'_>,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<Option<usize>> {
        if self.pending_pos < self.pending.len() || reader.inner.is_none() || out.len() >= max {
            return Ok(None);
        }
        let start = out.len();
        self.grow_for_read(out, max);
        let got = match reader.read_direct(&mut out[start..]) {
            Ok(Some(n)) => n,
            other => {
                out.truncate(start);
                return other;
            }
        };
        let window = &out[start..start + got];
        let used = match find_bare_lf(window, self.last_cr) {
            None => got,
            Some(i) => {
                reader.unread_bytes(&window[i..]);
                i
            }
        };
        if used > 0 {
            self.last_cr = out[start + used - 1] == b'\r';
        }
        out.truncate(start + used);
        Ok(Some(used))
    }

    /// The next `max` bytes of the body (or what is left) when they can go out as they are: a
    /// message in memory, nothing held back by the header parser, CRLF text throughout, and
    /// long enough to be worth not copying. They are consumed. None leaves everything as it was.
    fn take_as_is<'r>(&mut self, reader: &mut ContentReader<'r>, max: usize) -> Option<&'r [u8]> {
        if self.pending_pos < self.pending.len() {
            return None;
        }
        let rest = reader.in_memory()?;
        let window = &rest[..rest.len().min(max)];
        if window.len() < SPLICE_MIN || find_bare_lf(window, self.last_cr).is_some() {
            return None;
        }
        reader.consume(window.len());
        self.last_cr = window.last() == Some(&b'\r');
        Some(window)
    }

    /// Appends converted bytes to `out` until `out.len()` reaches `max` or the body ends; false
    /// when the body is exhausted.
    fn fill(
        &mut self,
        reader: &mut ContentReader<'_>,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool> {
        loop {
            if out.len() >= max {
                return Ok(true);
            }
            if let Some(used) = self.read_direct(reader, out, max)? {
                if used > 0 || !reader.eof {
                    continue;
                }
                return Ok(false);
            }
            let from_pending = self.pending_pos < self.pending.len();
            if !from_pending && reader.data().is_empty() && !reader.more()? {
                return Ok(false);
            }
            let src: &[u8] = if from_pending {
                &self.pending[self.pending_pos..]
            } else {
                reader.data()
            };
            let room = max - out.len();
            let window = &src[..src.len().min(room)];
            // The run up to the first bare LF (one without its CR) is copied as it is: for CRLF
            // text that is the whole window in one copy.
            let bare = find_bare_lf(window, self.last_cr);
            let (used, full) = match bare {
                None => {
                    out.extend_from_slice(window);
                    self.last_cr = window.last() == Some(&b'\r');
                    (window.len(), false)
                }
                Some(i) if i + 2 <= room => {
                    out.extend_from_slice(&window[..i]);
                    out.extend_from_slice(b"\r\n");
                    self.last_cr = false;
                    (i + 1, false)
                }
                Some(i) => {
                    // The CRLF does not fit: end this chunk before the LF.
                    out.extend_from_slice(&window[..i]);
                    if i > 0 {
                        self.last_cr = false;
                    }
                    (i, true)
                }
            };
            if from_pending {
                self.pending_pos += used;
            } else {
                reader.consume(used);
            }
            if full {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per call, to cut lines and CRLFs anywhere.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn chunks_from(mut reader: ContentReader<'_>, start: Vec<u8>, max: usize) -> Vec<Vec<u8>> {
        let mut body = BodyCrlf::new(start);
        let mut chunks = Vec::new();
        loop {
            let mut chunk = Vec::new();
            let more = body.fill(&mut reader, &mut chunk, max).unwrap();
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
            if !more {
                break;
            }
        }
        chunks
    }

    /// The body's chunks, read in place and through callbacks of several step sizes, which
    /// must all agree.
    fn body_of(input: &[u8], max: usize) -> Vec<Vec<u8>> {
        let in_place = chunks_from(ContentReader::new(Content::Buffer(input)), Vec::new(), max);
        for step in [1, 3, 64, 1 << 20] {
            let mut t = Trickle { data: input, step };
            let streamed =
                chunks_from(ContentReader::new(Content::Reader(&mut t)), Vec::new(), max);
            assert_eq!(
                streamed.concat(),
                in_place.concat(),
                "step {step}, max {max}"
            );
            assert!(
                streamed.iter().all(|c| c.len() <= max),
                "step {step}, max {max}"
            );
        }
        in_place
    }

    #[test]
    fn body_gets_crlf_line_ends_and_keeps_existing_ones() {
        let chunks = body_of(b"a\nb\r\nc", 100);
        assert_eq!(chunks.concat(), b"a\r\nb\r\nc");
        assert_eq!(
            body_of(b"\n\n\r\n\r\r\n", 100).concat(),
            b"\r\n\r\n\r\n\r\r\n"
        );
    }

    #[test]
    fn body_chunks_never_exceed_the_limit_nor_split_a_crlf_badly() {
        let input: Vec<u8> = b"0123456\n".repeat(1000);
        for max in [2usize, 3, 5, 7, 8, 9, 10, 64, 65535] {
            let chunks = body_of(&input, max);
            assert!(chunks.iter().all(|c| c.len() <= max), "max {max}");
            assert_eq!(chunks.concat(), b"0123456\r\n".repeat(1000), "max {max}");
        }
    }

    #[test]
    fn body_cr_at_chunk_boundary_is_not_doubled() {
        let input = b"abc\r\ndef\r\n".repeat(50);
        for max in 2..20 {
            assert_eq!(body_of(&input, max).concat(), input, "max {max}");
        }
    }

    /// A body streamed through a callback of random read sizes into one write buffer that is
    /// cleared between chunks, as a conversation's is when it writes: the bytes read straight
    /// into the buffer, the bare LFs found there and handed back, and the buffer's reuse from
    /// chunk to chunk all give what a byte-by-byte conversion gives.
    #[test]
    fn body_streamed_into_a_reused_buffer_matches_a_plain_conversion() {
        let mut next = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15u64);
        struct Random<'a, F: FnMut() -> u64> {
            data: &'a [u8],
            next: F,
        }
        impl<F: FnMut() -> u64> Read for Random<'_, F> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let step = match (self.next)() % 4 {
                    0 => 1 + (self.next)() as usize % 7,
                    1 => 1 + (self.next)() as usize % 5000,
                    _ => usize::MAX,
                };
                let n = self.data.len().min(step).min(buf.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        for case in 0..300 {
            let len = next() as usize % if case % 10 == 0 { 300_000 } else { 3000 };
            let bare_every = 1 + next() % 400;
            let input: Vec<u8> = (0..len)
                .map(|_| match next() % (bare_every * 8) {
                    0 => b'\n',
                    1..=8 => b'\r',
                    _ => b'x',
                })
                .flat_map(|b| {
                    if b == b'x' {
                        b"ab\r\n".to_vec()
                    } else {
                        vec![b]
                    }
                })
                .take(len)
                .collect();
            let mut want = Vec::with_capacity(input.len() * 2);
            let mut prev = 0u8;
            for &b in &input {
                if b == b'\n' && prev != b'\r' {
                    want.push(b'\r');
                }
                want.push(b);
                prev = b;
            }
            let max = match next() % 3 {
                0 => 2 + next() as usize % 20,
                1 => 2 + next() as usize % 70_000,
                _ => MAX_DATA_LEN,
            };
            let mut source = Random {
                data: &input,
                next: &mut next,
            };
            let mut reader = ContentReader::new(Content::Reader(&mut source));
            let mut body = BodyCrlf::new(Vec::new());
            let mut out = Vec::new();
            let mut got = Vec::new();
            loop {
                // A packet header before each chunk, as in a conversation.
                out.extend_from_slice(b"HDR");
                let more = body.fill(&mut reader, &mut out, 3 + max).unwrap();
                assert!(out.len() <= 3 + max, "case {case}: chunk over {max}");
                got.extend_from_slice(&out[3..]);
                out.clear();
                if !more {
                    break;
                }
            }
            assert_eq!(got, want, "case {case}: len {len}, max {max}");
        }
    }

    #[test]
    fn body_long_lines_and_8bit_bytes_pass_whole() {
        let mut input = vec![0xa6u8; 200_000];
        input.extend_from_slice(b"\nend");
        let chunks = body_of(&input, MAX_DATA_LEN);
        assert!(chunks.iter().all(|c| c.len() <= MAX_DATA_LEN));
        let mut want = vec![0xa6u8; 200_000];
        want.extend_from_slice(b"\r\nend");
        assert_eq!(chunks.concat(), want);
    }

    #[test]
    fn header_section_parses_folds_and_finds_the_body() {
        let msg = b"Subject: hi\r\n there\r\nX-A:b\n\nbody\n";
        for step in [1usize, 2, 5, 1000] {
            let mut t = Trickle { data: msg, step };
            let mut r = ContentReader::new(Content::Reader(&mut t));
            let mut fields = HeaderSection::default();
            let start = r.read_header_section(&mut fields).unwrap();
            let h = fields.to_headers();
            assert_eq!(h.len(), 2);
            assert_eq!(h[0].name, b"Subject");
            assert_eq!(h[0].value, b" hi\n there");
            assert_eq!(h[1].value, b"b");
            assert!(start.is_empty());
            assert_eq!(chunks_from(r, start, 100).concat(), b"body\r\n");
        }
    }

    #[test]
    fn a_line_that_is_no_header_starts_the_body() {
        let msg = b"Subject: x\nthis is text\nmore\n";
        let mut r = ContentReader::new(Content::Buffer(msg));
        let mut fields = HeaderSection::default();
        let start = r.read_header_section(&mut fields).unwrap();
        assert_eq!(fields.to_headers().len(), 1);
        assert_eq!(start, b"this is text\n");
        assert_eq!(
            chunks_from(r, start, 1000).concat(),
            b"this is text\r\nmore\r\n"
        );
    }

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

    #[test]
    fn macro_values_from_the_envelope() {
        fn value(v: &MacroValues<'_>, name: &str) -> Option<String> {
            let bare = bare_macro_name(name.as_bytes());
            let parts = v.value(bare, Derived::of(bare))?;
            Some(String::from_utf8(parts.parts().concat()).unwrap())
        }
        let mut env = Envelope {
            client_name: Some(b"mail.example.org".to_vec()),
            client_addr: Some("192.0.2.1".parse().unwrap()),
            client_port: 40000,
            sender: b"a@example.com".to_vec(),
            macros: vec![
                (b"j".to_vec(), b"mx".to_vec()),
                (b"{empty}".to_vec(), Vec::new()),
            ],
            ..Envelope::default()
        };
        let recipient = b"b@example.net".to_vec();
        let local = b"postmaster".to_vec();
        {
            let mut v = MacroValues::new(&env);
            let want = [
                ("j", Some("mx")),
                ("{j}", Some("mx")),
                ("empty", None),
                ("{client_addr}", Some("192.0.2.1")),
                ("{client_port}", Some("40000")),
                ("{client_name}", Some("mail.example.org")),
                ("{client_ptr}", Some("mail.example.org")),
                ("_", Some("mail.example.org [192.0.2.1]")),
                ("{mail_addr}", Some("a@example.com")),
                ("{mail_host}", Some("example.com")),
                ("{mail_mailer}", Some("smtp")),
                ("{rcpt_addr}", None),
                ("{rcpt_mailer}", None),
                ("{unknown}", None),
                ("", None),
            ];
            for (name, w) in want {
                assert_eq!(value(&v, name).as_deref(), w, "{name}");
            }
            v.set_rcpt(&recipient);
            assert_eq!(value(&v, "{rcpt_addr}").as_deref(), Some("b@example.net"));
            assert_eq!(value(&v, "{rcpt_host}").as_deref(), Some("example.net"));
            assert_eq!(value(&v, "{rcpt_mailer}").as_deref(), Some("smtp"));
            v.set_rcpt(&local);
            assert_eq!(value(&v, "{rcpt_host}").as_deref(), None);
            assert_eq!(value(&v, "{rcpt_mailer}").as_deref(), Some("local"));
        }
        env.client_name = Some(Vec::new());
        env.client_addr = Some("2001:db8::1".parse().unwrap());
        env.sender = Vec::new();
        {
            let v = MacroValues::new(&env);
            assert_eq!(value(&v, "{client_name}").as_deref(), Some("[2001:db8::1]"));
            assert_eq!(value(&v, "{client_ptr}").as_deref(), None);
            assert_eq!(value(&v, "_").as_deref(), Some("[2001:db8::1]"));
            assert_eq!(value(&v, "{mail_addr}").as_deref(), Some(""));
            assert_eq!(value(&v, "{mail_host}").as_deref(), None);
        }
        env.client_name = Some(b"host".to_vec());
        env.client_addr = None;
        {
            let v = MacroValues::new(&env);
            assert_eq!(value(&v, "{client_name}").as_deref(), Some("host"));
            assert_eq!(value(&v, "_").as_deref(), Some("host"));
            assert_eq!(value(&v, "{client_addr}").as_deref(), None);
            assert_eq!(value(&v, "{client_port}").as_deref(), None);
            assert_eq!(value(&v, "{mail_mailer}").as_deref(), Some("local"));
        }
        env.client_name = None;
        let v = MacroValues::new(&env);
        assert_eq!(value(&v, "{client_name}").as_deref(), None);
        assert_eq!(value(&v, "_").as_deref(), None);

        // The last of a name wins, braces or not, from the table and without it.
        for extra in [0usize, MTA_MACROS] {
            env.macros = (0..extra)
                .map(|i| (format!("m{i}").into_bytes(), b"v".to_vec()))
                .collect();
            env.macros.push((b"x".to_vec(), b"1".to_vec()));
            env.macros.push((b"{x}".to_vec(), b"2".to_vec()));
            let v = MacroValues::new(&env);
            assert_eq!(v.mta.is_some(), extra == 0);
            assert_eq!(value(&v, "x").as_deref(), Some("2"));
            assert_eq!(value(&v, "{x}").as_deref(), Some("2"));
            assert_eq!(value(&v, "{m0}").as_deref(), (extra > 0).then_some("v"));
        }
    }

    /// Parts written a few bytes at a time, with an interruption, arrive whole and in order;
    /// a send that takes nothing is an error, not a loop.
    #[test]
    fn vectored_writes_survive_short_sends() {
        let a = b"\0\0\0\x05Bbody".to_vec();
        let b = vec![b'x'; 100];
        let mut parts = [IoSlice::new(&a), IoSlice::new(&[]), IoSlice::new(&b)];
        let mut got = Vec::new();
        let mut calls = 0;
        all_vectored(&mut parts, |p| {
            calls += 1;
            if calls == 2 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut n = 0;
            for part in p {
                let take = part.len().min(3 - n);
                got.extend_from_slice(&part[..take]);
                n += take;
                if n == 3 {
                    break;
                }
            }
            Ok(n)
        })
        .expect("all sent");
        assert_eq!(got, [a.clone(), b.clone()].concat());
        let mut parts = [IoSlice::new(&a)];
        let e = all_vectored(&mut parts, |_| Ok(0)).expect_err("nothing taken");
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
