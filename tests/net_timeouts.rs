//! Direct connections and every bound on the time spent reaching the Milter: a listener that
//! never accepts (its backlog filled, so the kernel drops our SYNs), a SOCKS proxy that stalls or
//! trickles, the message deadline cutting CONNECT_TIMEOUT short; IPv6 literals; and a HOST with
//! several addresses tried in the system resolver's order, where the first fails.
//!
//! The upper bounds asserted are correctness bounds (timeout + 2 s of slack for a loaded
//! machine), not benchmarks. The several-address test needs root: it runs itself again in a
//! private mount namespace whose /etc/hosts gives a test name two addresses.

#[path = "support/proxies.rs"]
mod proxies;

use milter_spamfilter::net;
use milter_spamfilter::{Config, ErrorKind};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SLACK: Duration = Duration::from_secs(2);
const ONE_SECOND: Duration = Duration::from_secs(1);

/// A listening socket whose accept queue is full: connecting to it hangs until the timeout.
struct Blackhole {
    _listener: Socket,
    _queued: Vec<Socket>,
    addr: SocketAddr,
}

fn blackhole(ip: IpAddr) -> Blackhole {
    blackhole_at(SocketAddr::new(ip, 0))
}

fn blackhole_at(at: SocketAddr) -> Blackhole {
    let listener =
        Socket::new(Domain::for_address(at), Type::STREAM, None).expect("a listening socket");
    // The port may have been used a moment ago by a connection now in TIME_WAIT.
    listener.set_reuse_address(true).expect("SO_REUSEADDR");
    if at.is_ipv6() {
        listener.set_only_v6(true).expect("IPV6_V6ONLY");
    }
    listener
        .bind(&at.into())
        .unwrap_or_else(|e| panic!("binding the blackhole at {at}: {e}"));
    listener.listen(0).expect("listen(0)");
    let addr = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("blackhole address");
    // Never accepted: fill the queue until a connect hangs, which proves it is full.
    let mut queued = Vec::new();
    for _ in 0..16 {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("a socket");
        match s.connect_timeout(&addr.into(), Duration::from_millis(200)) {
            Ok(()) => queued.push(s),
            Err(_) => {
                return Blackhole {
                    _listener: listener,
                    _queued: queued,
                    addr,
                }
            }
        }
    }
    panic!("the accept queue of {addr} never filled: connects to it would not hang");
}

fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn within(elapsed: Duration, at_least: Duration, bound: Duration) {
    assert!(
        elapsed >= at_least.mul_f64(0.9) && elapsed < bound + SLACK,
        "took {elapsed:?}, expected about {at_least:?} and less than {:?}",
        bound + SLACK
    );
}

// ---------------------------------------------------------------------------------------------
// Direct

#[test]
fn a_listener_that_never_accepts_fails_within_connect_timeout() {
    let hole = blackhole("127.0.0.1".parse().expect("literal"));
    let mut c = Config::with_host_port("127.0.0.1", hole.addr.port());
    c.connect_timeout = ONE_SECOND;
    let start = Instant::now();
    let e = net::connect(&c, far_deadline()).expect_err("the blackhole never accepts");
    within(start.elapsed(), ONE_SECOND, ONE_SECOND);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(
        e.message,
        format!(
            "cannot connect to Milter {0}: {0}: timed out after 1.00 s",
            hole.addr
        )
    );
}

#[test]
fn the_message_deadline_cuts_connect_timeout_short() {
    let hole = blackhole("::1".parse().expect("literal"));
    let mut c = Config::with_host_port("::1", hole.addr.port());
    c.connect_timeout = Duration::from_secs(60);
    let start = Instant::now();
    let e = net::connect(&c, Instant::now() + ONE_SECOND).expect_err("the blackhole");
    within(start.elapsed(), ONE_SECOND, ONE_SECOND);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(
        e.message.starts_with(&format!(
            "cannot connect to Milter [::1]:{0}: [::1]:{0}: timed out after ",
            hole.addr.port()
        )),
        "{e}"
    );

    let e = net::connect(&c, Instant::now()).expect_err("no time left");
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(
        e.message,
        format!(
            "cannot connect to Milter [::1]:{}: the message deadline passed before connecting",
            hole.addr.port()
        )
    );
}

#[test]
fn ipv6_literal_with_and_without_brackets() {
    let listener = TcpListener::bind("[::1]:0").expect("binding [::1]:0");
    let port = listener.local_addr().expect("address").port();
    for host in ["::1", "[::1]"] {
        let c = Config::with_host_port(host, port);
        let conn = net::connect(&c, far_deadline()).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(&*conn.peer, format!("[::1]:{port}"));
        assert!(
            socket2::SockRef::from(&conn.stream)
                .tcp_nodelay()
                .expect("TCP_NODELAY"),
            "TCP_NODELAY is not set"
        );
        let (_accepted, from) = listener.accept().expect("accepting");
        assert_eq!(Some(from), conn.stream.local_addr().ok());
    }
}

