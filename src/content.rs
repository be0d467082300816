//! Reading the MTA's message: its header section field by field, its body in blocks with CRLF
//! line ends, from a buffer in memory or from the MTA's read callback. `drive` turns a whole
//! message (`Content`) into the pushes of the push API, so that `spamfilter_filter` and the BMI
//! calls run the same conversation; `BodyCrlf` converts body bytes into BODY packets in place.

use crate::error::{escape, Error, Result};
use crate::message::Content;
use crate::outcome::Header;
use crate::scan::{crlf_lines, find_bare_lf, find_byte, find_lf, Lines};
use std::io::{self, Read};

/// Largest header section we read; past it the message is refused as malformed input.
pub const MAX_HEADER_SECTION: usize = 4 << 20;

/// A part of the message this long or longer is spliced into the write instead of copied: a
/// copy of less costs less than the bookkeeping.
pub const SPLICE_MIN: usize = 16 << 10;

/// The message's header fields as parsed: names and values side by side in one buffer, which
/// the thread keeps for its next message, so that parsing allocates nothing per field.
#[derive(Default)]
pub struct HeaderSection {
    bytes: Vec<u8>,
    /// Per field: where its name starts, where the name ends and the value starts (the colon is
    /// not kept), where the value ends.
    fields: Vec<(usize, usize, usize)>,
    /// The raw bytes the fields took, line ends included (against MAX_HEADER_SECTION).
    raw: usize,
}

impl HeaderSection {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
        self.raw = 0;
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn name(&self, i: usize) -> &[u8] {
        let (start, end, _) = self.fields[i];
        &self.bytes[start..end]
    }

    /// Everything after the colon: leading white space kept, folded lines joined with `\n`.
    pub fn value(&self, i: usize) -> &[u8] {
        let (_, start, end) = self.fields[i];
        &self.bytes[start..end]
    }

    pub fn to_headers(&self) -> Vec<Header> {
        (0..self.len())
            .map(|i| Header {
                name: self.name(i).to_vec(),
                value: self.value(i).to_vec(),
            })
            .collect()
    }

    /// Whether the buffers are small enough to be kept for the thread's next message.
    pub fn worth_keeping(&self, limit: usize) -> bool {
        self.bytes.capacity() <= limit && self.fields.capacity() <= limit / 16
    }

    /// A line that starts a field (`content` without its line end), if it is one: its name
    /// must be printable US-ASCII without colon (RFC 5322).
    fn start_field(&mut self, content: &[u8]) -> bool {
        // memchr, not a byte-by-byte search: this runs for every field of every message.
        match find_byte(content, b':') {
            Some(colon) if colon > 0 && is_field_name(&content[..colon]) => {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(&content[..colon]);
                let name_end = self.bytes.len();
                self.bytes.extend_from_slice(&content[colon + 1..]);
                self.fields.push((start, name_end, self.bytes.len()));
                true
            }
            _ => false,
        }
    }

    /// A folded line (starting with white space) of the last field; false when there is none.
    fn continue_field(&mut self, content: &[u8]) -> bool {
        let Some(last) = self.fields.last_mut() else {
            return false;
        };
        self.bytes.push(b'\n');
        self.bytes.extend_from_slice(content);
        last.2 = self.bytes.len();
        true
    }

    /// Counts `n` more raw bytes against MAX_HEADER_SECTION.
    fn count(&mut self, n: usize) -> Result<()> {
        self.raw += n;
        if self.raw > MAX_HEADER_SECTION {
            return Err(Error::message(format!(
                "the message's header section is larger than {MAX_HEADER_SECTION} bytes"
            )));
        }
        Ok(())
    }

