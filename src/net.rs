//! Reaching the Milter: resolve HOST (every A/AAAA record, in the resolver's order), connect to
//! each in turn within CONNECT_TIMEOUT, directly or through a SOCKS5 proxy (RFC 1928/1929), and
//! hand the session a connected stream with TCP_NODELAY set.
//!
//! Every wait here is bounded: name resolution, each TCP connect and the whole SOCKS handshake by
//! CONNECT_TIMEOUT, and all of them together by the message deadline. Read and write timeouts on
//! the returned stream are left unset: the session sets its own (TIMEOUT) for every operation.

use crate::config::Config;
use crate::error::{escape, Error, ErrorKind, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connected Milter stream.
#[derive(Debug)]
pub struct Connection {
    pub stream: TcpStream,
    /// How the Milter was reached, for messages: `127.0.0.1:8891`, or
    /// `milter.example:8891 via SOCKS 127.0.0.1:1080`. Shared: the same text serves message
    /// after message.
    pub peer: Arc<str>,
    /// The timeouts the socket has now, as far as they are known: the session sets again only
    /// those it needs otherwise.
    pub timeouts: SocketTimeouts,
}

/// The read and write timeouts a socket has now, as far as is known (None: not known, to be set
/// before the first read or write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketTimeouts {
    pub read: Option<Duration>,
    pub write: Option<Duration>,
}

/// Connects to the Milter named by `config`, no later than `deadline` and within
/// CONNECT_TIMEOUT per attempt. The error after the last address lists what each attempt got.
pub fn connect(config: &Config, deadline: Instant) -> Result<Connection> {
    if config.socks_host.is_empty() {
        let (stream, addr, limit) =
            connect_name(&config.host, config.port, config.connect_timeout, deadline).map_err(
                |e| {
                    e.context(format!(
                        "cannot connect to Milter {}",
                        host_port(&config.host, config.port)
                    ))
                },
            )?;
        return Ok(Connection {
            stream,
            peer: peer_text(&addr),
            // The connect's bound stays set as the send timeout.
            timeouts: SocketTimeouts {
                read: None,
                write: Some(limit),
            },
        });
    }

    let milter = host_port(&config.host, config.port);
    let proxy = host_port(&config.socks_host, config.socks_port);
    let (stream, proxy_addr, _) = connect_name(
        &config.socks_host,
        config.socks_port,
        config.connect_timeout,
        deadline,
    )
    .map_err(|e| {
        e.context(format!(
            "cannot connect to SOCKS proxy {proxy} (for Milter {milter})"
        ))
    })?;
    // Name the address actually used when the proxy was given by name, so that a failure at
    // one of several proxy addresses can be told apart.
    let proxy_shown = if proxy_addr.to_string() == proxy {
        proxy
    } else {
        format!("{proxy} ({proxy_addr})")
    };
    let context = || format!("SOCKS proxy {proxy_shown} cannot reach Milter {milter}");

    // The whole handshake, however the proxy spreads its bytes, gets one CONNECT_TIMEOUT.
    let limit = config.connect_timeout.min(time_left(deadline));
    if limit.is_zero() {
        return Err(
            Error::timeout("the message deadline passed before the SOCKS handshake")
                .context(context()),
        );
    }
    let mut bounded = Bounded {
        stream: &stream,
        deadline: Instant::now() + limit,
        limit,
    };
    let password = config.socks_password.as_str();
    let credentials = (!password.is_empty()).then_some((config.socks_username.as_str(), password));
    socks5_handshake(&mut bounded, &config.host, config.port, credentials)
        .map_err(|e| e.context(context()))?;
    // The session sets its own timeouts; leave none of the handshake's behind.
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| {
            Error::io(format!("cannot clear the handshake timeouts: {e}")).context(context())
        })?;
    Ok(Connection {
        stream,
        peer: format!("{milter} via SOCKS {proxy_addr}").into(),
        timeouts: SocketTimeouts::default(),
    })
}

