//! The Milter wire codec, sans I/O: packets are built into and decoded from byte slices, with no
//! sockets and no clocks, so that every rule can be unit-tested and fuzzed directly.
//! `session.rs` drives it; `trace` renders packets for the DEBUG log.

pub mod consts;
pub mod trace;

use consts::*;

/// Largest reply packet (command byte + data) we accept from a Milter. Replies are built by
/// libmilter in pieces of at most 65535 data bytes; 1 MiB leaves room for MDS-negotiating
/// Milters and still caps what a lying length can make us read.
pub const MAX_REPLY_LEN: usize = 1 << 20;

/// Largest data part of a packet we send (libmilter's `MILTER_MAX_DATA_SIZE`).
pub const MAX_DATA_LEN: usize = 65535;

/// A malformed packet: what was wrong, naming the command and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Milter's answer to option negotiation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiation {
    pub version: u32,
    pub actions: u32,
    pub protocol: u32,
    /// Macro lists requested per stage, indexed by SMFIM_* (0 CONNECT .. 6 EOH); `None` where the
    /// Milter sent no list for that stage. Each name as written (`j`, `{client_addr}`).
    pub macros: [Option<Vec<Vec<u8>>>; 7],
}

/// Client address family of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAddr {
    /// Family 'U': no port, no address.
    Unknown,
    /// Family '4' with port and dotted-quad text.
    Inet4 { port: u16, addr: std::net::Ipv4Addr },
    /// Family '6' with port and address text (compressed `inet_ntop` form, as Postfix sends).
    Inet6 { port: u16, addr: std::net::Ipv6Addr },
}

/// One decoded reply from the Milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    /// REPLYCODE: the text exactly as sent (without its NUL), already validated.
    ReplyCode(Vec<u8>),
    Shutdown,
    ConnFail,
    Progress,
    Skip,
    Quarantine(Vec<u8>),
    AddHeader {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    InsHeader {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    ChgHeader {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    AddRcpt(Vec<u8>),
    AddRcptPar {
        rcpt: Vec<u8>,
        args: Option<Vec<u8>>,
    },
    DelRcpt(Vec<u8>),
    ChgFrom {
        from: Vec<u8>,
        args: Option<Vec<u8>>,
    },
    ReplBody(Vec<u8>),
    OptNeg(Negotiation),
}

/// Appends one packet: `uint32 len`, `cmd`, then the parts concatenated.
/// The caller keeps data within `MAX_DATA_LEN`.
pub fn encode_packet(buf: &mut Vec<u8>, cmd: u8, parts: &[&[u8]]) {
    let data: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(5 + data);
    buf.extend_from_slice(&((data + 1) as u32).to_be_bytes());
    buf.push(cmd);
    for p in parts {
        // A one-byte part (a field's NUL) is pushed, not copied by a call to memcpy: a header
        // field is four parts, two of them a NUL.
        match p {
            [b] => buf.push(*b),
            _ => buf.extend_from_slice(p),
        }
    }
}

/// Appends OPTNEG: version, actions, protocol.
pub fn encode_optneg(buf: &mut Vec<u8>, version: u32, actions: u32, protocol: u32) {
    encode_packet(
        buf,
        SMFIC_OPTNEG,
        &[
            &version.to_be_bytes(),
            &actions.to_be_bytes(),
            &protocol.to_be_bytes(),
        ],
    );
}

/// A string as it goes on the wire: cut at an embedded NUL (which would end it early on the
/// Milter's side and shift every later field).
fn wire_str(s: &[u8]) -> &[u8] {
    match find_nul(s) {
        Some(i) => &s[..i],
        None => s,
    }
}

fn find_nul(s: &[u8]) -> Option<usize> {
    crate::scan::find_byte(s, 0)
}

/// Appends a MACRO packet for the command `stage_cmd` ('C', 'H', 'M', 'R', 'T', 'L', 'N', 'B', 'E').
/// Pairs that would push the packet past `MAX_DATA_LEN` are left out (returned count says how many
/// were written).
pub fn encode_macros(buf: &mut Vec<u8>, stage_cmd: u8, pairs: &[(&[u8], &[u8])]) -> usize {
    let start = begin_macros(buf, stage_cmd);
    let mut written = 0;
    for (name, value) in pairs {
        if push_macro(buf, start, name, &[value]) {
            written += 1;
        }
    }
    end_packet(buf, start);
    written
}

/// Starts a MACRO packet for `stage_cmd` in `buf` and returns where it starts; pairs are added
/// with `push_macro` and the length is set by `end_packet`.
pub fn begin_macros(buf: &mut Vec<u8>, stage_cmd: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, SMFIC_MACRO, stage_cmd]);
    start
}