#[test]
fn refused_is_a_connect_error() {
    let port = proxies::free_port();
    let c = Config::with_host_port("127.0.0.1", port);
    let e = net::connect(&c, far_deadline()).expect_err("nothing listens");
    assert_eq!(e.kind, ErrorKind::Connect, "{e}");
    assert_eq!(
        e.message,
        format!("cannot connect to Milter 127.0.0.1:{port}: 127.0.0.1:{port}: connection refused")
    );
}

// ---------------------------------------------------------------------------------------------
// Through a SOCKS proxy

/// A proxy that accepts and then behaves as `script` says, holding the connection open until
/// the test ends (so that a stall is a stall, not a close).
fn fake_proxy(script: fn(&mut TcpStream)) -> (u16, mpsc::Sender<()>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake proxy");
    let port = listener.local_addr().expect("fake proxy address").port();
    let (done, wait) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            script(&mut s);
            let _ = wait.recv_timeout(Duration::from_secs(30));
        }
    });
    (port, done, thread)
}

fn through(port: u16) -> Config {
    let mut c = Config::with_host_port("localhost", 8891);
    c.socks_host = "127.0.0.1".to_string();
    c.socks_port = port;
    c.connect_timeout = ONE_SECOND;
    c
}

fn read_some(s: &mut TcpStream) {
    let mut buf = [0u8; 512];
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.read(&mut buf);
}

fn stall_case(script: fn(&mut TcpStream), awaited: &str) {
    let (port, done, thread) = fake_proxy(script);
    let start = Instant::now();
    let e = net::connect(&through(port), far_deadline()).expect_err("a stalling proxy");
    within(start.elapsed(), ONE_SECOND, ONE_SECOND);
    drop(done);
    let _ = thread.join();
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert_eq!(
        e.message,
        format!(
            "SOCKS proxy 127.0.0.1:{port} cannot reach Milter localhost:8891: \
             the proxy did not send {awaited}: timed out after 1.00 s"
        )
    );
}

#[test]
fn a_proxy_that_says_nothing() {
    stall_case(read_some, "its choice of authentication method");
}

#[test]
fn a_proxy_that_never_answers_connect() {
    stall_case(
        |s| {
            read_some(s);
            let _ = s.write_all(&[5, 0]);
            read_some(s);
        },
        "the reply to CONNECT",
    );
}

