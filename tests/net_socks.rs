//! SOCKS5 against real proxies started on loopback by the tests: dante (no authentication and
//! username/password against a system user) and microsocks (with and without -u/-P). The target
//! is a plain TCP listener that greets with one byte and then echoes, so each test proves that
//! the tunnel carries bytes both ways and that no byte of the proxy's reply is left in front of
//! the Milter's. A whole Milter conversation (pymilter) runs through each proxy too.
//!
//! A hand-written proxy is used only for what real proxies do not produce on demand: each RFC
//! 1928 reply code, a wrong version byte, and checking the bytes of the CONNECT request.

#[path = "support/proxies.rs"]
mod proxies;

use milter_spamfilter::net::{self, Connection};
use milter_spamfilter::verdict::Disposition;
use milter_spamfilter::{Config, Content, Envelope, ErrorKind, Handle, Recipient};
use proxies::{DanteAuth, Proxy, SOCKS_PASSWORD, SOCKS_USER};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP server standing in for the Milter: on each connection it sends `M`, then echoes.
struct Target {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Target {
    fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the target listener");
        let port = listener.local_addr().expect("target address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking target listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Target {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"M").is_err() {
        return;
    }
    let mut buf = [0u8; 256];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(host: &str, port: u16, proxy: &Proxy, credentials: Option<(&str, &str)>) -> Config {
    let mut c = Config::with_host_port(host, port);
    c.socks_host = "127.0.0.1".to_string();
    c.socks_port = proxy.port;
    c.connect_timeout = Duration::from_secs(5);
    if let Some((user, password)) = credentials {
        c.socks_username = user.to_string();
        c.socks_password = password.to_string();
    }
    c
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// The greeting byte first (nothing of the proxy's reply before it), then an echo.
fn assert_tunnel(conn: &mut Connection, proxy: &Proxy) {
    let s = &mut conn.stream;
    assert_eq!(
        s.read_timeout().expect("read timeout"),
        None,
        "the handshake's timeout was left on the stream"
    );
    assert!(
        socket2::SockRef::from(&*s)
            .tcp_nodelay()
            .expect("TCP_NODELAY"),
        "TCP_NODELAY is not set on the stream"
    );
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("setting a read timeout");
    let mut first = [0u8; 1];
    s.read_exact(&mut first)
        .unwrap_or_else(|e| panic!("no greeting through {}: {e}\n{}", proxy.name, proxy.log()));
    assert_eq!(&first, b"M", "the first byte through the tunnel");
    s.write_all(b"ping through the proxy").expect("writing");
    let mut back = [0u8; 22];
    s.read_exact(&mut back).expect("reading the echo");
    assert_eq!(&back, b"ping through the proxy");
    assert!(
        conn.peer
            .ends_with(&format!(" via SOCKS 127.0.0.1:{}", proxy.port)),
        "peer {:?}",
        conn.peer
    );
}

fn connected(c: &Config, proxy: &Proxy) -> Connection {
    net::connect(c, deadline()).unwrap_or_else(|e| {
        panic!(
            "through {}: {:?}: {e}\nproxy stderr:\n{}",
            proxy.name,
            e.kind,
            proxy.log()
        )
    })
}

fn failure(c: &Config) -> milter_spamfilter::Error {
    match net::connect(c, deadline()) {
        Ok(conn) => panic!("connected ({}) where it should fail", conn.peer),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// dante

#[test]
fn dante_without_authentication_carries_bytes_to_a_literal_and_to_a_name() {
    let target = Target::start();
    let proxy = proxies::dante(DanteAuth::None);
    for host in ["127.0.0.1", "localhost"] {
        let mut conn = connected(&config(host, target.port, &proxy, None), &proxy);
        assert_tunnel(&mut conn, &proxy);
        assert!(conn.peer.starts_with(&format!("{host}:{}", target.port)));
    }
}

#[test]
fn dante_with_username_authentication() {
    let target = Target::start();
    let proxy = proxies::dante(DanteAuth::Username);
    let creds = Some((SOCKS_USER, SOCKS_PASSWORD));
    let mut conn = connected(&config("localhost", target.port, &proxy, creds), &proxy);
    assert_tunnel(&mut conn, &proxy);

    let e = failure(&config(
        "localhost",
        target.port,
        &proxy,
        Some((SOCKS_USER, "wrong")),
    ));
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert_eq!(
        e.message,
        format!(
            "SOCKS proxy 127.0.0.1:{} cannot reach Milter localhost:{}: the proxy rejected \
             user name \"{SOCKS_USER}\" and its password (RFC 1929 status 1)",
            proxy.port, target.port
        )
    );

    // Without SOCKS_PASSWORD only "no authentication" is offered, which this dante refuses.
    let e = failure(&config("localhost", target.port, &proxy, None));
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert!(
        e.message.ends_with(
            "the proxy accepts none of the authentication methods offered \
             (0x00 (no authentication)); set SOCKS_PASSWORD if it needs a user name and password"
        ),
        "{e}"
    );
}

#[test]
fn dante_reports_a_refused_milter_as_reply_5() {
    let proxy = proxies::dante(DanteAuth::None);
    let closed = proxies::free_port();
    let e = failure(&config("127.0.0.1", closed, &proxy, None));
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert_eq!(
        e.message,
        format!(
            "SOCKS proxy 127.0.0.1:{} cannot reach Milter 127.0.0.1:{closed}: \
             the proxy answered CONNECT with reply 5: connection refused",
            proxy.port
        )
    );
}

// ---------------------------------------------------------------------------------------------
// microsocks

#[test]
fn microsocks_without_authentication() {
    let target = Target::start();
    let proxy = proxies::microsocks(None);
    for host in ["127.0.0.1", "localhost"] {
        let mut conn = connected(&config(host, target.port, &proxy, None), &proxy);
        assert_tunnel(&mut conn, &proxy);
    }
    let closed = proxies::free_port();
    let e = failure(&config("localhost", closed, &proxy, None));
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert!(
        e.message
            .ends_with("the proxy answered CONNECT with reply 5: connection refused"),
        "{e}"
    );
}

#[test]
fn microsocks_with_username_authentication() {
    let target = Target::start();
    let creds = ("milter", "micro-pw");
    let proxy = proxies::microsocks(Some(creds));
    let mut conn = connected(
        &config("localhost", target.port, &proxy, Some(creds)),
        &proxy,
    );
    assert_tunnel(&mut conn, &proxy);

    let e = failure(&config(
        "localhost",
        target.port,
        &proxy,
        Some(("milter", "nope")),
    ));
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert!(
        e.message.ends_with(
            "the proxy rejected user name \"milter\" and its password (RFC 1929 status 2)"
        ),
        "{e}"
    );
    assert!(!e.message.contains("nope"), "the password leaked: {e}");
}

// ---------------------------------------------------------------------------------------------
// Reaching the proxy

#[test]
fn proxy_down_is_a_connect_error_naming_proxy_and_milter() {
    let down = proxies::free_port();
    let mut c = Config::with_host_port("milter.example", 8891);
    c.socks_host = "127.0.0.1".to_string();
    c.socks_port = down;
    let e = net::connect(&c, deadline()).expect_err("nothing listens on the proxy port");
    assert_eq!(e.kind, ErrorKind::Connect, "{e}");
    assert_eq!(
        e.message,
        format!(
            "cannot connect to SOCKS proxy 127.0.0.1:{down} (for Milter milter.example:8891): \
             127.0.0.1:{down}: connection refused"
        )
    );
}

#[test]
fn proxy_named_by_a_name_is_resolved_and_shown_with_its_address() {
    let target = Target::start();
    let proxy = proxies::microsocks(None);
    let mut c = config("127.0.0.1", target.port, &proxy, None);
    c.socks_host = "localhost".to_string();
    let mut conn = connected(&c, &proxy);
    assert_tunnel(&mut conn, &proxy);

    // A failure names the proxy as configured and the address that failed.
    let closed = proxies::free_port();
    let e = failure(&config("127.0.0.1", closed, &proxy, None).with_socks_host("localhost"));
    assert!(
        e.message.starts_with(&format!(
            "SOCKS proxy localhost:{0} (127.0.0.1:{0}) cannot reach Milter 127.0.0.1:{closed}: ",
            proxy.port
        )),
        "{e}"
    );
}

trait WithSocksHost {
    fn with_socks_host(self, host: &str) -> Config;
}
impl WithSocksHost for Config {
    fn with_socks_host(mut self, host: &str) -> Config {
        self.socks_host = host.to_string();
        self
    }
}

// ---------------------------------------------------------------------------------------------
// A hand-written proxy, for the faults real proxies do not produce on demand.

/// Accepts one connection, accepts "no authentication", reads the CONNECT request and answers
/// it with `reply`; returns the request it received.
fn fake_proxy(reply: Vec<u8>) -> (u16, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake proxy");
    let port = listener.local_addr().expect("fake proxy address").port();
    let thread = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut greeting = [0u8; 3];
        if s.read_exact(&mut greeting).is_err() || s.write_all(&[5, 0]).is_err() {
            return Vec::new();
        }
        let mut request = vec![0u8; 5];
        if s.read_exact(&mut request).is_err() {
            return request;
        }
        let rest = match request[3] {
            1 => 4 + 2 - 1,
            4 => 16 + 2 - 1,
            _ => usize::from(request[4]) + 2,
        };
        let mut tail = vec![0u8; rest];
        let _ = s.read_exact(&mut tail);
        request.extend_from_slice(&tail);
        let _ = s.write_all(&reply);
        request
    });
    (port, thread)
}

fn fake_config(port: u16) -> Config {
    let mut c = Config::with_host_port("localhost", 8891);
    c.socks_host = "127.0.0.1".to_string();
    c.socks_port = port;
    c.connect_timeout = Duration::from_secs(5);
    c
}

#[test]
fn each_reply_code_is_named_with_proxy_and_milter() {
    let meanings = [
        (1, "general SOCKS server failure"),
        (2, "connection not allowed by ruleset"),
        (3, "network unreachable"),
        (4, "host unreachable"),
        (5, "connection refused"),
        (6, "TTL expired"),
        (7, "command not supported"),
        (8, "address type not supported"),
    ];
    for (code, meaning) in meanings {
        let (port, thread) = fake_proxy(vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
        let e = net::connect(&fake_config(port), deadline()).expect_err("a failure reply");
        let request = thread.join().expect("fake proxy thread");
        assert_eq!(e.kind, ErrorKind::Socks, "{e}");
        assert_eq!(
            e.message,
            format!(
                "SOCKS proxy 127.0.0.1:{port} cannot reach Milter localhost:8891: \
                 the proxy answered CONNECT with reply {code}: {meaning}"
            )
        );
        // HOST is a name: the proxy gets it as a name (ATYP 3) to resolve itself.
        assert_eq!(request, b"\x05\x01\x00\x03\x09localhost\x22\xbb");
    }
}

#[test]
fn wrong_version_in_the_reply() {
    let (port, thread) = fake_proxy(vec![4, 0x5a, 0, 0, 0, 0, 0, 0]);
    let e = net::connect(&fake_config(port), deadline()).expect_err("a SOCKS4 reply");
    let _ = thread.join();
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert!(
        e.message
            .ends_with("the proxy answered CONNECT with version 4 (0x04), expected 5"),
        "{e}"
    );
}

#[test]
fn proxy_closing_mid_reply() {
    let (port, thread) = fake_proxy(vec![5, 0, 0, 4, 0, 0]);
    let e = net::connect(&fake_config(port), deadline()).expect_err("a cut reply");
    let _ = thread.join();
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert!(
        e.message.ends_with(
            "the proxy closed the connection after 2 of 16 bytes of the bound IPv6 address"
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// A whole Milter conversation through each proxy.

/// tests/milters/load_milter.py (pymilter) on a free loopback port, killed on drop.
struct PyMilter {
    child: Child,
    port: u16,
}

impl PyMilter {
    fn start() -> PyMilter {
        let probe = Command::new("/usr/bin/python3")
            .args(["-c", "import Milter"])
            .output();
        assert!(
            matches!(probe, Ok(ref o) if o.status.success()),
            "/usr/bin/python3 cannot import Milter: install the Debian package python3-milter"
        );
        let port = proxies::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/milters/load_milter.py");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let mut m = PyMilter { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("{} exited at start: {status}", script.display());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not listen on 127.0.0.1:{port} within 20 s",
                script.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }
}

impl Drop for PyMilter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Message "load 1" makes the load Milter reject with a reply naming the number, so the
/// verdict can only have come from a complete conversation.
fn filter_through(proxy: &Proxy, milter: &PyMilter, credentials: Option<(&str, &str)>) {
    let mut c = config("localhost", milter.port, proxy, credentials);
    c.timeout = Duration::from_secs(10);
    let handle = Handle::new(c);
    let env = Envelope {
        client_addr: Some("192.0.2.9".parse().expect("literal address")),
        client_port: 50000,
        helo: Some(b"socks.example".to_vec()),
        sender: b"sender@example.org".to_vec(),
        recipients: vec![Recipient::new(b"rcpt@example.net".to_vec())],
        macros: vec![(b"i".to_vec(), b"SOCKS1".to_vec())],
        ..Envelope::default()
    };
    let data = b"From: sender@example.org\r\nSubject: load 1\r\n\r\nThrough a SOCKS proxy.\r\n";
    let f = handle
        .filter(&env, Content::Buffer(data))
        .unwrap_or_else(|e| {
            panic!(
                "filtering through {}: {:?}: {e}\nproxy stderr:\n{}",
                proxy.name,
                e.kind,
                proxy.log()
            )
        });
    assert_eq!(f.outcome.disposition, Disposition::Reject, "{f:?}");
    assert_eq!(
        f.outcome.reply.as_deref(),
        Some(&b"550 5.7.1 rejected load message 1"[..])
    );
    assert_eq!(
        &*f.peer,
        format!(
            "localhost:{} via SOCKS 127.0.0.1:{}",
            milter.port, proxy.port
        )
    );
}

#[test]
fn milter_session_through_dante_and_microsocks() {
    let milter = PyMilter::start();
    filter_through(&proxies::dante(DanteAuth::None), &milter, None);
    filter_through(
        &proxies::dante(DanteAuth::Username),
        &milter,
        Some((SOCKS_USER, SOCKS_PASSWORD)),
    );
    let creds = ("milter", "micro-pw");
    filter_through(&proxies::microsocks(Some(creds)), &milter, Some(creds));
}