/// Adds one pair to the MACRO packet that starts at `start`: the name, then the value, given
/// as parts written one after the other. Both are cut at an embedded NUL; an empty name, or a
/// pair that would push the packet past `MAX_DATA_LEN`, is left out. True when it was added.
pub fn push_macro(buf: &mut Vec<u8>, start: usize, name: &[u8], value: &[&[u8]]) -> bool {
    let name = wire_str(name);
    if name.is_empty() {
        return false;
    }
    push_macro_named(buf, start, name, value)
}

/// `push_macro` for a name known to be neither empty nor to hold a NUL: the default lists, and
/// the names a Milter asked for (split out of a NUL-terminated list).
pub fn push_macro_named(buf: &mut Vec<u8>, start: usize, name: &[u8], value: &[&[u8]]) -> bool {
    debug_assert!(!name.is_empty() && !name.contains(&0));
    // The value ends at the first NUL of any part.
    let mut parts = value.len();
    let mut last_len = 0;
    let mut total = 0;
    for (i, part) in value.iter().enumerate() {
        if let Some(nul) = find_nul(part) {
            parts = i + 1;
            last_len = nul;
            total += nul;
            break;
        }
        total += part.len();
        last_len = part.len();
    }
    // The data is everything after the length and the command byte.
    if buf.len() - start - 5 + name.len() + total + 2 > MAX_DATA_LEN {
        return false;
    }
    buf.reserve(name.len() + total + 2);
    buf.extend_from_slice(name);
    buf.push(0);
    if parts > 0 {
        for part in &value[..parts - 1] {
            buf.extend_from_slice(part);
        }
        buf.extend_from_slice(&value[parts - 1][..last_len]);
    }
    buf.push(0);
    true
}

/// Sets the length of the packet that starts at `start` and runs to the end of `buf`.
pub fn end_packet(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Short text held without allocating: an IP address (`inet_ntop` form) or a port.
pub struct InlineText {
    buf: [u8; 48],
    len: usize,
}

impl InlineText {
    pub fn new(addr: &std::net::IpAddr) -> InlineText {
        let mut t = InlineText {
            buf: [0; 48],
            len: 0,
        };
        match addr {
            std::net::IpAddr::V4(a) => t.v4(a),
            std::net::IpAddr::V6(a) => {
                // The standard library's text (compressed, with an embedded IPv4 part where
                // inet_ntop writes one); 45 bytes at most.
                use std::fmt::Write as _;
                let _ = write!(t, "{a}");
            }
        }
        t
    }

    /// `n` in decimal (a port), held the same way.
    #[inline]
    pub fn decimal(n: u32) -> InlineText {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut t = InlineText {
            buf: [0; 48],
            len: 0,
        };
        for &d in &digits[i..] {
            t.push(d);
        }
        t
    }

    pub fn v4_text(addr: &std::net::Ipv4Addr) -> InlineText {
        let mut t = InlineText {
            buf: [0; 48],
            len: 0,
        };
        t.v4(addr);
        t
    }

    /// Dotted quad, written digit by digit: this runs for every message.
    fn v4(&mut self, addr: &std::net::Ipv4Addr) {
        for (i, octet) in addr.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            if octet >= 100 {
                self.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                self.push(b'0' + octet / 10 % 10);
            }
            self.push(b'0' + octet % 10);
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for InlineText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for &b in s.as_bytes() {
            self.push(b);
        }
        Ok(())
    }
}

/// Appends CONNECT: host name NUL, family, [port, address NUL].
#[inline(always)] // at CONNECT, once a message: one function fewer entered
pub fn encode_connect(buf: &mut Vec<u8>, hostname: &[u8], addr: &ConnectAddr) {
    // A host name is at most 255 octets in DNS; anything longer is cut, never the packet broken.
    let host = wire_str(hostname);
    let host = &host[..host.len().min(1024)];
    match addr {
        ConnectAddr::Unknown => encode_packet(buf, SMFIC_CONNECT, &[host, b"\0U"]),
        ConnectAddr::Inet4 { port, addr } => encode_packet(
            buf,
            SMFIC_CONNECT,
            &[
                host,
                b"\x004",
                &port.to_be_bytes(),
                InlineText::v4_text(addr).as_bytes(),
                b"\0",
            ],
        ),
        ConnectAddr::Inet6 { port, addr } => encode_packet(
            buf,
            SMFIC_CONNECT,
            &[
                host,
                b"\x006",
                &port.to_be_bytes(),
                InlineText::new(&std::net::IpAddr::V6(*addr)).as_bytes(),
                b"\0",
            ],
        ),
    }
}

/// Appends a command whose payload is a list of NUL-terminated strings (HELO, MAIL, RCPT,
/// UNKNOWN): each string gets its NUL. Strings are cut so the packet stays within `MAX_DATA_LEN`.
pub fn encode_strings(buf: &mut Vec<u8>, cmd: u8, strings: &[&[u8]]) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, cmd]);
    for s in strings {
        if !push_string(buf, start, wire_str(s)) {
            break;
        }
    }
    end_packet(buf, start);
}