/// The text of `addr` (`addr_text`), made once per thread and address: the same Milter is
/// connected to message after message.
fn peer_text(addr: &SocketAddr) -> Arc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(SocketAddr, Arc<str>)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((a, text)) if a == addr => Arc::clone(text),
            _ => {
                let text: Arc<str> = addr_text(addr).into();
                *last = Some((*addr, Arc::clone(&text)));
                text
            }
        }
    })
    .unwrap_or_else(|_| addr_text(addr).into())
}

/// `addr` as `SocketAddr`'s text (`127.0.0.1:8891`, `[::1]:8891`), an IPv4 address written
/// without the formatting machinery: this runs for every message.
fn addr_text(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => {
            let ip = crate::protocol::InlineText::v4_text(a.ip());
            let port = crate::protocol::InlineText::decimal(u32::from(a.port()));
            let mut s = String::with_capacity(ip.as_bytes().len() + 6);
            // Both are ASCII digits and dots.
            s.push_str(std::str::from_utf8(ip.as_bytes()).unwrap_or_default());
            s.push(':');
            s.push_str(std::str::from_utf8(port.as_bytes()).unwrap_or_default());
            s
        }
        SocketAddr::V6(_) => addr.to_string(),
    }
}

/// `host:port`, with an IPv6 literal in brackets: `[::1]:8891`.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An IPv4 address in plain dotted decimal (`127.0.0.1`: four numbers up to 255, no leading
/// zeros), read directly: std's general address parser would run twice a message (the Milter's
/// HOST and a BMI caller's client address). None for anything else, which the caller then gives
/// to std's parser: every text accepted here, std reads as the same address.
pub fn dotted_quad(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        let canonical = matches!(part.len(), 1..=3) && (part.len() == 1 || part[0] != b'0');
        if !canonical || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
        *octet = u8::try_from(n).ok()?;
    }
    match parts.next() {
        None => Some(Ipv4Addr::from(octets)),
        Some(_) => None,
    }
}

/// `host` as an address literal, if it is one: a plain dotted quad read directly, anything
/// else by std's parser.
fn ip_literal(host: &str) -> Option<IpAddr> {
    match dotted_quad(host.as_bytes()) {
        Some(v4) => Some(IpAddr::V4(v4)),
        None => host.parse().ok(),
    }
}

fn time_left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Resolves `host` with the system resolver (getaddrinfo), keeping its order, within `limit`.
/// Literals need no resolver. Names go through the process's bounded resolver table
/// (`crate::resolve`): one lookup thread per name at a time, a few in all, answers kept 30 s.
pub fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>> {
    if let Some(ip) = ip_literal(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let ips = crate::resolve::global().resolve(host, limit, crate::resolve::system_lookup)?;
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// Resolves `host` and connects to its addresses in order; the first that answers wins. Returns
/// the stream, the address, and the send timeout left set on it (the connect's bound).
#[inline(always)] // in `connect`: one function fewer entered a message
fn connect_name(
    host: &str,
    port: u16,
    connect_timeout: Duration,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr, Duration)> {
    let limit = connect_timeout.min(time_left(deadline));
    if limit.is_zero() {
        return Err(Error::timeout(
            "the message deadline passed before connecting",
        ));
    }
    if let Some(ip) = ip_literal(host) {
        // A literal: nothing to resolve (and no list to build).
        return connect_addrs(&[SocketAddr::new(ip, port)], connect_timeout, deadline);
    }
    let addrs = resolve(host, port, limit)?;
    connect_addrs(&addrs, connect_timeout, deadline)
}

/// Tries each address in order with `min(connect_timeout, time left to deadline)`, and returns
/// the first connected stream (TCP_NODELAY set), its address and that bound, which stays set
/// as its send timeout. The error lists every address with what it got;
/// its kind is Timeout when every attempt timed out, else Connect.
#[inline(always)] // in `connect`, once a message: one function fewer entered
pub fn connect_addrs(
    addrs: &[SocketAddr],
    connect_timeout: Duration,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr, Duration)> {
    let mut attempts = Vec::new();
    let mut all_timed_out = true;
    for addr in addrs {
        let limit = connect_timeout.min(time_left(deadline));
        if limit.is_zero() {
            attempts.push(format!(
                "{addr}: not tried, the message deadline has passed"
            ));
            continue;
        }
        match connect_one(addr, limit) {
            Ok(stream) => return Ok((stream, *addr, limit)),
            Err(e) if is_timeout(&e) => {
                attempts.push(format!("{addr}: timed out after {}", seconds(limit)))
            }
            Err(e) => {
                all_timed_out = false;
                attempts.push(format!("{addr}: {}", describe_io(&e)));
            }
        }
    }
    let kind = if all_timed_out {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    Err(Error::new(kind, attempts.join("; ")))
}

fn connect_one(addr: &SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    // socket2 creates the socket with SOCK_CLOEXEC, so an MTA that forks does not leak it.
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // A blocking connect bounded by SO_SNDTIMEO, which Linux applies to connect(2): two system
    // calls, where a non-blocking connect and poll take six. A connect that runs out of time
    // fails with EINPROGRESS.
    socket.set_write_timeout(Some(limit))?;
    if let Err(e) = socket.connect(&SockAddr::from(*addr)) {
        return Err(match e.raw_os_error() {
            Some(libc::EINPROGRESS) | Some(libc::EAGAIN) => {
                io::Error::new(io::ErrorKind::TimedOut, "connection timed out")
            }
            _ => e,
        });
    }
    // The session writes small packets that get no reply (macros before a command); without
    // TCP_NODELAY each waits for the Milter's delayed ACK, about 40 ms.
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An I/O error in the words of the example messages: "connection refused", not
/// "Connection refused (os error 111)".
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::AddrNotAvailable => "address not available".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_lowercase(),
                None => text,
            }
        }
    }
}

