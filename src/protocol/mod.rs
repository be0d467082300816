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
    AddHeader { name: Vec<u8>, value: Vec<u8> },
    InsHeader { index: u32, name: Vec<u8>, value: Vec<u8> },
    ChgHeader { index: u32, name: Vec<u8>, value: Vec<u8> },
    AddRcpt(Vec<u8>),
    AddRcptPar { rcpt: Vec<u8>, args: Option<Vec<u8>> },
    DelRcpt(Vec<u8>),
    ChgFrom { from: Vec<u8>, args: Option<Vec<u8>> },
    ReplBody(Vec<u8>),
    OptNeg(Negotiation),
}

/// Appends one packet: `uint32 len`, `cmd`, then the parts concatenated.
/// The caller keeps data within `MAX_DATA_LEN`.
pub fn encode_packet(buf: &mut Vec<u8>, cmd: u8, parts: &[&[u8]]) {
    let _ = (buf, cmd, parts, SMFIC_OPTNEG);
    todo!()
}

/// Appends OPTNEG: version, actions, protocol.
pub fn encode_optneg(buf: &mut Vec<u8>, version: u32, actions: u32, protocol: u32) {
    let _ = (buf, version, actions, protocol);
    todo!()
}

/// Appends a MACRO packet for the command `stage_cmd` ('C', 'H', 'M', 'R', 'T', 'L', 'N', 'B', 'E').
/// Pairs that would push the packet past `MAX_DATA_LEN` are left out (returned count says how many
/// were written).
pub fn encode_macros(buf: &mut Vec<u8>, stage_cmd: u8, pairs: &[(&[u8], &[u8])]) -> usize {
    let _ = (buf, stage_cmd, pairs);
    todo!()
}

/// Appends CONNECT: host name NUL, family, [port, address NUL].
pub fn encode_connect(buf: &mut Vec<u8>, hostname: &[u8], addr: &ConnectAddr) {
    let _ = (buf, hostname, addr);
    todo!()
}

/// Appends a command whose payload is a list of NUL-terminated strings (HELO, MAIL, RCPT,
/// UNKNOWN): each string gets its NUL. Strings are cut so the packet stays within `MAX_DATA_LEN`.
pub fn encode_strings(buf: &mut Vec<u8>, cmd: u8, strings: &[&[u8]]) {
    let _ = (buf, cmd, strings);
    todo!()
}

/// Appends HEADER: name NUL value NUL (value cut to fit `MAX_DATA_LEN`).
pub fn encode_header(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let _ = (buf, name, value);
    todo!()
}

/// Decodes the reply packet `cmd` + `data`. Every field is checked against the bytes that
/// remain: a short field, a missing NUL, leftover bytes or an unknown code is a `DecodeError`.
/// REPLYCODE is validated with `validate_replycode`.
pub fn decode_reply(cmd: u8, data: &[u8]) -> Result<Reply, DecodeError> {
    let _ = (cmd, data);
    todo!()
}

/// Decodes an OPTNEG reply body (three uint32 and optional per-stage macro lists).
pub fn decode_optneg(data: &[u8]) -> Result<Negotiation, DecodeError> {
    let _ = data;
    todo!()
}

/// Checks a REPLYCODE text as Postfix does: each line `[45]dd[- ]`, the enhanced-code class
/// digit (when present) equal to the reply's first digit, every line but the last `-` and ending
/// in CRLF, the last line ` ` with no line end, the same code on every line, no NUL, no lone `%`.
pub fn validate_replycode(text: &[u8]) -> Result<(), DecodeError> {
    let _ = text;
    todo!()
}

/// Reads the 4-byte big-endian length prefix: the packet length (command + data), checked to be
/// 1..=`MAX_REPLY_LEN`.
pub fn decode_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let _ = prefix;
    todo!()
}