#[test]
fn a_trickling_proxy_cannot_stretch_the_handshake() {
    // A valid reply with a 255-byte bound name, one byte every 20 ms: over 5 s in all, while
    // CONNECT_TIMEOUT is 1 s for the whole handshake.
    let (port, done, thread) = fake_proxy(|s| {
        read_some(s);
        let _ = s.write_all(&[5, 0]);
        read_some(s);
        let mut reply = vec![5, 0, 0, 3, 255];
        reply.extend_from_slice(&[b'a'; 255]);
        reply.extend_from_slice(&[0, 1]);
        for b in reply {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let start = Instant::now();
    let e = net::connect(&through(port), far_deadline()).expect_err("a trickling proxy");
    within(start.elapsed(), ONE_SECOND, ONE_SECOND);
    drop(done);
    let _ = thread.join();
    assert_eq!(e.kind, ErrorKind::Socks, "{e}");
    assert!(
        e.message.ends_with(": timed out after 1.00 s")
            && e.message.contains("the proxy did not send the bound name"),
        "{e}"
    );
}

#[test]
fn a_proxy_that_never_accepts() {
    let hole = blackhole("127.0.0.1".parse().expect("literal"));
    let start = Instant::now();
    let e = net::connect(&through(hole.addr.port()), far_deadline()).expect_err("the blackhole");
    within(start.elapsed(), ONE_SECOND, ONE_SECOND);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(
        e.message,
        format!(
            "cannot connect to SOCKS proxy {0} (for Milter localhost:8891): {0}: timed out after 1.00 s",
            hole.addr
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Several addresses, in the resolver's order, with a private /etc/hosts

const IN_NAMESPACE: &str = "MILTER_NET_TEST_IN_NAMESPACE";
const MULTI: &str = "multi.milter.test";

/// True when this process is the copy running in the private namespace. Otherwise runs test
/// `name` of this binary again in a private mount namespace where /etc/hosts gives MULTI the
/// addresses ::1 and 127.0.0.1 and /etc/resolv.conf points at a port nobody listens on (so no
/// query leaves the machine), asserts that it passed, and returns false.
fn in_namespace(name: &str) -> bool {
    in_namespace_with(name, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
}

/// As `in_namespace`, with `resolv` as the private /etc/resolv.conf.
fn in_namespace_with(name: &str, resolv_conf: &str) -> bool {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        return true;
    }
    let dir = std::env::temp_dir().join(format!("milter-net-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let hosts = dir.join("hosts");
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n::1 {MULTI}\n127.0.0.1 {MULTI}\n"),
    )
    .expect("writing hosts");
    std::fs::write(&resolv, resolv_conf).expect("writing resolv.conf");
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && \
             exec \"$3\" --exact \"$4\" --nocapture --test-threads=1",
        )
        .arg("sh")
        .args([&hosts, &resolv, &exe])
        .arg(name)
        .env(IN_NAMESPACE, "1")
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("running unshare (package util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a private mount namespace (needs root, unshare and mount) failed: \
         {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    false
}

/// A socket bound to `addr` but not listening: connecting to it is refused at once, and it
/// keeps the port from being taken by anyone else.
fn refusing(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}

#[test]
fn several_addresses_in_resolver_order() {
    if !in_namespace("several_addresses_in_resolver_order") {
        return;
    }
    let order: Vec<IpAddr> = (MULTI, 0)
        .to_socket_addrs()
        .expect("resolving the test name from the private /etc/hosts")
        .map(|a| a.ip())
        .collect();
    let mut distinct = order.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "{MULTI} resolves to {order:?}");
    let (first, second) = (distinct[0], distinct[1]);

    // Nothing listens on either: the error lists both, in the resolver's order.
    let port = proxies::free_port();
    let _a = refusing(SocketAddr::new(first, port))
        .unwrap_or_else(|e| panic!("binding {first} port {port}: {e}"));
    let _b = refusing(SocketAddr::new(second, port))
        .unwrap_or_else(|e| panic!("binding {second} port {port}: {e}"));
    let c = Config::with_host_port(MULTI, port);
    let e = net::connect(&c, far_deadline()).expect_err("both refuse");
    assert_eq!(e.kind, ErrorKind::Connect, "{e}");
    assert_eq!(
        e.message,
        format!(
            "cannot connect to Milter {MULTI}:{port}: {}: connection refused; {}: connection refused",
            SocketAddr::new(first, port),
            SocketAddr::new(second, port)
        )
    );

    // The first refuses, the second listens: connected to the second.
    // (A port free on one family may be taken on the other: try a few.)
    let (listener, _refuse) = (0..5)
        .find_map(|_| {
            let listener = TcpListener::bind(SocketAddr::new(second, 0)).ok()?;
            let port = listener.local_addr().ok()?.port();
            Some((listener, refusing(SocketAddr::new(first, port)).ok()?))
        })
        .unwrap_or_else(|| panic!("no port free on both {first} and {second}"));
    let port = listener.local_addr().expect("address").port();
    let c = Config::with_host_port(MULTI, port);
    let conn = net::connect(&c, far_deadline()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&*conn.peer, SocketAddr::new(second, port).to_string());

    // The first never answers: after CONNECT_TIMEOUT the second is tried, within the bound.
    let hole = blackhole(first);
    let listener = TcpListener::bind(SocketAddr::new(second, hole.addr.port()))
        .unwrap_or_else(|e| panic!("binding {second} port {}: {e}", hole.addr.port()));
    let mut c = Config::with_host_port(MULTI, hole.addr.port());
    c.connect_timeout = ONE_SECOND;
    let start = Instant::now();
    let conn = net::connect(&c, far_deadline()).unwrap_or_else(|e| panic!("{e}"));
    within(start.elapsed(), ONE_SECOND, ONE_SECOND);
    assert_eq!(
        &*conn.peer,
        SocketAddr::new(second, hole.addr.port()).to_string()
    );
    drop(listener);

    // Both never answer: Timeout after one CONNECT_TIMEOUT each, each attempt listed.
    let port = hole.addr.port();
    let _hole2 = blackhole_at(SocketAddr::new(second, port));
    let start = Instant::now();
    let e = net::connect(&c, far_deadline()).expect_err("two blackholes");
    within(start.elapsed(), 2 * ONE_SECOND, 2 * ONE_SECOND);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(
        e.message,
        format!(
            "cannot connect to Milter {MULTI}:{port}: {}: timed out after 1.00 s; \
             {}: timed out after 1.00 s",
            SocketAddr::new(first, port),
            SocketAddr::new(second, port)
        )
    );

    // A name the resolver does not know.
    let e = net::connect(
        &Config::with_host_port("absent.milter.test", 1),
        far_deadline(),
    )
    .expect_err("an unknown name");
    assert_eq!(e.kind, ErrorKind::Connect, "{e}");
    assert!(
        e.message.starts_with(
            "cannot connect to Milter absent.milter.test:1: cannot resolve absent.milter.test: "
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// A resolver that never answers

/// Threads of this process named `name` (as /proc/self/task/*/comm shows them), and all of them.
fn threads_named(name: &str) -> (usize, usize) {
    let tasks: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("reading /proc/self/task")
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .collect();
    let named = tasks.iter().filter(|c| c.trim_end() == name).count();
    (named, tasks.len())
}

/// 64 threads connect to Milters named by names nobody answers for (the private resolv.conf
/// names a UDP socket on loopback that reads nothing and never replies): the process never runs
/// more than 4 lookup threads, threads wanting the same name wait on one lookup, each gives up
/// at its own CONNECT_TIMEOUT, and a name nobody is looking up yet fails at once, "resolver
/// busy/stalled", while 4 lookups are stuck.
#[test]
fn a_stalled_resolver_never_piles_up_threads() {
    const STALL_ADDR: &str = "127.54.0.53";
    if std::env::var_os(IN_NAMESPACE).is_none() {
        // The silent resolver lives in this process, outside the namespace (which shares the
        // network): bound and never read.
        let _silent = std::net::UdpSocket::bind((STALL_ADDR, 53))
            .unwrap_or_else(|e| panic!("binding the silent resolver at {STALL_ADDR}:53: {e}"));
        // The namespace's glibc asks it; timeout:5 attempts:2 keeps each lookup stuck for
        // longer than the test runs.
        in_namespace_with(
            "a_stalled_resolver_never_piles_up_threads",
            &format!("nameserver {STALL_ADDR}\noptions timeout:5 attempts:2\n"),
        );
        return;
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (most_lookups, most_threads, results) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut lookups, mut all) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (l, a) = threads_named("milter-resolve");
                lookups = lookups.max(l);
                all = all.max(a);
                std::thread::sleep(Duration::from_millis(5));
            }
            (lookups, all)
        });
        let filters: Vec<_> = (0..64)
            .map(|i| {
                s.spawn(move || {
                    // 6 names over 64 threads: more names than lookup threads are allowed.
                    let mut c = Config::with_host_port(&format!("n{}.stalled.test", i % 6), 8891);
                    c.connect_timeout = ONE_SECOND;
                    let start = Instant::now();
                    let r = net::connect(&c, far_deadline());
                    (start.elapsed(), r.map(|_| ()))
                })
            })
            .collect();
        let results: Vec<_> = filters
            .into_iter()
            .map(|f| f.join().expect("a thread"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (l, a) = sampler.join().expect("the sampler");
        (l, a, results)
    });
    let baseline = threads_named("milter-resolve").1;
    assert!(
        most_lookups <= milter_spamfilter::resolve::MAX_LOOKUP_THREADS,
        "{most_lookups} lookup threads at once"
    );
    assert!(most_lookups >= 1, "no lookup thread was ever seen");
    // 64 filtering threads, the sampler, the lookups, and the test harness's own.
    assert!(
        most_threads <= baseline + 64 + 1 + 4 + 2,
        "{most_threads} threads at most, {baseline} now"
    );
    let (mut busy, mut timed_out) = (0, 0);
    for (elapsed, r) in &results {
        let e = r.as_ref().expect_err("nothing resolves");
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        if e.message.contains("resolver busy/stalled") {
            busy += 1;
            assert!(*elapsed < SLACK, "a busy refusal took {elapsed:?}");
        } else {
            timed_out += 1;
            assert!(
                e.message
                    .ends_with("the resolver did not answer within 1.00 s"),
                "{e}"
            );
            within(*elapsed, ONE_SECOND, ONE_SECOND);
        }
        assert!(
            e.message.starts_with("cannot connect to Milter n"),
            "the error names HOST: {e}"
        );
    }
    assert!(
        busy > 0 && timed_out > 0,
        "busy {busy}, timed out {timed_out}"
    );
    // The stuck lookups are still running: the next message of a stuck name waits on its
    // lookup again instead of starting one more.
    let before = threads_named("milter-resolve").0;
    let mut c = Config::with_host_port("n0.stalled.test", 8891);
    c.connect_timeout = Duration::from_millis(200);
    let _ = net::connect(&c, far_deadline());
    assert!(threads_named("milter-resolve").0 <= before);
}