/// A stream whose every read and write gets only the time left to one deadline, so that a proxy
/// trickling a byte at a time cannot stretch the handshake beyond `limit`.
struct Bounded<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    limit: Duration,
}

impl Bounded<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = time_left(self.deadline);
        if left.is_zero() {
            Err(self.timed_out())
        } else {
            Ok(left)
        }
    }
    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {}", seconds(self.limit)),
        )
    }
    fn map(&self, e: io::Error) -> io::Error {
        if is_timeout(&e) {
            self.timed_out()
        } else {
            e
        }
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.read(buf).map_err(|e| self.map(e))
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.write(buf).map_err(|e| self.map(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SOCKS5

const SOCKS_VERSION: u8 = 5;
/// RFC 1929 §2: the version of the username/password subnegotiation.
const USERPASS_VERSION: u8 = 1;
const METHOD_NONE: u8 = 0x00;
const METHOD_USERPASS: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

fn method_name(m: u8) -> String {
    let name = match m {
        0x00 => "no authentication",
        0x01 => "GSSAPI",
        0x02 => "username/password",
        0x03..=0x7f => "IANA-assigned",
        0x80..=0xfe => "private",
        _ => "no acceptable methods",
    };
    format!("0x{m:02x} ({name})")
}

/// RFC 1928 §6: the meaning of a reply code.
pub fn reply_meaning(code: u8) -> &'static str {
    match code {
        0 => "succeeded",
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// The address the proxy says it bound for the connection (BND.ADDR, BND.PORT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksBound {
    Addr(SocketAddr),
    /// A domain name, as sent (escaped when shown).
    Name(Vec<u8>, u16),
}

impl fmt::Display for SocksBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocksBound::Addr(a) => write!(f, "{a}"),
            SocksBound::Name(n, p) => write!(f, "{}:{p}", escape(n)),
        }
    }
}

