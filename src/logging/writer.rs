//! Whole log records onto a destination that may refuse bytes at any moment (a pipe nobody
//! reads, a full disk). What cannot be written now is dropped and counted, never waited for; the
//! count goes out, as a line of its own, ahead of the first record that can be written again.
//! A record cut short by a partial write keeps its unwritten end (bounded) and that end goes out
//! before anything else, so that no line is ever followed by another one in its middle.

use std::io;

/// A destination that never waits: `Ok(n)` took the first `n` bytes (n ≥ 1), `Err` took none
/// now (the error's text says why, for the notice).
pub trait Destination {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

/// The most kept of a record cut short. A longer unwritten end is cut at the end of the line it
/// is in (or in that line, with `CUT`); the lines after it are dropped and counted.
pub const PENDING_MAX: usize = 64 * 1024;

/// Ends a line that had to be cut to fit `PENDING_MAX`.
const CUT: &[u8] = b" [cut]\n";

pub struct LineWriter<D: Destination> {
    dest: D,
    /// Names the destination in the notice: `LOG_FILE /var/log/milter.log`, `stderr`.
    name: String,
    /// Starts the notice line as it starts every record: `milter-spamfilter[PID] `.
    prefix: String,
    /// The unwritten end of the last record, written before anything else.
    pending: Vec<u8>,
    /// Lines dropped since the last notice.
    dropped: u64,
    /// Why the last of them could not be written.
    reason: String,
}

impl<D: Destination> LineWriter<D> {
    pub fn new(dest: D, name: String, prefix: String) -> LineWriter<D> {
        LineWriter {
            dest,
            name,
            prefix,
            pending: Vec::new(),
            dropped: 0,
            reason: String::new(),
        }
    }

    /// Writes one record (one or more lines, each ending in a line feed), or drops it.
    pub fn write_record(&mut self, record: &[u8]) {
        if !self.flush_pending() {
            self.drop_lines(record);
            return;
        }
        let with_notice;
        let bytes = if self.dropped > 0 {
            let mut b = self.notice();
            b.extend_from_slice(record);
            with_notice = b;
            &with_notice[..]
        } else {
            record
        };
        let written = self.write_some(bytes);
        if written == 0 {
            self.drop_lines(record);
            return;
        }
        // Some of the notice is out, so the rest of it goes first, from `pending`.
        self.dropped = 0;
        if written < bytes.len() {
            self.keep_tail(&bytes[written..]);
        }
    }

    /// Lines dropped and not yet reported (for tests).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The unwritten end of a record goes out first; true when nothing is left of it.
    fn flush_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let pending = std::mem::take(&mut self.pending);
        let written = self.write_some(&pending);
        self.pending = pending;
        self.pending.drain(..written);
        self.pending.is_empty()
    }

    /// Writes as much of `bytes` as the destination takes now; how much that was.
    fn write_some(&mut self, bytes: &[u8]) -> usize {
        let mut done = 0;
        while done < bytes.len() {
            match self.dest.write(&bytes[done..]) {
                Ok(0) => {
                    self.reason = "the destination took nothing".to_string();
                    break;
                }
                Ok(n) => done += n.min(bytes.len() - done),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.reason = e.to_string();
                    break;
                }
            }
        }
        done
    }

    /// Keeps what a partial write left over, up to `PENDING_MAX`: all of it if it fits, else the
    /// rest of the line it stopped in (cut if need be), dropping and counting the lines after.
    fn keep_tail(&mut self, tail: &[u8]) {
        if tail.len() <= PENDING_MAX {
            self.pending = tail.to_vec();
            return;
        }
        let line_end = tail
            .iter()
            .position(|&b| b == b'\n')
            .map_or(tail.len(), |p| p + 1);
        if line_end <= PENDING_MAX {
            self.pending = tail[..line_end].to_vec();
        } else {
            self.pending = tail[..PENDING_MAX - CUT.len()].to_vec();
            self.pending.extend_from_slice(CUT);
        }
        self.drop_lines(&tail[line_end..]);
    }

    fn drop_lines(&mut self, bytes: &[u8]) {
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        self.dropped += lines.max(u64::from(!bytes.is_empty()));
    }

    fn notice(&self) -> Vec<u8> {
        let n = self.dropped;
        format!(
            "{}WARN: {n} log line{} dropped ({}: {})\n",
            self.prefix,
            if n == 1 { "" } else { "s" },
            self.name,
            self.reason
        )
        .into_bytes()
    }
}

