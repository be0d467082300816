//! Reaching the Milter: resolve HOST (every A/AAAA record, in the resolver's order), connect to
//! each in turn within CONNECT_TIMEOUT, directly or through a SOCKS5 proxy (RFC 1928/1929), and
//! hand the session a connected stream with TCP_NODELAY set.

use crate::config::Config;
use crate::error::{Error, Result};
use std::net::TcpStream;
use std::time::Instant;

/// A connected Milter stream.
#[derive(Debug)]
pub struct Connection {
    pub stream: TcpStream,
    /// How the Milter was reached, for messages: `127.0.0.1:8891`, or
    /// `milter.example:8891 via SOCKS 127.0.0.1:1080`.
    pub peer: String,
}

/// Connects to the Milter named by `config`, no later than `deadline` and within
/// CONNECT_TIMEOUT per attempt. The error after the last address lists what each attempt got.
pub fn connect(config: &Config, deadline: Instant) -> Result<Connection> {
    let _ = (config, deadline);
    Err(Error::connect("not implemented"))
}
