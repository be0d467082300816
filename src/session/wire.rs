//! The bytes on the connection: the write buffer (packets queued until a reply is needed, then
//! written together, long body parts spliced in without a copy), the read buffer and packet
//! reads with their caps, the transcript and the DEBUG=2/3 traces of both.

use super::deadline::{Clock, Op};
use crate::error::{Error, Result};
use crate::protocol;
use log::{debug, trace};
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Holding at most this many unsent bytes, the session writes them out even without a reply due
/// (a long body under NR_BODY).
pub const WRITE_HIGH_WATER: usize = 256 << 10;

/// At most this many parts of the message are spliced into one write.
pub const MAX_SPLICED: usize = 8;

/// A write this small fits in a TCP socket's send buffer (16 KiB by default, and it only grows
/// from there): when nothing else is unsent it never blocks.
const SMALL_WRITE: usize = 4096;

/// Buffers grown past this are dropped instead of kept, so an idle thread holds little: the
/// write buffer holds at most `WRITE_HIGH_WATER` and one BODY packet, the others a large header
/// section or reply.
pub const SPARE_LIMIT: usize = WRITE_HIGH_WATER + (128 << 10);

/// Message bytes written as they are after the first `at` bytes of the write buffer.
pub struct Splice<'m> {
    pub at: usize,
    pub bytes: &'m [u8],
}

/// Stream timeouts, so that the session can bound every read and write.
pub trait Timeouts: Read + Write {
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

impl Timeouts for std::os::unix::net::UnixStream {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
    fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(timeout))
    }
}

/// A stream lent to a conversation (`session::run`) is used as the stream itself.
impl<T: Timeouts + ?Sized> Timeouts for &mut T {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        (**self).set_read_timeout_to(timeout)
    }
    fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        (**self).set_write_timeout_to(timeout)
    }
    fn send_all_vectored(&mut self, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        (**self).send_all_vectored(parts)
    }
    fn quickack(&mut self) {
        (**self).quickack()
    }
}

/// Sends all of `parts` with `send`, which may take part of them each time.
pub fn all_vectored(
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

/// Sends `packets` (QUIT, or ABORT and QUIT) on a connection that is being closed. Best effort,
/// within 100 ms: the connection is closed right after, whatever happens.
pub fn last_words<S: Timeouts>(stream: &mut S, packets: &[u8]) {
    let _ = stream.set_write_timeout_to(Duration::from_millis(100));
    let _ = stream.write_all(packets);
}

/// A conversation's buffers, kept by the thread for its next conversation: an MTA thread filters
/// message after message, and fresh buffers cost allocations and a zero-fill each time.
struct Buffers {
    out: Vec<u8>,
    rbuf: Vec<u8>,
}

thread_local! {
    static SPARE: std::cell::RefCell<Option<Buffers>> = const { std::cell::RefCell::new(None) };
}

#[inline(always)] // its one caller, once a message: one function fewer entered
fn take_buffers() -> Buffers {
    SPARE
        .try_with(|s| s.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or_else(|| Buffers {
            out: Vec::with_capacity(8192),
            rbuf: Vec::new(),
        })
}

/// The buffers of one conversation, given back to the thread that ends it.
pub struct Bufs<'m> {
    pub out: Vec<u8>,
    /// Parts of the MTA's message that go out as they are, without a copy: each is written
    /// after the first `at` bytes of `out` (a BODY packet's header), in order.
    pub spliced: Vec<Splice<'m>>,
    /// Replies as read: `rbuf[rpos..rend]` is unread; the storage past `rend` is reused, never
    /// zero-filled again.
    pub rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
}

impl Drop for Bufs<'_> {
    #[inline] // in its drop glue: one function fewer entered a message
    fn drop(&mut self) {
        let mut b = Buffers {
            out: std::mem::take(&mut self.out),
            rbuf: std::mem::take(&mut self.rbuf),
        };
        b.out.clear();
        if b.out.capacity() <= SPARE_LIMIT && b.rbuf.len() <= SPARE_LIMIT {
            let _ = SPARE.try_with(|s| *s.borrow_mut() = Some(b));
        }
    }
}

