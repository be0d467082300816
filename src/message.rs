//! What the MTA hands over for one message, in safe Rust: the envelope, the MTA's facts (as
//! Milter macros) and the message bytes. The C ABI (`ffi.rs`) builds these from the C structs.
//! All strings are bytes: mail is not necessarily UTF-8.

use std::io::Read;
use std::net::IpAddr;

/// One envelope recipient with the ESMTP parameters of its RCPT command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipient {
    /// The address without angle brackets.
    pub address: Vec<u8>,
    /// Each ESMTP parameter (`NOTIFY=NEVER`) as its own string.
    pub esmtp_args: Vec<Vec<u8>>,
}

impl Recipient {
    pub fn new(address: impl Into<Vec<u8>>) -> Recipient {
        Recipient {
            address: address.into(),
            esmtp_args: Vec::new(),
        }
    }
}

/// The SMTP envelope and the MTA's facts about the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The client's host name (verified reverse DNS); `None` when unknown.
    pub client_name: Option<Vec<u8>>,
    /// The client's address; `None` for a local submission (sent as family 'U').
    pub client_addr: Option<IpAddr>,
    /// The client's TCP port (0 when unknown).
    pub client_port: u16,
    /// The HELO/EHLO argument; `None` when the MTA has none.
    pub helo: Option<Vec<u8>>,
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: Vec<u8>,
    /// ESMTP parameters of MAIL FROM, each as its own string.
    pub mail_args: Vec<Vec<u8>>,
    /// The recipients, in order.
    pub recipients: Vec<Recipient>,
    /// Milter macros supplied by the MTA, by name as written on the wire (`j`, `i`,
    /// `{auth_authen}`, `{tls_version}`, ...). A name may be given with or without braces.
    pub macros: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Envelope {
    /// The value of macro `name`, matching `x` and `{x}` as the same name.
    pub fn macro_value(&self, name: &[u8]) -> Option<&[u8]> {
        let want = crate::message::bare_macro_name(name);
        self.macros
            .iter()
            .rev()
            .find(|(n, _)| bare_macro_name(n) == want)
            .map(|(_, v)| v.as_slice())
    }
}

/// `{name}` → `name`; `name` → `name`.
pub fn bare_macro_name(name: &[u8]) -> &[u8] {
    if name.len() >= 2 && name[0] == b'{' && name[name.len() - 1] == b'}' {
        &name[1..name.len() - 1]
    } else {
        name
    }
}

/// What the MTA knows of the SMTP client when a message starts: the first push of a message
/// (`push::Message::connect`). Every field may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// The client's host name (verified reverse DNS); `None` when unknown.
    pub name: Option<Vec<u8>>,
    /// The client's address; `None` for a local submission (sent as family 'U').
    pub addr: Option<IpAddr>,
    /// The client's TCP port (0 when unknown).
    pub port: u16,
    /// The HELO/EHLO argument; `None` when the MTA has none.
    pub helo: Option<Vec<u8>>,
    /// The MTA's Milter macros for the whole message (`j`, `i`, `{auth_authen}`,
    /// `{tls_version}`, ...), by name as written on the wire, with or without braces; each is
    /// sent at the stages whose macro list names it.
    pub macros: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The message content: header and body as received (LF or CRLF line ends, 8-bit allowed).
pub enum Content<'a> {
    /// The whole message in memory.
    Buffer(&'a [u8]),
    /// Read on demand, so that a huge message is never held whole.
    Reader(&'a mut dyn Read),
}

impl AsRef<[u8]> for Recipient {
    /// The address.
    fn as_ref(&self) -> &[u8] {
        &self.address
    }
}