/// What the proxy is asked to connect to: an address literal as IPv4/IPv6 (a `%zone` is
/// dropped: it names an interface of this machine, meaningless to the proxy), anything else as a
/// domain name that the proxy resolves.
fn encode_target(host: &str, port: u16, out: &mut Vec<u8>) -> Result<()> {
    let literal = host.split_once('%').map_or(host, |(addr, _zone)| addr);
    match literal.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.octets());
        }
        Err(_) => {
            let len = u8::try_from(host.len())
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(|| {
                    Error::socks(format!(
                        "the host name \"{}\" has {} bytes; SOCKS5 carries 1 to 255",
                        escape(host.as_bytes()),
                        host.len()
                    ))
                })?;
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(host.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    Ok(())
}

/// Reads exactly `buf.len()` bytes, naming `what` was awaited when the proxy closes or stalls.
fn read_all<S: Read>(stream: &mut S, buf: &mut [u8], what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) if got == 0 => {
                return Err(Error::socks(format!(
                    "the proxy closed the connection instead of sending {what}"
                )))
            }
            Ok(0) => {
                return Err(Error::socks(format!(
                    "the proxy closed the connection after {got} of {} bytes of {what}",
                    buf.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(Error::socks(format!(
                    "the proxy did not send {what}: {}",
                    describe_io(&e)
                )))
            }
            Err(e) => {
                return Err(Error::socks(format!(
                    "reading {what} from the proxy: {}",
                    describe_io(&e)
                )))
            }
        }
    }
    Ok(())
}

fn write_all<S: Write>(stream: &mut S, bytes: &[u8], what: &str) -> Result<()> {
    stream
        .write_all(bytes)
        .and_then(|()| stream.flush())
        .map_err(|e| Error::socks(format!("sending {what} to the proxy: {}", describe_io(&e))))
}

/// Runs the SOCKS5 client handshake (RFC 1928, with RFC 1929 username/password when
/// `credentials` is given) on `stream` and asks the proxy to CONNECT to `host:port`. Returns the
/// address the proxy reports as bound; afterwards `stream` carries the Milter's bytes.
///
/// With credentials only method 0x02 is offered: an administrator who set SOCKS_PASSWORD wants
/// the proxy to know who connects, and a proxy that would silently choose "no authentication"
/// instead would hide a misconfiguration. Without credentials only 0x00 is offered.
///
/// Errors are of kind Socks and give the reason only; the caller adds which proxy and Milter.
pub fn socks5_handshake<S: Read + Write>(
    stream: &mut S,
    host: &str,
    port: u16,
    credentials: Option<(&str, &str)>,
) -> Result<SocksBound> {
    let offered = match credentials {
        Some(_) => METHOD_USERPASS,
        None => METHOD_NONE,
    };
    // Checked before anything is sent, so that a bad value never reaches the proxy half-written.
    let mut request = vec![SOCKS_VERSION, CMD_CONNECT, 0];
    encode_target(host, port, &mut request)?;

    write_all(stream, &[SOCKS_VERSION, 1, offered], "the greeting")?;
    let mut choice = [0u8; 2];
    read_all(stream, &mut choice, "its choice of authentication method")?;
    if choice[0] != SOCKS_VERSION {
        return Err(Error::socks(format!(
            "the proxy answered the greeting with version {} (0x{:02x}), expected 5: it is not a SOCKS5 proxy",
            choice[0], choice[0]
        )));
    }
    match (choice[1], credentials) {
        (METHOD_UNACCEPTABLE, _) => {
            let hint = if credentials.is_some() {
                ""
            } else {
                "; set SOCKS_PASSWORD if it needs a user name and password"
            };
            return Err(Error::socks(format!(
                "the proxy accepts none of the authentication methods offered ({}){hint}",
                method_name(offered)
            )));
        }
        (m, _) if m != offered => {
            return Err(Error::socks(format!(
                "the proxy chose authentication method {}, which was not offered (offered: {})",
                method_name(m),
                method_name(offered)
            )))
        }
        (_, Some((user, password))) => authenticate(stream, user, password)?,
        (_, None) => {}
    }

    write_all(stream, &request, "the CONNECT request")?;
    let mut head = [0u8; 4];
    read_all(stream, &mut head, "the reply to CONNECT")?;
    if head[0] != SOCKS_VERSION {
        return Err(Error::socks(format!(
            "the proxy answered CONNECT with version {} (0x{:02x}), expected 5",
            head[0], head[0]
        )));
    }
    if head[1] != 0 {
        return Err(Error::socks(format!(
            "the proxy answered CONNECT with reply {}: {}",
            head[1],
            reply_meaning(head[1])
        )));
    }
    // The rest of the reply must be read whole, or its tail would reach the session as if the
    // Milter had sent it.
    let bound = match head[3] {
        ATYP_IPV4 => {
            let mut a = [0u8; 4];
            read_all(stream, &mut a, "the bound IPv4 address")?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        ATYP_IPV6 => {
            let mut a = [0u8; 16];
            read_all(stream, &mut a, "the bound IPv6 address")?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            read_all(stream, &mut len, "the length of the bound name")?;
            let mut name = vec![0u8; usize::from(len[0])];
            read_all(stream, &mut name, "the bound name")?;
            let mut p = [0u8; 2];
            read_all(stream, &mut p, "the bound port")?;
            return Ok(SocksBound::Name(name, u16::from_be_bytes(p)));
        }
        other => {
            return Err(Error::socks(format!(
                "the proxy's reply to CONNECT has address type {other}, expected 1 (IPv4), 3 (name) or 4 (IPv6)"
            )))
        }
    };
    let mut p = [0u8; 2];
    read_all(stream, &mut p, "the bound port")?;
    Ok(SocksBound::Addr(SocketAddr::new(
        bound,
        u16::from_be_bytes(p),
    )))
}

/// RFC 1929 username/password subnegotiation.
fn authenticate<S: Read + Write>(stream: &mut S, user: &str, password: &str) -> Result<()> {
    let ulen = u8::try_from(user.len()).ok().filter(|&l| l > 0);
    let plen = u8::try_from(password.len()).ok().filter(|&l| l > 0);
    let (Some(ulen), Some(plen)) = (ulen, plen) else {
        return Err(Error::socks(format!(
            "SOCKS_USERNAME has {} bytes and SOCKS_PASSWORD {}; RFC 1929 carries 1 to 255 each",
            user.len(),
            password.len()
        )));
    };
    let mut msg = Vec::with_capacity(3 + user.len() + password.len());
    msg.push(USERPASS_VERSION);
    msg.push(ulen);
    msg.extend_from_slice(user.as_bytes());
    msg.push(plen);
    msg.extend_from_slice(password.as_bytes());
    write_all(stream, &msg, "the user name and password")?;
    let mut status = [0u8; 2];
    read_all(stream, &mut status, "the authentication status")?;
    // Some proxies answer with the SOCKS version (5) here instead of 1; the status byte means
    // the same either way, so both are accepted.
    if status[0] != USERPASS_VERSION && status[0] != SOCKS_VERSION {
        return Err(Error::socks(format!(
            "the proxy answered the user name and password with version {} (0x{:02x}), expected 1",
            status[0], status[0]
        )));
    }
    if status[1] != 0 {
        return Err(Error::socks(format!(
            "the proxy rejected user name \"{}\" and its password (RFC 1929 status {})",
            escape(user.as_bytes()),
            status[1]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn a_dotted_quad_is_read_as_std_reads_it_and_anything_else_is_left_to_std() {
        let plain = [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.30.40",
            "1.2.3.4",
        ];
        for text in plain {
            assert_eq!(dotted_quad(text.as_bytes()), text.parse().ok(), "{text}");
        }
        for text in [
            "",
            "1.2.3",
            "1.2.3.4.",
            ".1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.00",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1..3.4",
            "1.2.3.a",
            "1.2.3.1000",
            "::1",
            "1.2.3.+4",
        ] {
            assert_eq!(dotted_quad(text.as_bytes()), None, "{text:?}");
        }
        // Random texts of digits and dots (and a stray byte): whatever is read here, std reads
        // as the same address.
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1d);
        let alphabet = b"0123456789.....x";
        let mut read = 0;
        for _ in 0..200_000 {
            let r = next();
            let len = (r % 16) as usize;
            let text: Vec<u8> = (0..len)
                .map(|i| alphabet[((r >> (8 + 4 * (i % 13))) ^ next()) as usize % alphabet.len()])
                .collect();
            let std_reads = std::str::from_utf8(&text).unwrap().parse::<Ipv4Addr>().ok();
            if let Some(v4) = dotted_quad(&text) {
                read += 1;
                assert_eq!(Some(v4), std_reads, "{:?}", String::from_utf8_lossy(&text));
            }
        }
        assert!(
            read > 100,
            "too few dotted quads generated to compare: {read}"
        );
    }

    #[test]
    fn addresses_read_as_the_standard_library_writes_them() {
        for text in [
            "127.0.0.1:8891",
            "0.0.0.0:1",
            "255.255.255.255:65535",
            "10.20.30.40:80",
            "[::1]:8891",
            "[2001:db8::5]:25",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(addr_text(&addr), addr.to_string());
            assert_eq!(addr_text(&addr), text);
        }
    }

    /// A proxy's side of the conversation in memory: what it will send, and what it received.
    struct Script {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Script {
        fn new(answer: &[u8]) -> Script {
            Script {
                input: Cursor::new(answer.to_vec()),
                output: Vec::new(),
            }
        }
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const OK_V4: &[u8] = &[5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];

    fn run(
        answer: &[u8],
        host: &str,
        creds: Option<(&str, &str)>,
    ) -> (Result<SocksBound>, Vec<u8>) {
        let mut s = Script::new(answer);
        let r = socks5_handshake(&mut s, host, 8891, creds);
        (r, s.output)
    }

    fn socks_err(answer: &[u8], creds: Option<(&str, &str)>) -> String {
        match run(answer, "127.0.0.1", creds).0 {
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Socks, "{e}");
                e.message
            }
            Ok(b) => panic!("handshake succeeded (bound {b}) where it should fail"),
        }
    }

    #[test]
    fn no_auth_with_a_name_sends_the_name_to_the_proxy() {
        let answer = [&[5, 0][..], OK_V4].concat();
        let (r, sent) = run(&answer, "milter.example", None);
        assert_eq!(r, Ok(SocksBound::Addr("127.0.0.1:8080".parse().unwrap())));
        let mut want = vec![5, 1, 0, 5, 1, 0, 3, 14];
        want.extend_from_slice(b"milter.example");
        want.extend_from_slice(&[0x22, 0xbb]);
        assert_eq!(sent, want);
    }

    #[test]
    fn literals_are_sent_as_addresses() {
        let answer = [&[5, 0][..], OK_V4].concat();
        let (_, sent) = run(&answer, "192.0.2.1", None);
        assert_eq!(&sent[3..], &[5, 1, 0, 1, 192, 0, 2, 1, 0x22, 0xbb]);
        let (_, sent) = run(&answer, "::1", None);
        let mut want = vec![5, 1, 0, 4];
        want.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        want.extend_from_slice(&[0x22, 0xbb]);
        assert_eq!(&sent[3..], &want[..]);
        // The zone names an interface of this machine: the proxy gets the bare address.
        let (_, sent) = run(&answer, "fe80::1%eth0", None);
        assert_eq!(sent[6], ATYP_IPV6);
        assert_eq!(sent.len(), 3 + 4 + 16 + 2);
    }

    #[test]
    fn username_password_offers_only_method_2() {
        let answer = [&[5, 2, 1, 0][..], OK_V4].concat();
        let (r, sent) = run(&answer, "127.0.0.1", Some(("milter", "secret")));
        assert!(r.is_ok(), "{r:?}");
        let mut want = vec![5, 1, 2, 1, 6];
        want.extend_from_slice(b"milter");
        want.push(6);
        want.extend_from_slice(b"secret");
        assert_eq!(&sent[..want.len()], &want[..]);
        assert_eq!(&sent[want.len()..want.len() + 4], &[5, 1, 0, 1]);
    }

    #[test]
    fn bound_address_of_every_type_is_read_whole() {
        let mut v6 = vec![5, 0, 5, 0, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80, b'M']);
        let mut s = Script::new(&v6);
        let r = socks5_handshake(&mut s, "h", 1, None);
        assert_eq!(r, Ok(SocksBound::Addr("[::1]:80".parse().unwrap())));
        // The byte after the reply is the Milter's and must still be unread.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"M");

        let name = [&[5, 0, 5, 0, 0, 3, 5][..], b"proxy", &[1, 0]].concat();
        let (r, _) = run(&name, "h", None);
        assert_eq!(r, Ok(SocksBound::Name(b"proxy".to_vec(), 256)));
        assert_eq!(r.unwrap().to_string(), "proxy:256");
    }

    #[test]
    fn method_refusals() {
        assert_eq!(
            socks_err(&[5, 0xff], None),
            "the proxy accepts none of the authentication methods offered (0x00 (no authentication)); \
             set SOCKS_PASSWORD if it needs a user name and password"
        );
        assert_eq!(
            socks_err(&[5, 0xff], Some(("u", "p"))),
            "the proxy accepts none of the authentication methods offered (0x02 (username/password))"
        );
        assert_eq!(
            socks_err(&[5, 1], None),
            "the proxy chose authentication method 0x01 (GSSAPI), which was not offered \
             (offered: 0x00 (no authentication))"
        );
    }

    #[test]
    fn authentication_failures() {
        assert_eq!(
            socks_err(&[5, 2, 1, 1], Some(("milter", "wrong"))),
            "the proxy rejected user name \"milter\" and its password (RFC 1929 status 1)"
        );
        assert_eq!(
            socks_err(&[5, 2, 9, 0], Some(("milter", "pw"))),
            "the proxy answered the user name and password with version 9 (0x09), expected 1"
        );
        assert_eq!(
            socks_err(&[5, 2], Some(("", "pw"))),
            "SOCKS_USERNAME has 0 bytes and SOCKS_PASSWORD 2; RFC 1929 carries 1 to 255 each"
        );
        // The password never appears in a message.
        assert!(!socks_err(&[5, 2, 1, 1], Some(("u", "hunter2"))).contains("hunter2"));
    }

    #[test]
    fn every_reply_code_by_its_meaning() {
        let meanings = [
            (1, "general SOCKS server failure"),
            (2, "connection not allowed by ruleset"),
            (3, "network unreachable"),
            (4, "host unreachable"),
            (5, "connection refused"),
            (6, "TTL expired"),
            (7, "command not supported"),
            (8, "address type not supported"),
            (9, "unassigned reply code"),
        ];
        for (code, meaning) in meanings {
            assert_eq!(
                socks_err(&[5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0], None),
                format!("the proxy answered CONNECT with reply {code}: {meaning}")
            );
        }
    }

    #[test]
    fn wrong_versions_and_early_close() {
        assert_eq!(
            socks_err(b"HTTP/1.1 400 Bad Request\r\n", None),
            "the proxy answered the greeting with version 72 (0x48), expected 5: it is not a SOCKS5 proxy"
        );
        assert_eq!(
            socks_err(&[5, 0, 4, 0, 0, 1], None),
            "the proxy answered CONNECT with version 4 (0x04), expected 5"
        );
        assert_eq!(
            socks_err(&[], None),
            "the proxy closed the connection instead of sending its choice of authentication method"
        );
        assert_eq!(
            socks_err(&[5, 0, 5, 0, 0, 1, 127, 0], None),
            "the proxy closed the connection after 2 of 4 bytes of the bound IPv4 address"
        );
        assert_eq!(
            socks_err(&[5, 0, 5, 0, 0, 7], None),
            "the proxy's reply to CONNECT has address type 7, expected 1 (IPv4), 3 (name) or 4 (IPv6)"
        );
    }

    #[test]
    fn a_stall_is_named() {
        struct Stall;
        impl Read for Stall {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out after 1.00 s",
                ))
            }
        }
        impl Write for Stall {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = socks5_handshake(&mut Stall, "h", 1, None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Socks);
        assert_eq!(
            e.message,
            "the proxy did not send its choice of authentication method: timed out after 1.00 s"
        );
    }

    #[test]
    fn a_name_too_long_for_socks_is_refused_before_sending() {
        let long = "a".repeat(256);
        let (r, sent) = run(&[5, 0], &long, None);
        let e = r.unwrap_err();
        assert!(
            e.message.contains("has 256 bytes; SOCKS5 carries 1 to 255"),
            "{e}"
        );
        assert!(sent.is_empty(), "sent {sent:?}");
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 8891), "[::1]:8891");
        assert_eq!(host_port("milter.example", 8891), "milter.example:8891");
    }

    #[test]
    fn literals_resolve_without_the_resolver() {
        let a = resolve("::1", 9, Duration::from_millis(1)).unwrap();
        assert_eq!(a, vec!["[::1]:9".parse::<SocketAddr>().unwrap()]);
    }
}