    /// Adds one whole raw field as a push hands it over: `Name: value`, its folded lines, and
    /// its line end (LF or CRLF; the last line may lack one).
    ///
    /// Each line end is found with memchr and each line copied once, so a field is scanned
    /// once, not a byte at a time (a BMI caller pushes every field this way).
    pub fn push_field(&mut self, field: &[u8]) -> Result<()> {
        self.count(field.len())?;
        let before = (self.bytes.len(), self.fields.len());
        let first_end = find_lf(field).map_or(field.len(), |i| i + 1);
        let why = if !self.start_field(strip_eol(&field[..first_end])) {
            "not a header field (a name, then a colon)"
        } else {
            let mut rest = &field[first_end..];
            loop {
                if rest.is_empty() {
                    return Ok(());
                }
                let end = find_lf(rest).map_or(rest.len(), |i| i + 1);
                let content = strip_eol(&rest[..end]);
                if !matches!(content.first(), Some(b' ' | b'\t')) {
                    break "a line after the first does not start with white space (one field per push)";
                }
                self.continue_field(content);
                rest = &rest[end..];
            }
        };
        // Undo the field: the caller may go on with the next one.
        self.bytes.truncate(before.0);
        self.fields.truncate(before.1);
        self.raw -= field.len();
        Err(Error::message(format!(
            "header field \"{}\": {why}",
            escape(&field[..field.len().min(200)])
        )))
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
    // Every byte looked at, without a branch per byte (the compiler makes it a vector loop):
    // this runs for every field of every message.
    name.iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(33) < 94) & (b != b':'))
}

/// What one line of the header section was.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderLine {
    /// The start of a new field (now the last in the section).
    NewField,
    /// A folded line of the last field.
    Folded,
    /// The blank line that ends the header section, or the end of the message.
    End,
    /// A line that is no header field: the body starts with it (these bytes).
    BodyStarts(Vec<u8>),
}