/// One connection's bytes: what is queued, what was read, the clock that bounds both.
pub struct Wire<'m, S: Timeouts> {
    pub stream: S,
    pub peer: Arc<str>,
    pub bufs: Bufs<'m>,
    pub clock: Clock,
    /// Every packet, described (the check tool's transcript), when asked for.
    pub transcript: Option<Vec<String>>,
    /// Bytes were written that no reply has answered yet (a long body under NR_BODY): they may
    /// still fill the socket's send buffer.
    pub unanswered: bool,
    pub trace_packets: bool,
    /// Every read and write is logged in hex (DEBUG=3). Asked once per message: the question
    /// goes through the logger's dispatch each time.
    pub trace_io: bool,
    /// The command whose reply was read last, once one was.
    replied_to: Option<&'static str>,
    /// On a kept connection: note when the first reply of this message arrives.
    pub note_answered: bool,
    /// A reply of this message arrived (noted only with `note_answered`).
    pub answered: bool,
}

impl<'m, S: Timeouts> Wire<'m, S> {
    pub fn new(stream: S, peer: Arc<str>, clock: Clock, debug: u8, traced: bool) -> Self {
        let spare = take_buffers();
        Wire {
            stream,
            peer,
            bufs: Bufs {
                out: spare.out,
                spliced: Vec::new(),
                rbuf: spare.rbuf,
                rpos: 0,
                rend: 0,
            },
            clock,
            transcript: traced.then(Vec::new),
            unanswered: false,
            // The handle's DEBUG level, read from its options: asking the logger goes through
            // its dispatch on every call.
            trace_packets: debug >= 2,
            trace_io: debug >= 3,
            replied_to: None,
            note_answered: false,
            answered: false,
        }
    }

    /// Queues one packet.
    pub fn queue(&mut self, cmd: u8, data: &[u8]) {
        let start = self.bufs.out.len();
        protocol::encode_packet(&mut self.bufs.out, cmd, &[data]);
        self.trace_out(start);
    }

    /// Bytes queued and not yet written: those in `out` and those spliced in.
    pub fn unsent(&self) -> usize {
        self.bufs.out.len()
            + self
                .bufs
                .spliced
                .iter()
                .map(|s| s.bytes.len())
                .sum::<usize>()
    }

    /// Drops what is queued (an encoding made void by the negotiation).
    pub fn discard(&mut self) {
        self.bufs.out.clear();
        self.bufs.spliced.clear();
    }