/// Appends MAIL or RCPT: `<addr>` and then each ESMTP argument, as `encode_strings` writes them
/// (the bracketed address cut at a NUL in it), without building the bracketed copy.
pub fn encode_address_command(buf: &mut Vec<u8>, cmd: u8, addr: &[u8], args: &[Vec<u8>]) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, cmd, b'<']);
    let bare = wire_str(addr);
    buf.extend_from_slice(bare);
    if bare.len() == addr.len() {
        buf.push(b'>');
    }
    // As push_string: cut to the room the packet has, then the NUL.
    let room = MAX_DATA_LEN - 1;
    if buf.len() - start - 5 > room {
        buf.truncate(start + 5 + room);
    }
    buf.push(0);
    for a in args {
        if !push_string(buf, start, wire_str(a)) {
            break;
        }
    }
    end_packet(buf, start);
}

/// Adds one NUL-terminated string to the packet that starts at `start`, cut to the room left
/// within `MAX_DATA_LEN`; false when there is no room even for its NUL (nothing is added).
fn push_string(buf: &mut Vec<u8>, start: usize, s: &[u8]) -> bool {
    let data = buf.len() - start - 5;
    if data + 1 > MAX_DATA_LEN {
        return false;
    }
    let room = MAX_DATA_LEN - data - 1;
    buf.extend_from_slice(&s[..s.len().min(room)]);
    buf.push(0);
    true
}

/// Appends HEADER: name NUL value NUL (value cut to fit `MAX_DATA_LEN`).
pub fn encode_header(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let name = wire_str(name);
    let name = &name[..name.len().min(MAX_DATA_LEN / 2)];
    let value = wire_str(value);
    let value = &value[..value.len().min(MAX_DATA_LEN - name.len() - 2)];
    // Laid out here rather than by encode_packet: a header field is on every message's path
    // many times, and its two NULs are single bytes.
    let data = name.len() + value.len() + 2;
    buf.reserve(5 + data);
    buf.extend_from_slice(&((data + 1) as u32).to_be_bytes());
    buf.push(SMFIC_HEADER);
    buf.extend_from_slice(name);
    buf.push(0);
    buf.extend_from_slice(value);
    buf.push(0);
}

/// Reads the fields of one reply, each checked against the bytes that remain.
struct Fields<'a> {
    what: &'static str,
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(cmd: u8, data: &'a [u8]) -> Fields<'a> {
        Fields {
            what: reply_name(cmd),
            data,
        }
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        if self.data.len() < 4 {
            return Err(DecodeError(format!(
                "{}: the {field} field needs 4 bytes, {} remain",
                self.what,
                self.data.len()
            )));
        }
        let (v, rest) = self.data.split_at(4);
        self.data = rest;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    fn string(&mut self, field: &str) -> Result<&'a [u8], DecodeError> {
        match self.data.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = &self.data[..i];
                self.data = &self.data[i + 1..];
                Ok(s)
            }
            None => Err(DecodeError(format!(
                "{}: the {field} string has no terminating NUL ({} bytes remain)",
                self.what,
                self.data.len()
            ))),
        }
    }

    /// An optional trailing string (CHGFROM and ADDRCPT_PAR arguments).
    fn optional_string(&mut self, field: &str) -> Result<Option<&'a [u8]>, DecodeError> {
        if self.data.is_empty() {
            Ok(None)
        } else {
            self.string(field).map(Some)
        }
    }

    fn end(self) -> Result<(), DecodeError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{}: {} unexpected bytes after the last field",
                self.what,
                self.data.len()
            )))
        }
    }
}