/// Reads the MTA's message: the header section line by line, then the body in blocks. A message
/// in memory is read in place; one behind a read callback through a buffer that grows as needed
/// and is never zero-filled again.
pub struct ContentReader<'r> {
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
    pub fn new(content: Content<'r>) -> ContentReader<'r> {
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
    pub fn in_memory(&self) -> Option<&'r [u8]> {
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
    /// then `data()[..len]`, not yet consumed; None at end of input. `scanned_before` bytes of
    /// the header section were taken already (against MAX_HEADER_SECTION).
    fn next_line(&mut self, scanned_before: usize) -> Result<Option<usize>> {
        let mut scanned = 0;
        loop {
            let data = self.data();
            if let Some(i) = find_lf(&data[scanned..]) {
                return Ok(Some(scanned + i + 1));
            }
            scanned = data.len();
            if scanned_before + scanned > MAX_HEADER_SECTION {
                return Err(Error::message(format!(
                    "the message's header section is larger than {MAX_HEADER_SECTION} bytes"
                )));
            }
            if !self.more()? {
                let len = self.data().len();
                return Ok((len > 0).then_some(len));
            }
        }
    }

    /// Reads one line of the header section into `fields`.
    pub fn header_line(&mut self, fields: &mut HeaderSection) -> Result<HeaderLine> {
        let Some(len) = self.next_line(fields.raw)? else {
            return Ok(HeaderLine::End);
        };
        let line = &self.data()[..len];
        let content = strip_eol(line);
        let what = if content.is_empty() {
            HeaderLine::End
        } else if content[0] == b' ' || content[0] == b'\t' {
            match fields.continue_field(content) {
                true => HeaderLine::Folded,
                false => HeaderLine::BodyStarts(line.to_vec()),
            }
        } else if fields.start_field(content) {
            HeaderLine::NewField
        } else {
            HeaderLine::BodyStarts(line.to_vec())
        };
        self.consume(len);
        if matches!(what, HeaderLine::NewField | HeaderLine::Folded) {
            fields.count(len)?;
        }
        Ok(what)
    }
}

/// A piece of the body handed to the session.
pub enum Body<'c, 'm, 'r> {
    /// Some of the body, copied into BODY packets; more may follow.
    Piece(&'c [u8]),
    /// The rest of the body, in memory for as long as the message lives: long CRLF stretches
    /// go out as they are, spliced into the write, without a copy.
    Rest(&'m [u8]),
    /// The rest of the body, from the MTA's read callback, read straight into the packets.
    Reader(&'c mut ContentReader<'r>),
}

/// What a whole-message driver (`drive`) pushes into: the push API's message, or the session's
/// own driver (`session::run`).
pub trait Pushes<'m> {
    /// CONNECT, HELO, MAIL, each RCPT and the end of recipients, from the envelope.
    fn envelope(&mut self) -> Result<()>;
    /// The header fields read so far, to add one to.
    fn fields(&mut self) -> &mut HeaderSection;
    /// Sends field `index` of `fields()`.
    fn send_field(&mut self, index: usize) -> Result<()>;
    fn end_of_header(&mut self) -> Result<()>;
    fn body(&mut self, body: Body<'_, 'm, '_>) -> Result<()>;
    /// The Milter has decided: the rest of the message need not be read.
    fn decided(&self) -> bool;
}

/// Pushes a whole message: the envelope, each header field once its folded lines are known,
/// the end of the header, the body (the rest of a buffer at once, or the read callback).
pub fn drive<'m>(to: &mut impl Pushes<'m>, content: Content<'m>) -> Result<()> {
    to.envelope()?;
    let mut reader = ContentReader::new(content);
    let mut sent = 0;
    let body_start = loop {
        if to.decided() {
            return Ok(());
        }
        let line = reader.header_line(to.fields())?;
        // A field is complete when the next one starts, or the header section ends.
        let complete = match line {
            HeaderLine::Folded => continue,
            HeaderLine::NewField => to.fields().len() - 1,
            _ => to.fields().len(),
        };
        while sent < complete {
            to.send_field(sent)?;
            sent += 1;
        }
        match line {
            HeaderLine::End => break Vec::new(),
            HeaderLine::BodyStarts(bytes) => break bytes,
            _ => {}
        }
    };
    to.end_of_header()?;
    if !body_start.is_empty() {
        to.body(Body::Piece(&body_start))?;
    }
    match reader.in_memory() {
        Some(rest) => to.body(Body::Rest(rest)),
        None => to.body(Body::Reader(&mut reader)),
    }
}

/// Turns the body into CRLF text in BODY packets: a LF not preceded by CR gets one. Whole runs
/// between line ends are copied at once. The state carries across pieces, so a body split
/// anywhere (even inside a CRLF) converts as it would whole.
#[derive(Default)]
pub struct BodyCrlf {
    /// The last byte written was a CR (so a LF at the start of the next run needs none).
    last_cr: bool,
    /// How far the write buffer's current allocation (`out_at`: pointer and capacity) is known
    /// to hold initialized bytes beyond its length: read into before, or zero-filled once. A
    /// body read straight into the buffer then needs no zero-fill for each read. Valid only
    /// within one `fill_from_reader` call, where `out` stays borrowed and only our own resize
    /// can reallocate it: across calls the buffer could be freed and another allocated at the
    /// same address with the same capacity, and its bytes would be taken as initialized.
    out_init: usize,
    out_at: (usize, usize),
}

impl BodyCrlf {
    /// Makes `out` `len` bytes long for a read into its tail, without zero-filling bytes that
    /// an earlier read of this body already initialized in the same allocation.
    fn grow_for_read(&mut self, out: &mut Vec<u8>, len: usize) {
        let at = (out.as_ptr() as usize, out.capacity());
        if at != self.out_at || self.out_init < out.len() {
            // A new allocation (or a first use): nothing beyond the length is known.
            self.out_at = at;
            self.out_init = out.len();
        }
        if len > self.out_init {
            let known = self.out_init;
            // SAFETY: out.len() <= known <= capacity: bytes out.len()..known of this same
            // allocation were written by an earlier resize or read in this `fill_from_reader`
            // call, during which `out` stayed borrowed (pointer and capacity unchanged since they
            // were recorded), and truncating a Vec<u8> does not uninitialize them.
            unsafe { out.set_len(known) };
            out.resize(len, 0);
            if out.as_ptr() as usize != at.0 || out.capacity() != at.1 {
                self.out_at = (out.as_ptr() as usize, out.capacity());
            }
            self.out_init = len;
        } else {
            // SAFETY: len <= out_init, and bytes up to out_init of this allocation are
            // initialized (see above).
            unsafe { out.set_len(len) };
        }
    }

    /// Reads the body from the MTA's callback straight into `out` (up to `max`) when nothing
    /// is held in the reader's buffer, and checks the bytes in place: CRLF text, the usual
    /// case, then costs no copy of its own. From a bare LF on, the bytes go back to the reader,
    /// for the conversion in `fill`. None when the bytes must come through the reader's buffer.
    fn read_direct(
        &mut self,
        reader: &mut ContentReader<'_>,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<Option<usize>> {
        if reader.inner.is_none() || out.len() >= max {
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

    /// The first `max` bytes of `rest` (or all of it) when they can go out as they are: CRLF
    /// text throughout, and long enough to be worth not copying. None when they must be copied.
    pub fn take_as_is<'m>(&mut self, rest: &'m [u8], max: usize) -> Option<&'m [u8]> {
        let window = &rest[..rest.len().min(max)];
        if window.len() < SPLICE_MIN || find_bare_lf(window, self.last_cr).is_some() {
            return None;
        }
        self.last_cr = window.last() == Some(&b'\r');
        Some(window)
    }

    /// Appends converted bytes of `src` to `out` until `out.len()` reaches `max` or `src` is
    /// used up. Returns how many bytes of `src` were used, and whether the packet is full (no
    /// room left, or a CRLF that did not fit: the packet ends before that LF).
    pub fn fill_from(&mut self, src: &[u8], out: &mut Vec<u8>, max: usize) -> (usize, bool) {
        let mut used = 0;
        loop {
            if out.len() >= max {
                return (used, true);
            }
            if used == src.len() {
                return (used, false);
            }
            let (n, full) = self.convert(&src[used..], out, max);
            used += n;
            if full {
                return (used, true);
            }
        }
    }

    /// `src` converted into `out` (within `max`), as far as it fits; returns the bytes of
    /// `src` used and whether the packet is full before them all.
    fn convert(&mut self, src: &[u8], out: &mut Vec<u8>, max: usize) -> (usize, bool) {
        let room = max - out.len();
        let window = &src[..src.len().min(room)];
        // The run up to the first bare LF (one without its CR) is copied as it is: for CRLF
        // text that is the whole window in one copy.
        match find_bare_lf(window, self.last_cr) {
            None => {
                out.extend_from_slice(window);
                if let Some(&b) = window.last() {
                    self.last_cr = b == b'\r';
                }
                (window.len(), false)
            }
            Some(first) => self.convert_lines(src, first, out, max),
        }
    }

    /// `src` from its first bare LF (at `first`) on, converted line by line. Text with one bare
    /// LF most likely has one on every line (an LF spool, as BMI callers hand it over): each LF
    /// is then found with memchr, cheaper per line than the vector scan's set-up, and the
    /// lines are written in this one loop straight into `out`'s reserved room (a copy and one
    /// or two bytes a line, no capacity check each). A packet that cannot take a line's CRLF
    /// ends before its LF.
    fn convert_lines(
        &mut self,
        src: &[u8],
        first: usize,
        out: &mut Vec<u8>,
        max: usize,
    ) -> (usize, bool) {
        out.reserve(max - out.len());
        let w = out.len();
        // The first run (up to the first bare LF, which fits: it was found within the room)
        // may hold CRLF lines: one copy.
        // SAFETY: w + first < max, within the capacity reserved above; `src` does not overlap
        // `out`, which this function borrows mutably.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr().add(w), first) };
        let mut at = Lines {
            used: 0,
            lf: first,
            w,
            copied: first,
        };
        // SAFETY: out's allocation holds `max` bytes (reserved above) and w <= max; the first
        // line's bytes are in place and src[first] is a LF.
        let full = unsafe { crlf_lines(src, out.as_mut_ptr(), max, self.last_cr, &mut at) };
        let Lines { used, lf, w, .. } = at;
        // SAFETY: bytes out.len()..w were written above, within the capacity.
        unsafe { out.set_len(w) };
        if used > 0 {
            self.last_cr = false;
        }
        // What fits of the run before the next LF (the packet is full), or of the last line,
        // which has no LF (yet).
        let end = if full { lf } else { src.len() };
        let n = (end - used).min(max - out.len());
        (used + self.copy_run(&src[used..used + n], out), full)
    }

    /// Copies `run` (no LF in it) into `out`; returns its length.
    fn copy_run(&mut self, run: &[u8], out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(run);
        if let Some(&b) = run.last() {
            self.last_cr = b == b'\r';
        }
        run.len()
    }

    /// Appends converted bytes from the MTA's read callback to `out` until `out.len()` reaches
    /// `max` or the body ends. Returns whether the packet is full (false: the body ended).
    pub fn fill_from_reader(
        &mut self,
        reader: &mut ContentReader<'_>,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool> {
        // What was known of `out` before this call is forgotten (see `out_init`): one zero-fill
        // of the packet per call, at most MAX_DATA_LEN bytes.
        self.out_at = (0, 0);
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
            if reader.data().is_empty() && !reader.more()? {
                return Ok(false);
            }
            let (used, full) = self.convert(reader.data(), out, max);
            reader.consume(used);
            if full {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_DATA_LEN;

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
        let mut body = BodyCrlf::default();
        let mut chunks = Vec::new();
        let mut start = &start[..];
        loop {
            let mut chunk = Vec::new();
            let (used, _) = body.fill_from(start, &mut chunk, max);
            start = &start[used..];
            let more =
                !start.is_empty() || body.fill_from_reader(&mut reader, &mut chunk, max).unwrap();
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

    /// The whole header section, as the driver reads it: the bytes that start the body.
    fn read_header_section(r: &mut ContentReader<'_>, fields: &mut HeaderSection) -> Vec<u8> {
        loop {
            match r.header_line(fields).unwrap() {
                HeaderLine::End => return Vec::new(),
                HeaderLine::BodyStarts(b) => return b,
                HeaderLine::NewField | HeaderLine::Folded => {}
            }
        }
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

    /// LF bodies of every shape (lines of 0 to 80 bytes across the 16-byte blocks of the copy,
    /// CRLF lines among them, lone CRs, no LF at the end), pushed in pieces of random size into
    /// packets of random size, as a BMI caller's body is: what comes out is what a byte-by-byte
    /// conversion gives, in packets no larger than their limit.
    #[test]
    fn pushed_bodies_of_every_shape_convert_as_a_plain_conversion_does() {
        pushed_bodies_convert(0x2545_f491_4f6c_dd1d);
    }

    /// The same on the SSE2 loop, which a machine with AVX2 would not run otherwise.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn pushed_bodies_convert_on_sse2_too() {
        crate::scan::test_sse2::force(true);
        pushed_bodies_convert(0x9e37_79b9_7f4a_7c15);
        crate::scan::test_sse2::force(false);
    }

    fn pushed_bodies_convert(seed: u64) {
        let mut next = crate::test_support::xorshift(seed);
        let plain = |body: &[u8]| {
            let mut out = Vec::new();
            for (i, &b) in body.iter().enumerate() {
                if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
                    out.push(b'\r');
                }
                out.push(b);
            }
            out
        };
        for case in 0..600 {
            let mut body = Vec::new();
            for _ in 0..next() % 40 {
                for i in 0..next() % 81 {
                    body.push(match next() % 23 {
                        0 => b'\r',
                        _ => b'a' + (i % 26) as u8,
                    });
                }
                match next() % 5 {
                    0 => body.extend_from_slice(b"\r\n"),
                    1 if case % 7 == 0 => {}
                    _ => body.push(b'\n'),
                }
            }
            let max = [2, 3, 7, 16, 17, 33, 100, 4096, 65535][(next() % 9) as usize];
            let mut conv = BodyCrlf::default();
            let (mut packets, mut out) = (Vec::new(), Vec::new());
            let mut rest = &body[..];
            while !rest.is_empty() {
                let mut piece = &rest[..rest.len().min(1 + (next() % 200) as usize)];
                rest = &rest[piece.len()..];
                while !piece.is_empty() {
                    let (used, full) = conv.fill_from(piece, &mut out, max);
                    piece = &piece[used..];
                    assert!(out.len() <= max, "case {case}, max {max}");
                    if full {
                        packets.push(std::mem::take(&mut out));
                    } else {
                        assert!(piece.is_empty(), "case {case}: stopped with room left");
                    }
                }
            }
            packets.push(out);
            assert_eq!(
                packets.concat(),
                plain(&body),
                "case {case}, max {max}, body {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn body_cr_at_chunk_boundary_is_not_doubled() {
        let input = b"abc\r\ndef\r\n".repeat(50);
        for max in 2..20 {
            assert_eq!(body_of(&input, max).concat(), input, "max {max}");
        }
    }

    /// A buffer freed and another allocated at the same address with the same capacity: the
    /// bytes handed to the MTA's reader are zero, never what the freed buffer held (keyed on
    /// pointer and capacity across calls, the old code took them as initialized and handed the
    /// reader the first buffer's bytes).
    #[test]
    fn a_buffer_allocated_where_a_freed_one_was_is_never_taken_as_initialized() {
        struct Checked(usize);
        impl Read for Checked {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                assert!(
                    buf.iter().all(|&b| b == 0),
                    "the reader was handed bytes it did not write"
                );
                let n = buf.len().min(self.0);
                buf[..n].fill(b'A');
                self.0 -= n;
                Ok(n)
            }
        }
        let max = 65536;
        let mut body = BodyCrlf::default();
        let mut first = Vec::with_capacity(max);
        let at = first.as_ptr();
        let mut source = Checked(10);
        let mut reader = ContentReader::new(Content::Reader(&mut source));
        body.fill_from_reader(&mut reader, &mut first, max)
            .expect("the first read");
        assert_eq!(first, b"AAAAAAAAAA");
        drop(first);
        let mut second = Vec::with_capacity(max);
        assert_eq!(
            second.as_ptr(),
            at,
            "the allocator did not reuse the freed block: the test proves nothing"
        );
        let mut source = Checked(10);
        let mut reader = ContentReader::new(Content::Reader(&mut source));
        body.fill_from_reader(&mut reader, &mut second, max)
            .expect("the second read");
        assert_eq!(second, b"AAAAAAAAAA");
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
            let mut body = BodyCrlf::default();
            let mut out = Vec::new();
            let mut got = Vec::new();
            loop {
                // A packet header before each chunk, as in a conversation.
                out.extend_from_slice(b"HDR");
                let more = body
                    .fill_from_reader(&mut reader, &mut out, 3 + max)
                    .unwrap();
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
            let start = read_header_section(&mut r, &mut fields);
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
        let start = read_header_section(&mut r, &mut fields);
        assert_eq!(fields.to_headers().len(), 1);
        assert_eq!(start, b"this is text\n");
        assert_eq!(
            chunks_from(r, start, 1000).concat(),
            b"this is text\r\nmore\r\n"
        );
    }

    /// A field pushed whole parses as the same field read from a message; a line that does not
    /// continue it, or a first line without a name, is refused by name and leaves nothing.
    #[test]
    fn pushed_fields_parse_as_read_ones() {
        let mut pushed = HeaderSection::default();
        pushed.push_field(b"Subject: hi\r\n there\r\n").unwrap();
        pushed.push_field(b"X-A:b\n").unwrap();
        pushed.push_field(b"X-End: no line end").unwrap();
        let mut read = HeaderSection::default();
        let mut r = ContentReader::new(Content::Buffer(
            b"Subject: hi\r\n there\r\nX-A:b\nX-End: no line end\r\n\r\n",
        ));
        assert!(read_header_section(&mut r, &mut read).is_empty());
        assert_eq!(pushed.to_headers(), read.to_headers());
        for bad in [
            &b"no colon\r\n"[..],
            b": empty name\n",
            b"A: b\nC: d\n",
            b"",
        ] {
            let e = pushed.push_field(bad).expect_err("a malformed field");
            assert_eq!(e.kind, crate::ErrorKind::Message);
            assert!(e.message.starts_with("header field \""), "{e}");
            assert_eq!(pushed.len(), 3, "{e}");
        }
    }
}