    /// Writes out everything queued, in one system call. Exactly one reply per command: bytes
    /// that wait unread now are a reply nobody asked for, and answering on would pair every later
    /// reply with the wrong command.
    pub fn write_out(&mut self) -> Result<()> {
        if self.bufs.out.is_empty() {
            return Ok(());
        }
        // Checked against what has been read (a reply that came with the previous one); the
        // socket itself is probed once per message, after the final reply.
        if let Some(what) = self.replied_to {
            let unread = self.unread();
            if unread > 0 {
                let end = self.bufs.rend.min(self.bufs.rpos + 64);
                debug!(
                    "milter {}: unexpected bytes\n{}",
                    self.peer,
                    protocol::trace::hexdump(&self.bufs.rbuf[self.bufs.rpos..end])
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
        let op = if quick {
            Op::QuickExchange
        } else {
            Op::LongWrite
        };
        self.clock.arm(&mut self.stream, op, &self.peer)?;
        self.clock.read_armed = quick;
        if self.trace_io {
            trace!(
                "milter {}: write {} octets\n{}",
                self.peer,
                self.bufs.out.len(),
                protocol::trace::hexdump(&self.bufs.out)
            );
        }
        let out = &self.bufs.out;
        let result = if self.bufs.spliced.is_empty() {
            self.stream.write_all(out)
        } else {
            // The packets with the spliced parts in their places, in one system call.
            let mut parts = [IoSlice::new(&[]); 2 * MAX_SPLICED + 1];
            let mut n = 0;
            let mut from = 0;
            for sp in &self.bufs.spliced {
                parts[n] = IoSlice::new(&out[from..sp.at]);
                parts[n + 1] = IoSlice::new(sp.bytes);
                n += 2;
                from = sp.at;
            }
            parts[n] = IoSlice::new(&out[from..]);
            self.stream.send_all_vectored(&mut parts[..n + 1])
        };
        self.discard();
        result.map_err(|e| self.clock.io_error(&self.peer, "writing to", e))
    }

    /// Reads one packet: its command, and where its data is in `rbuf` (valid until the next
    /// read). Memory grows only as the bytes actually arrive.
    pub fn read_packet(&mut self, what: &'static str) -> Result<(u8, std::ops::Range<usize>)> {
        self.replied_to = Some(what);
        self.unanswered = false;
        self.fill(4, what)?;
        if self.note_answered {
            self.answered = true;
        }
        let b = &self.bufs;
        let p = b.rpos;
        let prefix = [b.rbuf[p], b.rbuf[p + 1], b.rbuf[p + 2], b.rbuf[p + 3]];
        let len = match protocol::decode_len(prefix) {
            Ok(len) => len,
            Err(e) => {
                // Only what has already arrived: waiting for more would only delay the error.
                let end = b.rend.min(b.rpos + 64);
                debug!(
                    "milter {}: bad packet\n{}",
                    self.peer,
                    protocol::trace::hexdump(&b.rbuf[b.rpos..end])
                );
                return Err(self.protocol_error(&format!("bad reply to {what}: {e}")));
            }
        };
        self.fill(4 + len, what)?;
        let b = &mut self.bufs;
        let cmd = b.rbuf[b.rpos + 4];
        let at = b.rpos + 5..b.rpos + 4 + len;
        b.rpos += 4 + len;
        if b.rpos == b.rend {
            // The next read starts at the front again; this packet's bytes stay until then.
            b.rpos = 0;
            b.rend = 0;
        }
        let data = &self.bufs.rbuf[at.clone()];
        if self.trace_packets {
            debug!(
                "milter {}: {}\n{}",
                self.peer,
                protocol::trace::describe(false, cmd, data),
                protocol::trace::hexdump(data)
            );
        }
        if let Some(t) = self.transcript.as_mut() {
            t.push(protocol::trace::describe(false, cmd, data));
        }
        Ok((cmd, at))
    }

    /// The data of the packet just read.
    pub fn data(&self, at: std::ops::Range<usize>) -> &[u8] {
        &self.bufs.rbuf[at]
    }

    /// Bytes read but not yet taken as a packet.
    pub fn unread(&self) -> usize {
        self.bufs.rend - self.bufs.rpos
    }

    /// Makes `n` unread bytes available in the read buffer. The buffer grows by at most 64 KiB
    /// beyond what has arrived, so a length that lies allocates nothing near what it claims.
    fn fill(&mut self, n: usize, what: &str) -> Result<()> {
        if self.unread() >= n {
            return Ok(());
        }
        let b = &mut self.bufs;
        if b.rpos > 0 {
            b.rbuf.copy_within(b.rpos..b.rend, 0);
            b.rend -= b.rpos;
            b.rpos = 0;
        }
        while self.bufs.rend < n {
            let b = &mut self.bufs;
            if b.rend == b.rbuf.len() {
                let grown = (b.rbuf.len() * 2).max(4096).max(n).min(b.rend + (1 << 16));
                b.rbuf.resize(grown, 0);
            }
            if !std::mem::take(&mut self.clock.read_armed) {
                // A read of its own (a second packet, PROGRESS): the clock is read for it.
                self.clock.arm(&mut self.stream, Op::Read, &self.peer)?;
            }
            let have = self.bufs.rend;
            let got = loop {
                match self.stream.read(&mut self.bufs.rbuf[have..]) {
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
                    self.bufs.rend += got;
                    if self.trace_io {
                        trace!(
                            "milter {}: read {got} octets\n{}",
                            self.peer,
                            protocol::trace::hexdump(&self.bufs.rbuf[have..self.bufs.rend])
                        );
                    }
                }
                Err(e) => {
                    let doing = format!("reading the reply to {what} from");
                    return Err(self.clock.io_error(&self.peer, &doing, e));
                }
            }
        }
        Ok(())
    }

    /// The packet queued at `start` of `out`, for the transcript and the DEBUG=2 log.
    pub fn trace_out(&mut self, start: usize) {
        let out = &self.bufs.out;
        if (self.transcript.is_some() || self.trace_packets) && out.len() >= start + 5 {
            trace_packet(
                self.transcript.as_mut(),
                self.trace_packets,
                &self.peer,
                out[start + 4],
                &out[start + 5..],
            );
        }
    }

    /// A packet whose data is not in `out` (a spliced BODY), for the same.
    pub fn trace_data(&mut self, cmd: u8, data: &[u8]) {
        if self.transcript.is_some() || self.trace_packets {
            trace_packet(
                self.transcript.as_mut(),
                self.trace_packets,
                &self.peer,
                cmd,
                data,
            );
        }
    }

    /// A line of the transcript, when there is one.
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.transcript.as_mut() {
            t.push(line());
        }
    }

    pub fn protocol_error(&self, what: &str) -> Error {
        Error::protocol(format!("milter {}: {what}", self.peer))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