/// Decodes the reply packet `cmd` + `data`. Every field is checked against the bytes that
/// remain: a short field, a missing NUL, leftover bytes or an unknown code is a `DecodeError`.
/// REPLYCODE is validated with `validate_replycode`.
pub fn decode_reply(cmd: u8, data: &[u8]) -> Result<Reply, DecodeError> {
    let mut f = Fields::new(cmd, data);
    let simple = |r: Reply| -> Result<Reply, DecodeError> {
        if data.is_empty() {
            Ok(r)
        } else {
            Err(DecodeError(format!(
                "{} carries no data, but {} bytes came with it",
                reply_name(cmd),
                data.len()
            )))
        }
    };
    let reply = match cmd {
        SMFIR_CONTINUE => return simple(Reply::Continue),
        SMFIR_ACCEPT => return simple(Reply::Accept),
        SMFIR_REJECT => return simple(Reply::Reject),
        SMFIR_TEMPFAIL => return simple(Reply::Tempfail),
        SMFIR_DISCARD => return simple(Reply::Discard),
        SMFIR_SHUTDOWN => return simple(Reply::Shutdown),
        SMFIR_CONN_FAIL => return simple(Reply::ConnFail),
        SMFIR_PROGRESS => return simple(Reply::Progress),
        SMFIR_SKIP => return simple(Reply::Skip),
        SMFIR_REPLYCODE => {
            // Exactly one string: a NUL anywhere but at the end is an embedded NUL.
            match data.iter().position(|&b| b == 0) {
                None => {
                    return Err(DecodeError(format!(
                        "REPLYCODE: the text has no terminating NUL ({} bytes)",
                        data.len()
                    )))
                }
                Some(i) if i + 1 != data.len() => {
                    return Err(DecodeError(format!(
                        "REPLYCODE: the text has an embedded NUL at byte {i} of {}",
                        data.len()
                    )))
                }
                Some(i) => {
                    let text = &data[..i];
                    validate_replycode(text)?;
                    return Ok(Reply::ReplyCode(text.to_vec()));
                }
            }
        }
        SMFIR_QUARANTINE => Reply::Quarantine(f.string("reason")?.to_vec()),
        SMFIR_ADDHEADER => Reply::AddHeader {
            name: f.string("name")?.to_vec(),
            value: f.string("value")?.to_vec(),
        },
        SMFIR_INSHEADER => Reply::InsHeader {
            index: f.u32("index")?,
            name: f.string("name")?.to_vec(),
            value: f.string("value")?.to_vec(),
        },
        SMFIR_CHGHEADER => Reply::ChgHeader {
            index: f.u32("index")?,
            name: f.string("name")?.to_vec(),
            value: f.string("value")?.to_vec(),
        },
        SMFIR_ADDRCPT => Reply::AddRcpt(f.string("recipient")?.to_vec()),
        SMFIR_DELRCPT => Reply::DelRcpt(f.string("recipient")?.to_vec()),
        SMFIR_ADDRCPT_PAR => Reply::AddRcptPar {
            rcpt: f.string("recipient")?.to_vec(),
            args: f.optional_string("arguments")?.map(<[u8]>::to_vec),
        },
        SMFIR_CHGFROM => Reply::ChgFrom {
            from: f.string("sender")?.to_vec(),
            args: f.optional_string("arguments")?.map(<[u8]>::to_vec),
        },
        SMFIR_REPLBODY => return Ok(Reply::ReplBody(data.to_vec())),
        SMFIC_OPTNEG => return decode_optneg(data).map(Reply::OptNeg),
        _ => {
            return Err(DecodeError(format!(
                "unknown reply code '{}' (0x{cmd:02x}) with {} bytes of data",
                crate::error::escape(&[cmd]),
                data.len()
            )))
        }
    };
    if let Reply::AddHeader { name, .. }
    | Reply::InsHeader { name, .. }
    | Reply::ChgHeader { name, .. } = &reply
    {
        if name.is_empty() {
            return Err(DecodeError(format!(
                "{}: the header name is empty",
                reply_name(cmd)
            )));
        }
    }
    f.end()?;
    Ok(reply)
}

/// Decodes an OPTNEG reply body (three uint32 and optional per-stage macro lists).
pub fn decode_optneg(data: &[u8]) -> Result<Negotiation, DecodeError> {
    if data.len() < 12 {
        return Err(DecodeError(format!(
            "OPTNEG: {} bytes, fewer than the 12 of version, actions and protocol",
            data.len()
        )));
    }
    let mut f = Fields::new(SMFIC_OPTNEG, data);
    let mut neg = Negotiation {
        version: f.u32("version")?,
        actions: f.u32("actions")?,
        protocol: f.u32("protocol")?,
        macros: Default::default(),
    };
    while !f.data.is_empty() {
        let stage = f.u32("macro stage")?;
        let list = f.string("macro list")?;
        let names: Vec<Vec<u8>> = list
            .split(|&b| b == b' ' || b == b'\t' || b == b',')
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        // Unknown stages are ignored, as Postfix does: a newer Milter may know more of them.
        if let Some(slot) = neg.macros.get_mut(stage as usize) {
            *slot = Some(names);
        }
    }
    Ok(neg)
}

