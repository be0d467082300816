//! The one error type of the library. Every failure that reaches the MTA is one of these kinds,
//! each with a message that names the thing, the value and what was expected.

use std::fmt;

/// What went wrong, by kind; the kind becomes the C status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The option file: missing, unreadable, or a bad value.
    Config,
    /// The Milter (or the SOCKS proxy) could not be reached.
    Connect,
    /// An operation on the Milter connection took longer than its timeout.
    Timeout,
    /// The Milter broke the protocol (malformed or unexpected reply).
    Protocol,
    /// A read or write on the connection failed, or the Milter closed it.
    Io,
    /// The MTA passed a bad message or envelope (or its read callback failed).
    Message,
    /// The SOCKS proxy refused or failed the connection.
    Socks,
}

/// An error with a complete human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, message)
    }
    pub fn connect(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Connect, message)
    }
    pub fn timeout(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, message)
    }
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message)
    }
    pub fn io(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Io, message)
    }
    pub fn message(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Message, message)
    }
    pub fn socks(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Socks, message)
    }
    /// The same error with `context: ` in front of its message.
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Bytes for an error message or log line: printable ASCII as is, `"` and `\` escaped, anything
/// else as `\xNN`, so that hostile bytes can neither hide nor forge text.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}
