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
        buf.extend_from_slice(p);
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
    match s.iter().position(|&b| b == 0) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// Appends a MACRO packet for the command `stage_cmd` ('C', 'H', 'M', 'R', 'T', 'L', 'N', 'B', 'E').
/// Pairs that would push the packet past `MAX_DATA_LEN` are left out (returned count says how many
/// were written).
pub fn encode_macros(buf: &mut Vec<u8>, stage_cmd: u8, pairs: &[(&[u8], &[u8])]) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, SMFIC_MACRO, stage_cmd]);
    let mut written = 0;
    for (name, value) in pairs {
        let (name, value) = (wire_str(name), wire_str(value));
        if name.is_empty() {
            continue;
        }
        // Data so far (stage byte included) plus this pair with its two NULs.
        let data = buf.len() - start - 5;
        if data + name.len() + value.len() + 2 > MAX_DATA_LEN {
            continue;
        }
        buf.extend_from_slice(name);
        buf.push(0);
        buf.extend_from_slice(value);
        buf.push(0);
        written += 1;
    }
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    written
}

/// Appends CONNECT: host name NUL, family, [port, address NUL].
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
                b"\04",
                &port.to_be_bytes(),
                addr.to_string().as_bytes(),
                b"\0",
            ],
        ),
        ConnectAddr::Inet6 { port, addr } => encode_packet(
            buf,
            SMFIC_CONNECT,
            &[
                host,
                b"\06",
                &port.to_be_bytes(),
                addr.to_string().as_bytes(),
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
        let s = wire_str(s);
        let data = buf.len() - start - 5;
        if data + 1 > MAX_DATA_LEN {
            break;
        }
        let room = MAX_DATA_LEN - data - 1;
        buf.extend_from_slice(&s[..s.len().min(room)]);
        buf.push(0);
    }
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends HEADER: name NUL value NUL (value cut to fit `MAX_DATA_LEN`).
pub fn encode_header(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let name = wire_str(name);
    let name = &name[..name.len().min(MAX_DATA_LEN / 2)];
    let value = wire_str(value);
    let room = MAX_DATA_LEN - name.len() - 2;
    encode_packet(
        buf,
        SMFIC_HEADER,
        &[name, b"\0", &value[..value.len().min(room)], b"\0"],
    );
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