/// Checks a REPLYCODE text as Postfix does: each line `[45]dd[- ]`, the enhanced-code class
/// digit (when present) equal to the reply's first digit, every line but the last `-` and ending
/// in CRLF, the last line ` ` with no line end, the same code on every line, no NUL, no lone `%`.
pub fn validate_replycode(text: &[u8]) -> Result<(), DecodeError> {
    let bad = |why: String| Err(DecodeError(format!("REPLYCODE \"{}\": {why}", shown(text))));
    if text.is_empty() {
        return bad("the text is empty".to_string());
    }
    if let Some(i) = text.iter().position(|&b| b == 0) {
        return bad(format!("embedded NUL at byte {i}"));
    }
    // Lines are separated by CRLF; a bare CR or LF anywhere is malformed.
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = text;
    loop {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                lines.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                lines.push(rest);
                break;
            }
        }
    }
    let code = &text[..text.len().min(3)];
    let count = lines.len();
    for (n, line) in lines.iter().enumerate() {
        let no = n + 1;
        let last = no == count;
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return bad(format!("line {no} has a bare CR or LF (lines end in CRLF)"));
        }
        if line.is_empty() && last && count > 1 {
            return bad(format!(
                "the text ends in CRLF (line {} is the last and must have the form \"ddd text\")",
                no - 1
            ));
        }
        if line.len() < 4
            || !matches!(line[0], b'4' | b'5')
            || !line[1].is_ascii_digit()
            || !line[2].is_ascii_digit()
        {
            return bad(format!(
                "line {no} does not start with a 4xx or 5xx code and a space or hyphen"
            ));
        }
        match (line[3], last) {
            (b' ', true) | (b'-', false) => {}
            (b'-', true) => return bad(format!("the last line ({no}) continues with \"-\"")),
            (b' ', false) => {
                return bad(format!(
                    "line {no} ends the reply with \" \" but more lines follow"
                ))
            }
            _ => return bad(format!("line {no} has no space or hyphen after the code")),
        }
        if &line[..3] != code {
            return bad(format!(
                "line {no} has code {} but line 1 has {}",
                shown(&line[..3]),
                shown(code)
            ));
        }
        if line.len() > 4 && line[4].is_ascii_digit() && line[4] != line[0] {
            return bad(format!(
                "line {no}: the enhanced status code's class {} differs from the reply code's {}",
                line[4] as char, line[0] as char
            ));
        }
    }
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            if text.get(i + 1) != Some(&b'%') {
                return bad(format!(
                    "a lone '%' at byte {i} (a literal percent sign is written \"%%\")"
                ));
            }
            i += 1;
        }
        i += 1;
    }
    Ok(())
}

/// Text for an error message, cut to a readable length.
fn shown(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    if bytes.len() > MAX {
        format!("{}...", crate::error::escape(&bytes[..MAX]))
    } else {
        crate::error::escape(bytes)
    }
}