impl<D: Destination> Drop for LineWriter<D> {
    /// A last try at what is owed: the rest of a record, and the count.
    fn drop(&mut self) {
        if self.flush_pending() && self.dropped > 0 {
            let notice = self.notice();
            self.write_some(&notice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Takes at most `room` bytes in all (until given more), and says why it refuses the rest.
    #[derive(Clone, Default)]
    struct Scripted {
        out: Rc<RefCell<Vec<u8>>>,
        room: Rc<RefCell<usize>>,
    }

    impl Destination for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.room.borrow_mut();
            if *room == 0 {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "full"));
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.out.borrow_mut().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn writer(room: usize) -> (LineWriter<Scripted>, Scripted) {
        let d = Scripted::default();
        *d.room.borrow_mut() = room;
        let w = LineWriter::new(d.clone(), "LOG_FILE /x".into(), "p[1] ".into());
        (w, d)
    }

    fn out(d: &Scripted) -> String {
        String::from_utf8_lossy(&d.out.borrow()).into_owned()
    }

    #[test]
    fn records_go_out_whole_while_there_is_room() {
        let (mut w, d) = writer(1000);
        w.write_record(b"p[1] INFO: one\n");
        w.write_record(b"p[1] DEBUG: two\n  000000  41\n");
        assert_eq!(out(&d), "p[1] INFO: one\np[1] DEBUG: two\n  000000  41\n");
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn refused_lines_are_counted_and_the_count_goes_out_first() {
        let (mut w, d) = writer(0);
        w.write_record(b"a\n");
        w.write_record(b"b\n  c\n  d\n");
        assert_eq!(w.dropped(), 4, "every line of a refused record counts");
        assert_eq!(out(&d), "");
        *d.room.borrow_mut() = 1000;
        w.write_record(b"e\n");
        assert_eq!(
            out(&d),
            "p[1] WARN: 4 log lines dropped (LOG_FILE /x: full)\ne\n"
        );
        assert_eq!(w.dropped(), 0);
        w.write_record(b"f\n");
        assert!(out(&d).ends_with("e\nf\n"), "one notice only: {}", out(&d));
    }

    #[test]
    fn a_cut_record_is_finished_before_anything_else() {
        let (mut w, d) = writer(3);
        w.write_record(b"abcdef\n");
        assert_eq!(out(&d), "abc");
        // Still no room: the next record is dropped, not written into the middle of the line.
        w.write_record(b"next\n");
        assert_eq!(out(&d), "abc");
        assert_eq!(w.dropped(), 1);
        *d.room.borrow_mut() = 1000;
        w.write_record(b"last\n");
        assert_eq!(
            out(&d),
            "abcdef\np[1] WARN: 1 log line dropped (LOG_FILE /x: full)\nlast\n"
        );
    }

    #[test]
    fn the_kept_end_is_bounded() {
        // A record of many lines cut early: only the rest of its first line is kept.
        let line = format!("{}\n", "x".repeat(99));
        let record = line.repeat(2 * PENDING_MAX / 100);
        let (mut w, d) = writer(10);
        w.write_record(record.as_bytes());
        assert_eq!(w.pending.len(), 90);
        assert_eq!(w.dropped() as usize, 2 * PENDING_MAX / 100 - 1);
        // One line longer than the bound: cut, and marked so.
        let (mut w, _d2) = writer(10);
        let long = format!("{}\nnext\n", "y".repeat(3 * PENDING_MAX));
        w.write_record(long.as_bytes());
        assert_eq!(w.pending.len(), PENDING_MAX);
        assert!(w.pending.ends_with(CUT));
        assert_eq!(w.dropped(), 1);
        drop(d);
    }

    #[test]
    fn the_count_is_owed_until_closing() {
        let (mut w, d) = writer(0);
        w.write_record(b"a\n");
        *d.room.borrow_mut() = 1000;
        drop(w);
        assert_eq!(
            out(&d),
            "p[1] WARN: 1 log line dropped (LOG_FILE /x: full)\n"
        );
    }
}
