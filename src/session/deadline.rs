//! TIMEOUT and MESSAGE_TIMEOUT: every read and write on the connection is bounded by the smaller
//! of TIMEOUT and the time left before the message's deadline, set as socket timeouts, and set
//! again only when that bound changes. The clock is read as seldom as that allows.
//!
//! MESSAGE_TIMEOUT counts the time the library spends on the message: a caller that pushes a
//! message piece by piece (the push API) pauses the clock between pushes (`pause`, `resume`),
//! so the MTA's own time between them (a slow SMTP client) is not charged to the Milter.

use super::wire::Timeouts;
use crate::error::{Error, Result};
use crate::net::SocketTimeouts;
use std::io;
use std::time::{Duration, Instant};

/// What a socket timeout is set for (`Clock::arm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A small write with nothing unanswered before it, and the read of its reply: together
    /// bounded by one timeout.
    QuickExchange,
    /// A read of its own (another packet of a reply, PROGRESS): bounded by one timeout.
    Read,
    /// Any other write: it may take more than one timeout, so the clock is read after it too.
    LongWrite,
}

/// The bounds of one conversation's reads and writes.
pub struct Clock {
    pub timeout: Duration,
    pub deadline: Instant,
    /// The timeouts set on the socket now (to save system calls).
    pub timeouts: SocketTimeouts,
    /// The last write was armed and small enough never to block, so the read of its reply
    /// may run on the same arming: no second look at the clock (one per round trip).
    pub read_armed: bool,
    /// Quick exchanges that may still run on the timeouts set without reading the clock (see
    /// `arm`).
    quick_exchanges: u32,
    /// While paused (between pushes): the time that was left.
    paused: Option<Duration>,
}

impl Clock {
    pub fn new(timeout: Duration, deadline: Instant, timeouts: SocketTimeouts) -> Clock {
        Clock {
            timeout,
            deadline,
            timeouts,
            read_armed: false,
            quick_exchanges: 0,
            paused: None,
        }
    }

    /// Stops the message's clock until `resume`: the time until then is not the library's.
    /// A push that did no I/O (a header field or body piece only added to the write buffer)
    /// never started the clock (see `resume`), and stopping it reads no clock either.
    pub fn pause(&mut self) {
        if self.paused.is_none() {
            self.paused = Some(self.deadline.saturating_duration_since(Instant::now()));
        }
        // A reply to a write of this push is read in a later one on an arming of its own, so
        // that the clock is started for it.
        self.read_armed = false;
    }

    /// Starts the clock again with the time that was left at `pause`, at the push's first read
    /// or write (`arm`), not here: a push that only adds to the write buffer (each header field
    /// and body piece under the NR_* bits, one call each from a BMI caller) then costs no look
    /// at the clock, and its microseconds of encoding are not charged. The deadline only moves
    /// later, so what `arm` worked out for it stays true.
    pub fn resume(&mut self) {}

    /// The clock started for real, if a push left it waiting (see `resume`).
    fn start(&mut self) {
        if let Some(left) = self.paused.take() {
            self.deadline = Instant::now() + left;
        }
    }

    /// Sets the socket timeout to min(TIMEOUT, time left before the message deadline).
    ///
    /// The clock is read only when needed: while the deadline is more than n + 1 timeouts
    /// away, n more quick exchanges (a small write and its reply, each bounded by TIMEOUT)
    /// cannot bring it closer than one timeout, so TIMEOUT stays right for them.
    pub fn arm<S: Timeouts>(&mut self, stream: &mut S, op: Op, peer: &str) -> Result<()> {
        self.start();
        if op == Op::QuickExchange && self.quick_exchanges > 0 {
            self.quick_exchanges -= 1;
            return Ok(());
        }
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(Error::timeout(format!(
                "milter {peer}: the conversation took longer than MESSAGE_TIMEOUT"
            )));
        }
        let t = self.timeout.min(left);
        // Reset only when needed: TIMEOUT stays set until the deadline comes closer than it.
        let stale = |cur: Option<Duration>| match cur {
            None => true,
            Some(cur) => t < cur || (t > cur && cur < self.timeout),
        };
        let setting = |e: io::Error| Error::io(format!("milter {peer}: setting timeout: {e}"));
        if stale(self.timeouts.read) {
            stream.set_read_timeout_to(t).map_err(setting)?;
            self.timeouts.read = Some(t);
        }
        if stale(self.timeouts.write) {
            stream.set_write_timeout_to(t).map_err(setting)?;
            self.timeouts.write = Some(t);
        }
        // Whole timeouts left beyond this exchange's, less one for the moments between
        // exchanges: that many more may run without the clock.
        self.quick_exchanges = if op != Op::LongWrite && t == self.timeout {
            // In u64: a u128 division is a call into the compiler's runtime.
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            (nanos(left) / nanos(t).max(1)).saturating_sub(2) as u32
        } else {
            0
        };
        Ok(())
    }

    /// The error for a failed read or write: a timeout names the limit that ended the wait.
    pub fn io_error(&self, peer: &str, doing: &str, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                // The wait was bounded by the message deadline when that was nearer than
                // TIMEOUT (the socket was armed with less than TIMEOUT).
                let left = self.deadline.saturating_duration_since(Instant::now());
                let by_deadline = self.timeouts.read.is_some_and(|t| t < self.timeout);
                if left.is_zero() || by_deadline {
                    Error::timeout(format!(
                        "milter {peer}: {doing} the Milter: the conversation took longer than \
                         MESSAGE_TIMEOUT"
                    ))
                } else {
                    Error::timeout(format!(
                        "milter {peer}: {doing} the Milter timed out after {:.2} s (TIMEOUT)",
                        self.timeout.as_secs_f64()
                    ))
                }
            }
            _ => Error::io(format!("milter {peer}: {doing} the Milter: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A stream that takes any timeout and is never read or written here.
    struct Idle;

    impl Read for Idle {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    impl Write for Idle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timeouts for Idle {
        fn set_read_timeout_to(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
        fn set_write_timeout_to(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    /// Between pushes the clock stands; a push that only buffers is charged nothing, and one
    /// that reads or writes is charged from its first arming to its end.
    #[test]
    fn a_push_is_charged_from_its_first_read_or_write() {
        let ten = Duration::from_secs(10);
        let mut c = Clock::new(ten, Instant::now() + ten, SocketTimeouts::default());
        c.pause();
        let left = c.paused.expect("paused");
        let nap = Duration::from_millis(30);
        // A push with no I/O.
        c.resume();
        std::thread::sleep(nap);
        c.pause();
        assert_eq!(c.paused, Some(left), "a push without I/O was charged");
        // A push that reads.
        c.resume();
        c.arm(&mut Idle, Op::Read, "test").expect("armed");
        assert!(
            c.paused.is_none(),
            "the first arming did not start the clock"
        );
        std::thread::sleep(nap);
        c.pause();
        let after = c.paused.expect("paused");
        assert!(
            left - after >= nap,
            "charged {:?} for {nap:?}",
            left - after
        );
    }
}