/// Reads the 4-byte big-endian length prefix: the packet length (command + data), checked to be
/// 1..=`MAX_REPLY_LEN`.
pub fn decode_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(DecodeError(
            "packet length 0 (a packet has at least its command byte)".to_string(),
        ));
    }
    if len > MAX_REPLY_LEN {
        return Err(DecodeError(format!(
            "packet length {len} is larger than the limit of {MAX_REPLY_LEN}"
        )));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn optneg_as_postfix_and_sendmail_send_it() {
        let mut b = Vec::new();
        encode_optneg(&mut b, 6, 0x1FF, 0x1FFFFF);
        assert_eq!(b, hex("0000000D 4F 00000006 000001FF 001FFFFF"));
    }

    #[test]
    fn connect_ipv4_matches_the_reference_bytes() {
        let mut b = Vec::new();
        encode_connect(
            &mut b,
            b"mail.example.org",
            &ConnectAddr::Inet4 {
                port: 40000,
                addr: "192.0.2.1".parse().unwrap(),
            },
        );
        assert_eq!(
            b,
            hex("0000001F 43 6d61696c2e6578616d706c652e6f726700 34 9c40 3139322e302e322e3100")
        );
    }

    #[test]
    fn connect_ipv6_and_unknown_family() {
        let mut b = Vec::new();
        encode_connect(
            &mut b,
            b"h",
            &ConnectAddr::Inet6 {
                port: 25,
                addr: "2001:db8::1".parse().unwrap(),
            },
        );
        assert_eq!(&b[4..], b"Ch\x006\x00\x192001:db8::1\x00");
        let mut b = Vec::new();
        encode_connect(&mut b, b"localhost", &ConnectAddr::Unknown);
        // The packet ends after the family byte: no port, no address.
        assert_eq!(b, [&[0, 0, 0, 12][..], b"Clocalhost\x00U"].concat());
    }

    #[test]
    fn strings_each_get_a_nul_and_stay_within_the_limit() {
        let mut b = Vec::new();
        encode_strings(
            &mut b,
            SMFIC_MAIL,
            &[b"<a@b>", b"SIZE=10", b"BODY=8BITMIME"],
        );
        assert_eq!(&b[4..], b"M<a@b>\x00SIZE=10\x00BODY=8BITMIME\x00");
        assert_eq!(
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len() - 4
        );
        let huge = vec![b'x'; 100_000];
        let mut b = Vec::new();
        encode_strings(&mut b, SMFIC_HELO, &[&huge]);
        assert_eq!(b.len() - 5, MAX_DATA_LEN);
        assert_eq!(*b.last().unwrap(), 0);
    }

    #[test]
    fn header_keeps_8bit_bytes_and_is_cut_to_fit() {
        let mut b = Vec::new();
        encode_header(&mut b, b"Subject", b"caf\xe9 \xa6");
        assert_eq!(&b[4..], b"LSubject\x00caf\xe9 \xa6\x00");
        let mut b = Vec::new();
        encode_header(&mut b, b"X-Big", &vec![b'v'; 70_000]);
        assert_eq!(b.len() - 5, MAX_DATA_LEN);
    }

    #[test]
    fn macros_are_pairs_after_the_stage_and_oversize_ones_left_out() {
        let mut b = Vec::new();
        let big = vec![b'x'; 70_000];
        let n = encode_macros(
            &mut b,
            SMFIC_CONNECT,
            &[
                (b"j", b"mx"),
                (b"{big}", &big),
                (b"{client_addr}", b"192.0.2.1"),
            ],
        );
        assert_eq!(n, 2);
        assert_eq!(&b[4..], b"DCj\x00mx\x00{client_addr}\x00192.0.2.1\x00");
    }

    #[test]
    fn replies_without_data() {
        assert_eq!(decode_reply(b'c', b""), Ok(Reply::Continue));
        assert_eq!(decode_reply(b'a', b""), Ok(Reply::Accept));
        assert_eq!(decode_reply(b'r', b""), Ok(Reply::Reject));
        assert_eq!(decode_reply(b't', b""), Ok(Reply::Tempfail));
        assert_eq!(decode_reply(b'd', b""), Ok(Reply::Discard));
        assert_eq!(decode_reply(b'p', b""), Ok(Reply::Progress));
        assert_eq!(decode_reply(b's', b""), Ok(Reply::Skip));
        assert_eq!(decode_reply(b'4', b""), Ok(Reply::Shutdown));
        let e = decode_reply(b'c', b"x").unwrap_err();
        assert!(e.0.contains("CONTINUE carries no data, but 1 bytes"), "{e}");
    }

    #[test]
    fn edits_are_decoded_field_by_field() {
        assert_eq!(
            decode_reply(b'h', b"X-A\x00 v\x00"),
            Ok(Reply::AddHeader {
                name: b"X-A".to_vec(),
                value: b" v".to_vec()
            })
        );
        assert_eq!(
            decode_reply(b'm', b"\x00\x00\x00\x02Subject\x00\x00"),
            Ok(Reply::ChgHeader {
                index: 2,
                name: b"Subject".to_vec(),
                value: Vec::new()
            })
        );
        assert_eq!(
            decode_reply(b'i', b"\x00\x00\x00\x00DKIM-Signature\x00v=1\x00"),
            Ok(Reply::InsHeader {
                index: 0,
                name: b"DKIM-Signature".to_vec(),
                value: b"v=1".to_vec()
            })
        );
        // The optional second string of ADDRCPT_PAR and CHGFROM: both forms.
        assert_eq!(
            decode_reply(b'2', b"<x@y>\x00"),
            Ok(Reply::AddRcptPar {
                rcpt: b"<x@y>".to_vec(),
                args: None
            })
        );
        assert_eq!(
            decode_reply(b'e', b"<x@y>\x00SIZE=1\x00"),
            Ok(Reply::ChgFrom {
                from: b"<x@y>".to_vec(),
                args: Some(b"SIZE=1".to_vec())
            })
        );
        assert_eq!(
            decode_reply(b'q', b"held\x00"),
            Ok(Reply::Quarantine(b"held".to_vec()))
        );
    }

    #[test]
    fn malformed_edits_are_refused() {
        // miltr's regression bytes: a CHGHEADER with a truncated index.
        let e = decode_reply(b'm', &[0xff, 0xff, 0x07]).unwrap_err();
        assert!(e.0.contains("index field needs 4 bytes, 3 remain"), "{e}");
        let e = decode_reply(b'h', b"X-A\x00v").unwrap_err();
        assert!(e.0.contains("value string has no terminating NUL"), "{e}");
        let e = decode_reply(b'h', b"X-A\x00v\x00extra").unwrap_err();
        assert!(e.0.contains("5 unexpected bytes"), "{e}");
        let e = decode_reply(b'h', b"\x00v\x00").unwrap_err();
        assert!(e.0.contains("header name is empty"), "{e}");
        let e = decode_reply(b'Z', b"").unwrap_err();
        assert!(e.0.contains("unknown reply code 'Z' (0x5a)"), "{e}");
    }

    #[test]
    fn replycode_good_forms() {
        for ok in [
            &b"550 5.7.1 Blocked"[..],
            b"451 4.7.1 Try later",
            b"550 Blocked without an enhanced code",
            b"554 5.7.1 100%% sure",
            b"550-5.7.1 line one\r\n550-5.7.1 line two\r\n550 5.7.1 last",
            b"550 5.7.1 caf\xe9",
        ] {
            assert_eq!(
                validate_replycode(ok),
                Ok(()),
                "{}",
                String::from_utf8_lossy(ok)
            );
            let mut data = ok.to_vec();
            data.push(0);
            assert_eq!(decode_reply(b'y', &data), Ok(Reply::ReplyCode(ok.to_vec())));
        }
    }

    #[test]
    fn replycode_bad_forms_name_the_fault() {
        for (bad, why) in [
            (&b""[..], "empty"),
            (b"250 2.0.0 ok", "4xx or 5xx"),
            (b"55", "4xx or 5xx"),
            (b"550", "4xx or 5xx"),
            (b"550x5.7.1 x", "no space or hyphen"),
            (b"550 4.7.1 class", "class 4 differs"),
            (b"550 5.7.1 100% sure", "lone '%'"),
            (b"550 5.7.1 50%", "lone '%'"),
            (b"550-5.7.1 a\n550 5.7.1 b", "bare CR or LF"),
            (b"550-5.7.1 a\r\n550-5.7.1 b\r\n", "ends in CRLF"),
            (
                b"550-5.7.1 a\r\n554 5.7.1 b",
                "has code 554 but line 1 has 550",
            ),
            (b"550 5.7.1 a\r\n550 5.7.1 b", "more lines follow"),
            (b"550-5.7.1 only", "continues"),
            (b"550 a\x00b", "embedded NUL"),
        ] {
            let e = validate_replycode(bad).unwrap_err();
            assert!(e.0.contains("REPLYCODE"), "{e}");
            assert!(e.0.contains(why), "{}: {e}", String::from_utf8_lossy(bad));
        }
        let e = decode_reply(b'y', b"550 5.7.1 a\x00b\x00").unwrap_err();
        assert!(e.0.contains("embedded NUL"), "{e}");
        let e = decode_reply(b'y', b"550 5.7.1 no nul").unwrap_err();
        assert!(e.0.contains("no terminating NUL"), "{e}");
    }

    #[test]
    fn optneg_with_and_without_macro_lists() {
        let mut d = Vec::new();
        for v in [6u32, 0x11, 0x42] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        let n = decode_optneg(&d).unwrap();
        assert_eq!((n.version, n.actions, n.protocol), (6, 0x11, 0x42));
        assert!(n.macros.iter().all(Option::is_none));
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(b"j {client_addr}\x00");
        d.extend_from_slice(&5u32.to_be_bytes());
        d.extend_from_slice(b"\x00");
        d.extend_from_slice(&99u32.to_be_bytes());
        d.extend_from_slice(b"{future}\x00");
        let n = decode_optneg(&d).unwrap();
        assert_eq!(
            n.macros[0],
            Some(vec![b"j".to_vec(), b"{client_addr}".to_vec()])
        );
        assert_eq!(n.macros[5], Some(Vec::new()));
        assert_eq!(n.macros[1], None);
        // Truncated: a stage without its list, a list without NUL, too short a body.
        let e = decode_optneg(&d[..d.len() - 1]).unwrap_err();
        assert!(e.0.contains("no terminating NUL"), "{e}");
        let e = decode_optneg(&d[..14]).unwrap_err();
        assert!(e.0.contains("macro stage field needs 4 bytes"), "{e}");
        let e = decode_optneg(&d[..8]).unwrap_err();
        assert!(e.0.contains("8 bytes, fewer than the 12"), "{e}");
    }

    #[test]
    fn length_prefix_bounds() {
        assert!(decode_len([0, 0, 0, 0]).unwrap_err().0.contains("length 0"));
        assert!(decode_len([0xff; 4]).unwrap_err().0.contains("4294967295"));
        assert_eq!(decode_len([0, 0, 0, 1]), Ok(1));
        assert_eq!(
            decode_len((MAX_REPLY_LEN as u32).to_be_bytes()),
            Ok(MAX_REPLY_LEN)
        );
        assert!(decode_len((MAX_REPLY_LEN as u32 + 1).to_be_bytes()).is_err());
    }

    #[test]
    fn trace_reads_like_the_protocol_and_survives_garbage() {
        assert_eq!(
            trace::describe(true, SMFIC_HEADER, b"Subject\x00hi\x00"),
            "> HEADER name=\"Subject\" value=\"hi\" (11 bytes)"
        );
        let d = trace::describe(false, SMFIR_CHGHEADER, b"\x00\x00\x00\x01Subject\x00\x00");
        assert_eq!(
            d,
            "< CHGHEADER index=1 name=\"Subject\" value=\"\" (13 bytes)"
        );
        let mut o = Vec::new();
        encode_optneg(&mut o, 6, 0x11, 0x42);
        let d = trace::describe(true, SMFIC_OPTNEG, &o[5..]);
        assert!(
            d.contains("actions=0x11 (ADDHDRS CHGHDRS) protocol=0x42 (NOHELO NOEOH)"),
            "{d}"
        );
        for cmd in 0..=255u8 {
            for data in [
                &b""[..],
                b"\x00",
                b"\xff\xff\xff",
                b"a\x00b",
                b"\x00\x00\x00\x05x",
            ] {
                let _ = trace::describe(true, cmd, data);
                let _ = trace::describe(false, cmd, data);
            }
        }
        assert_eq!(
            trace::hexdump(b"ABC\x00"),
            "  000000  41 42 43 00                                       ABC."
        );
    }

    #[test]
    fn ip_text_is_the_standard_librarys_text() {
        for a in 0..=255u8 {
            for b in [0u8, 1, 9, 10, 99, 100, 199, 255] {
                let v4 = std::net::Ipv4Addr::new(a, b, 255 - a, a / 3);
                assert_eq!(
                    InlineText::v4_text(&v4).as_bytes(),
                    v4.to_string().as_bytes()
                );
                let ip = std::net::IpAddr::V4(v4);
                assert_eq!(InlineText::new(&ip).as_bytes(), ip.to_string().as_bytes());
            }
        }
        for text in [
            "::",
            "::1",
            "2001:db8::1",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "0:0:0:0:0:ffff:255.255.255.255",
        ] {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(InlineText::new(&ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn decimal_digits() {
        for n in [0u32, 1, 9, 10, 99, 100, 40000, 65535, u32::MAX] {
            assert_eq!(InlineText::decimal(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    /// The address commands are written in place; they must be what encode_strings writes for
    /// the bracketed address and the arguments, whatever the input.
    #[test]
    fn address_commands_equal_the_general_encoder() {
        let long = vec![b'a'; MAX_DATA_LEN + 10];
        let addrs: [&[u8]; 6] = [
            b"user@example.org",
            b"",
            b"us\0er@example.org",
            b"\0",
            &long,
            &long[..MAX_DATA_LEN - 2],
        ];
        let arg_sets: [Vec<Vec<u8>>; 4] = [
            vec![],
            vec![b"SIZE=100".to_vec(), b"BODY=8BITMIME".to_vec()],
            vec![long.clone(), b"X".to_vec()],
            vec![b"A\0B".to_vec()],
        ];
        for addr in addrs {
            for args in &arg_sets {
                let mut angled = vec![b'<'];
                angled.extend_from_slice(addr);
                angled.push(b'>');
                let mut strings: Vec<&[u8]> = vec![&angled];
                strings.extend(args.iter().map(|a| a.as_slice()));
                let mut want = Vec::new();
                encode_strings(&mut want, SMFIC_RCPT, &strings);
                let mut got = Vec::new();
                encode_address_command(&mut got, SMFIC_RCPT, addr, args);
                assert_eq!(got, want, "addr {} args {args:?}", addr.len());
                assert!(got.len() - 5 <= MAX_DATA_LEN);
            }
        }
    }

    #[test]
    fn macro_pairs_written_in_place() {
        let mut b = Vec::new();
        let start = begin_macros(&mut b, b'C');
        assert!(push_macro(&mut b, start, b"j", &[b"m", b"x"]));
        assert!(!push_macro(&mut b, start, b"", &[b"lost"]));
        assert!(push_macro(&mut b, start, b"{a\0b}", &[b"v", b"\0w", b"z"]));
        assert!(push_macro(&mut b, start, b"e", &[]));
        assert!(!push_macro(
            &mut b,
            start,
            b"big",
            &[&vec![b'x'; MAX_DATA_LEN]]
        ));
        end_packet(&mut b, start);
        assert_eq!(b, b"\0\0\0\x0fDCj\0mx\0{a\0v\0e\0\0".to_vec());
        // Exactly at the limit, and one past it.
        for (len, fits) in [(MAX_DATA_LEN - 4, true), (MAX_DATA_LEN - 3, false)] {
            let mut b = Vec::new();
            let start = begin_macros(&mut b, b'C');
            assert_eq!(push_macro(&mut b, start, b"j", &[&vec![b'x'; len]]), fits);
        }
    }
}
