//! Real Milter daemons for the tests, each started on a free loopback port with its own
//! configuration in a private scratch directory, and stopped when dropped: the whole process
//! group gets SIGTERM, then SIGKILL, and the directory is removed.
//!
//! No packet may leave loopback. Every daemon therefore runs in a private mount namespace whose
//! `/etc/resolv.conf` names a `dnsmasq` on a loopback address that answers only the records a
//! test gives it (NXDOMAIN for everything else); daemons with their own resolver settings
//! (rspamd, opendkim's libunbound) are pointed at the same dnsmasq explicitly.

#![allow(dead_code)] // Each test file uses a different part.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "process.rs"]
mod process;
#[allow(clippy::duplicate_mod)]
#[path = "tempdir.rs"]
mod tempdir;
pub use process::free_port;
use process::{Group, NotListening};

/// How long a daemon may take to listen. rspamd (about 2 s here) and spamd are the slow ones.
const START_WITHIN: Duration = Duration::from_secs(60);

/// How long a daemon may take to exit after SIGTERM before its group gets SIGKILL. The libmilter
/// daemons notice SIGTERM only when their listener's 5 s poll ends; nothing here needs a graceful
/// stop, so they are not waited for.
const STOP_WITHIN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Scratch directories and processes.

/// A private directory under the system's temp dir, removed (with everything in it) on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new directory in the system's temp dir.
    pub fn new(what: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), what)
    }

    /// A new directory on a path that no user but root can write to from `/` down: opendkim
    /// refuses a configuration file or key below a world-writable directory such as /tmp.
    pub fn new_private(what: &str) -> Scratch {
        let candidates = [Path::new(env!("CARGO_TARGET_TMPDIR")), Path::new("/run")];
        let base = candidates
            .iter()
            .find(|c| only_root_writes(c))
            .unwrap_or_else(|| {
                panic!(
                    "no directory only root can write to for opendkim's files among {candidates:?}"
                )
            });
        Scratch::new_in(base, what)
    }

    fn new_in(base: &Path, what: &str) -> Scratch {
        let path = tempdir::fresh_dir(base, &format!("milter-daemons-{what}"));
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the subdirectory `name`, owned by the system user `owner` when given (for daemons
    /// that drop root and must write there).
    pub fn dir(&self, name: &str, owner: Option<&str>) -> PathBuf {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        if let Some(user) = owner {
            let (uid, gid) = system_user(user);
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {user} {}: {e}", dir.display()));
        }
        dir
    }

    /// Writes `name` (creating its parent directories) and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Writes `name` readable by its owner (root) only, as opendkim wants its configuration.
    pub fn write_private(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_ref()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Every `*.log` file in the directory, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension() == Some(OsStr::new("log")));
        names.sort();
        let mut out = String::new();
        for p in names {
            let text = std::fs::read(&p).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            // The end of a log is where a start-up failure shows.
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {}\n", p.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Does `dir` exist, with it and every directory above it owned by root and not writable by
/// group or others?
fn only_root_writes(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    dir.ancestors().all(|d| {
        std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
    })
}

/// uid and gid of a system user the packages create (`_rspamd`, `debian-spamd`, `defang`).
fn system_user(name: &str) -> (u32, u32) {
    let cname = std::ffi::CString::new(name).expect("a user name without NUL");
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r (reentrant, unlike getpwnam: tests run in parallel) fills `pw` with
    // pointers into `buf`, both ours and alive for the call; `found` is NULL or points at `pw`.
    let (r, pw) = unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let r = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (r, pw)
    };
    assert!(
        r == 0 && !found.is_null(),
        "the system user {name} does not exist: its Debian package creates it (see .ci/run)"
    );
    (pw.pw_uid, pw.pw_gid)
}

/// Fails with the package to install when `program` is missing.
pub fn require(program: &str, package: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists());
    assert!(
        found,
        "{program} is not installed: apt-get install {package} (the Debian package {package})"
    );
}

/// A started program, leader of its own process group, with stdout and stderr in `log`.
pub struct Process {
    name: String,
    group: Group,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` in a new process group, its output appended to `log`.
    pub fn spawn(name: &str, cmd: Command, log: PathBuf) -> Process {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating {}: {e}", log.display()));
        let group = Group::spawn(cmd, Stdio::null(), out.into(), err.into())
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            group,
            log,
        }
    }

    /// How the program ended, once it has. It is not reaped: it stays a zombie until `Drop`, so
    /// that its pid (our process group's id) cannot be reused while the group is signalled.
    fn exited(&self) -> Option<String> {
        self.group.ended().map(how_it_ended)
    }

    /// Waits until something accepts TCP connections on 127.0.0.1:`port`; fails when the
    /// program exits first (a port taken meanwhile, a bad configuration) or takes too long.
    pub fn wait_listening(&self, port: u16) -> Result<(), String> {
        match self.group.wait_listening(port, START_WITHIN) {
            Ok(()) => Ok(()),
            Err(NotListening::Ended(how)) => Err(format!(
                "{} ended at start ({})",
                self.name,
                how_it_ended(how)
            )),
            Err(NotListening::Slow) => Err(format!(
                "{} did not listen on 127.0.0.1:{port} within {} s",
                self.name,
                START_WITHIN.as_secs()
            )),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.group.stop(STOP_WITHIN);
    }
}

/// `exit status N`, `killed by signal N`, or why that could not be learnt.
fn how_it_ended(how: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match how {
        Ok(status) => match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("killed by signal {}", status.signal().unwrap_or_default()),
        },
        Err(e) => format!("waitid: {e}"),
    }
}

/// Runs `attempt` with fresh ports until it succeeds, three times at most.
fn retrying<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        match attempt() {
            Ok(t) => return t,
            Err(e) => last = e,
        }
    }
    panic!("{what} could not be started:\n{last}")
}

// ---------------------------------------------------------------------------------------------
// The resolver on loopback.

/// A dnsmasq on 127.53.x.y port 53 that answers only its TXT records and NXDOMAIN for every
/// other name, never forwarding a query.
pub struct Resolver {
    pub addr: Ipv4Addr,
    resolv_conf: PathBuf,
    process: Process,
    scratch: Scratch,
}

impl Resolver {
    /// Starts dnsmasq with these TXT records (name, strings; each string at most 255 bytes).
    pub fn start(txt: &[(&str, Vec<String>)]) -> Resolver {
        require("dnsmasq", "dnsmasq-base");
        require("unshare", "util-linux");
        require("mount", "mount");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "the daemon tests run as root (as CI does): each daemon gets a private \
             /etc/resolv.conf in its own mount namespace, and several drop root to their own user"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        retrying("dnsmasq", || {
            // An address of its own on port 53, because resolv.conf cannot name a port. The
            // pid spreads concurrent test processes over 127.53.0.0/16; a clash makes dnsmasq
            // exit, and the next attempt takes the next address.
            let n = (std::process::id() as usize * 7 + N.fetch_add(1, Ordering::Relaxed)) % 62_500;
            let addr = Ipv4Addr::new(127, 53, (n / 250) as u8, (n % 250 + 2) as u8);
            let scratch = Scratch::new("dns");
            let resolv_conf = scratch.write("resolv.conf", format!("nameserver {addr}\n"));
            let mut cmd = Command::new("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/#/",
                "--bind-interfaces",
                "--port=53",
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
                "--log-queries",
            ])
            .arg(format!("--listen-address={addr}"));
            for (name, strings) in txt {
                cmd.arg(format!("--txt-record={name},{}", strings.join(",")));
            }
            let process = Process::spawn("dnsmasq", cmd, scratch.path().join("dnsmasq.log"));
            let r = Resolver {
                addr,
                resolv_conf,
                process,
                scratch,
            };
            r.wait_answering().map(|()| r)
        })
    }

    /// Waits until dnsmasq answers a query.
    fn wait_answering(&self) -> Result<(), String> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp bind: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("udp timeout: {e}"))?;
        let query = dns_query(0x4d54, "probe.invalid", 16);
        let start = Instant::now();
        loop {
            if let Some(how) = self.process.exited() {
                return Err(format!(
                    "dnsmasq on {} ended at start ({how}):\n{}",
                    self.addr,
                    self.scratch.logs()
                ));
            }
            let _ = socket.send_to(&query, (self.addr, 53));
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                if n >= 2 && buf[..2] == query[..2] {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "dnsmasq on {} did not answer within 10 s:\n{}",
                    self.addr,
                    self.scratch.logs()
                ));
            }
        }
    }

    /// A command that runs `program` in a private mount namespace where `/etc/resolv.conf` names
    /// this resolver only. Add the program's arguments with `arg`/`args`.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&self.resolv_conf)
            .arg(program);
        cmd
    }

    /// The queries dnsmasq saw so far, for failure messages.
    pub fn log(&self) -> String {
        self.scratch.logs()
    }
}

/// A DNS query packet (RFC 1035) for `name` and record type `qtype`, recursion desired.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

// ---------------------------------------------------------------------------------------------
// The daemons.

/// A running Milter (and what it depends on), listening on 127.0.0.1:`port`.
pub struct Daemon {
    pub name: &'static str,
    pub port: u16,
    /// The Milter first, then its back-ends: dropped (stopped) in this order.
    processes: Vec<Process>,
    /// Declared last, so removed after every process has stopped.
    scratch: Scratch,
}

impl Daemon {
    /// The daemon's log files, for failure messages.
    pub fn logs(&self) -> String {
        self.scratch.logs()
    }
}

/// The server name rspamd reports in X-Rspamd-Server.
pub const RSPAMD_HOSTNAME: &str = "rspamd.example.net";

/// rspamd 3.x in proxy mode as a Milter (`milter = yes; self_scan = yes`): no normal or
/// controller worker, no redis, every directory it writes in the scratch directory.
pub fn rspamd(dns: &Resolver) -> Daemon {
    require("rspamd", "rspamd");
    retrying("rspamd", || {
        let port = free_port();
        let scratch = Scratch::new("rspamd");
        let conf = scratch.dir("conf", None);
        let db = scratch.dir("db", Some("_rspamd"));
        let run = scratch.dir("run", Some("_rspamd"));
        let logdir = scratch.dir("logdir", Some("_rspamd"));
        // rspamd 3.4 reads self_scan from the upstream, not from the worker: the packaged
        // upstream "local" (a normal worker on localhost:11333) is replaced by a self-scanning one.
        scratch.write(
            "conf/override.d/worker-proxy.inc",
            format!(
                "milter = yes;\ntimeout = 120s;\ncount = 1;\nbind_socket = \"127.0.0.1:{port}\";\n\
                 upstream \"local\" {{ default = yes; self_scan = yes; }}\n"
            ),
        );
        // By default rspamd adds headers to spam only; these make it report on every message,
        // with a fixed server name.
        scratch.write(
            "conf/local.d/milter_headers.conf",
            format!(
                "extended_spam_headers = true;\nuse = [\"x-spam-status\"];\n\
                 routines {{ x-rspamd-server {{ hostname = \"{RSPAMD_HOSTNAME}\"; }} }}\n"
            ),
        );
        // The normal and controller workers would bind localhost:11333/11334.
        scratch.write("conf/override.d/worker-normal.inc", "enabled = false;\n");
        scratch.write(
            "conf/override.d/worker-controller.inc",
            "enabled = false;\n",
        );
        scratch.write(
            "conf/override.d/logging.inc",
            "type = \"console\";\nlevel = \"info\";\n",
        );
        // The public suffix list takes rspamd about 17 s to compile at every start; the test
        // mail needs only these.
        let tld = scratch.write("conf/tld.dat", "org\nnet\ncom\n");
        scratch.write(
            "conf/local.d/options.inc",
            format!(
                "dns {{ nameserver = [\"{}:53\"]; }}\nurl_tld = \"{}\";\n",
                dns.addr,
                tld.display()
            ),
        );
        let mut cmd = dns.command("rspamd");
        // `make test-future` moves every program's clock with libfaketime, which rspamd cannot
        // take (its bundled jemalloc): it names a preload that moves rspamd's clock instead.
        if let Some(preload) = std::env::var_os("RSPAMD_LD_PRELOAD") {
            cmd.env("LD_PRELOAD", preload);
        }
        cmd.args(["-f", "-u", "_rspamd", "-g", "_rspamd"])
            .args(["-c", "/etc/rspamd/rspamd.conf"])
            .arg(format!("--var=LOCAL_CONFDIR={}", conf.display()))
            .arg(format!("--var=DBDIR={}", db.display()))
            .arg(format!("--var=RUNDIR={}", run.display()))
            .arg(format!("--var=LOGDIR={}", logdir.display()));
        let p = Process::spawn("rspamd", cmd, scratch.path().join("rspamd.log"));
        match p.wait_listening(port) {
            Ok(()) => Ok(Daemon {
                name: "rspamd",
                port,
                processes: vec![p],
                scratch,
            }),
            Err(e) => {
                drop(p);
                Err(format!("{e}\n{}", scratch.logs()))
            }
        }
    })
}

/// SpamAssassin's spamd on loopback: local tests only, no Bayes, no user configuration, its
/// helper home in the scratch directory. Not a Milter itself: `spamass_milter` talks to it.
pub fn spamd(dns: &Resolver) -> Daemon {
    require("spamd", "spamd");
    require("spamassassin", "spamassassin");
    retrying("spamd", || {
        let port = free_port();
        let scratch = Scratch::new("spamd");
        let home = scratch.dir("home", Some("debian-spamd"));
        let mut cmd = dns.command("spamd");
        cmd.args(["--username=debian-spamd", "--groupname=debian-spamd"])
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["--local", "--nouser-config", "--syslog=stderr"])
            .arg(format!("--helper-home-dir={}", home.display()))
            .args(["--min-children=1", "--max-children=2"])
            .args(["--cf=use_bayes 0", "--cf=bayes_auto_learn 0"]);
        let p = Process::spawn("spamd", cmd, scratch.path().join("spamd.log"));
        match p.wait_listening(port) {
            Ok(()) => Ok(Daemon {
                name: "spamd",
                port,
                processes: vec![p],
                scratch,
            }),
            Err(e) => {
                drop(p);
                Err(format!("{e}\n{}", scratch.logs()))
            }
        }
    })
}

/// spamass-milter in front of `spamd`, with `flags` before its `--` (e.g. `["-r", "-1"]`).
pub fn spamass_milter(dns: &Resolver, spamd: &Daemon, flags: &[&str]) -> Daemon {
    require("spamass-milter", "spamass-milter");
    require("spamc", "spamc");
    retrying("spamass-milter", || {
        let port = free_port();
        let scratch = Scratch::new("spamass-milter");
        let mut cmd = dns.command("spamass-milter");
        cmd.arg("-p")
            .arg(format!("inet:{port}@127.0.0.1"))
            .args(flags)
            .args(["--", "-d", "127.0.0.1", "-p", &spamd.port.to_string()]);
        let p = Process::spawn("spamass-milter", cmd, scratch.path().join("milter.log"));
        match p.wait_listening(port) {
            Ok(()) => Ok(Daemon {
                name: "spamass-milter",
                port,
                processes: vec![p],
                scratch,
            }),
            Err(e) => {
                drop(p);
                Err(format!("{e}\n{}", scratch.logs()))
            }
        }
    })
}

/// The EICAR anti-virus test string, put together here so that no file of the project is one
/// that virus scanners flag.
pub fn eicar() -> String {
    [
        "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat()
}

/// The host name clamav-milter reports in X-Virus-Scanned (`ReportHostname`).
pub const CLAMAV_HOSTNAME: &str = "av.example.net";
/// clamav-milter's reply text for infected mail (`RejectMsg`; `%v` is the virus name).
pub const CLAMAV_REJECT: &str = "Virus %v found, message rejected";

/// clamd with a database of one signature built here (the EICAR string as an `.ndb` body
/// signature named `Eicar-Test-Local`: nothing is downloaded), and clamav-milter in front of it
/// rejecting infected mail and adding `X-Virus-Status` (`AddHeader Replace`).
pub fn clamav(dns: &Resolver) -> Daemon {
    require("clamd", "clamav-daemon");
    require("clamav-milter", "clamav-milter");
    retrying("clamav-milter", || {
        let scratch = Scratch::new("clamav");
        let db = scratch.dir("db", None);
        let hex: String = eicar().bytes().map(|b| format!("{b:02x}")).collect();
        scratch.write("db/local.ndb", format!("Eicar-Test-Local:0:*:{hex}\n"));

        let clamd_port = free_port();
        let clamd_conf = scratch.write(
            "clamd.conf",
            format!(
                "Foreground yes\nTCPSocket {clamd_port}\nTCPAddr 127.0.0.1\n\
                 DatabaseDirectory {}\nLogFile {}\nLogTime yes\nSelfCheck 0\n",
                db.display(),
                scratch.path().join("clamd-file.log").display()
            ),
        );
        let mut cmd = dns.command("clamd");
        cmd.arg("-c").arg(&clamd_conf);
        let clamd = Process::spawn("clamd", cmd, scratch.path().join("clamd.log"));
        // clamav-milter pings clamd once at start and defers all mail while it finds none, so
        // clamd must answer, not merely listen, before clamav-milter starts.
        if let Err(e) = clamd
            .wait_listening(clamd_port)
            .and_then(|()| wait_clamd_pong(&clamd, clamd_port))
        {
            drop(clamd);
            return Err(format!("{e}\n{}", scratch.logs()));
        }

        let port = free_port();
        let milter_conf = scratch.write(
            "clamav-milter.conf",
            format!(
                "Foreground yes\nMilterSocket inet:{port}@127.0.0.1\n\
                 ClamdSocket tcp:127.0.0.1:{clamd_port}\nOnInfected Reject\nOnClean Accept\n\
                 AddHeader Replace\nReportHostname {CLAMAV_HOSTNAME}\n\
                 RejectMsg {CLAMAV_REJECT}\nLogInfected Basic\nLogVerbose yes\nLogFile {}\n",
                scratch.path().join("clamav-milter-file.log").display()
            ),
        );
        let mut cmd = dns.command("clamav-milter");
        cmd.arg("-c").arg(&milter_conf);
        let milter = Process::spawn(
            "clamav-milter",
            cmd,
            scratch.path().join("clamav-milter.log"),
        );
        // It finds clamd through a monitor thread that probes asynchronously; until its first
        // probe succeeded it defers every message (OnFail), even when already listening.
        let milter_log = scratch.path().join("clamav-milter-file.log");
        let ready = milter.wait_listening(port).and_then(|()| {
            wait_for_line(&milter, &milter_log, "Probe for slot 1 returned: success")
        });
        match ready {
            Ok(()) => Ok(Daemon {
                name: "clamav-milter",
                port,
                processes: vec![milter, clamd],
                scratch,
            }),
            Err(e) => {
                drop(milter);
                drop(clamd);
                Err(format!("{e}\n{}", scratch.logs()))
            }
        }
    })
}

/// Waits until `log` has a line containing `wanted`.
fn wait_for_line(p: &Process, log: &Path, wanted: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Some(how) = p.exited() {
            return Err(format!("{} ended at start ({how})", p.name));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains(wanted)) {
            return Ok(());
        }
        if start.elapsed() > START_WITHIN {
            return Err(format!(
                "{} did not log \"{wanted}\" within {} s",
                p.name,
                START_WITHIN.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until clamd answers its PING command with PONG.
fn wait_clamd_pong(clamd: &Process, port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        if let Some(how) = clamd.exited() {
            return Err(format!("clamd ended at start ({how})"));
        }
        let answer = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"nPING\n")?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)?;
            Ok(answer)
        });
        if matches!(&answer, Ok(a) if a.as_slice() == b"PONG\n") {
            return Ok(());
        }
        if start.elapsed() > START_WITHIN {
            return Err(format!(
                "clamd did not answer PING within {} s: {answer:?}",
                START_WITHIN.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A DKIM key pair from `opendkim-genkey` for selector `test` of example.org.
pub struct DkimKey {
    pub private_key: PathBuf,
    /// The TXT record's strings for `test._domainkey.example.org`, each at most 255 bytes.
    pub txt: Vec<String>,
    scratch: Scratch,
}

pub const DKIM_DOMAIN: &str = "example.org";
pub const DKIM_SELECTOR: &str = "test";

impl DkimKey {
    pub fn generate() -> DkimKey {
        require("opendkim-genkey", "opendkim-tools");
        let scratch = Scratch::new_private("dkim-key");
        let out = Command::new("opendkim-genkey")
            .arg("-D")
            .arg(scratch.path())
            .args(["-b", "2048", "-d", DKIM_DOMAIN, "-s", DKIM_SELECTOR])
            .output()
            .expect("running opendkim-genkey");
        assert!(
            out.status.success(),
            "opendkim-genkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // test.txt is a zone file fragment: the record's text is the quoted strings in it.
        let zone = std::fs::read_to_string(scratch.path().join("test.txt"))
            .expect("opendkim-genkey writes test.txt");
        let text: String = zone
            .split('"')
            .skip(1)
            .step_by(2)
            .collect::<Vec<&str>>()
            .concat();
        assert!(
            text.starts_with("v=DKIM1;") && text.contains("p="),
            "unexpected key record from opendkim-genkey: {zone}"
        );
        let txt = text
            .as_bytes()
            .chunks(250)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        DkimKey {
            private_key: scratch.path().join("test.private"),
            txt,
            scratch,
        }
    }

    /// The TXT record the verifier looks up.
    pub fn record(&self) -> (&'static str, Vec<String>) {
        ("test._domainkey.example.org", self.txt.clone())
    }
}

/// opendkim as a signer for example.org (selector `test`) of mail from 192.0.2.0/24.
pub fn opendkim_signer(dns: &Resolver, key: &DkimKey) -> Daemon {
    opendkim(
        dns,
        &format!(
            "Mode s\nDomain {DKIM_DOMAIN}\nSelector {DKIM_SELECTOR}\nKeyFile {}\n\
             InternalHosts 192.0.2.0/24\n",
            key.private_key.display()
        ),
    )
}

/// opendkim as a verifier, adding Authentication-Results (authserv-id `verifier.example.net`)
/// to every message, looking keys up through `dns`.
pub fn opendkim_verifier(dns: &Resolver) -> Daemon {
    opendkim(
        dns,
        "Mode v\nAlwaysAddARHeader yes\nAuthservID verifier.example.net\n",
    )
}

fn opendkim(dns: &Resolver, mode: &str) -> Daemon {
    require("opendkim", "opendkim");
    retrying("opendkim", || {
        let port = free_port();
        let scratch = Scratch::new_private("opendkim");
        // libunbound ignores resolv.conf and would recurse from the root servers: Nameservers
        // keeps it on the loopback resolver.
        let conf = scratch.write_private(
            "opendkim.conf",
            format!(
                "Background no\nSyslog no\nSocket inet:{port}@127.0.0.1\nNameservers {}\n\
                 TemporaryDirectory {}\n{mode}",
                dns.addr,
                scratch.path().display()
            ),
        );
        let mut cmd = dns.command("opendkim");
        cmd.arg("-x").arg(&conf);
        let p = Process::spawn("opendkim", cmd, scratch.path().join("opendkim.log"));
        match p.wait_listening(port) {
            Ok(()) => Ok(Daemon {
                name: "opendkim",
                port,
                processes: vec![p],
                scratch,
            }),
            Err(e) => {
                drop(p);
                Err(format!("{e}\n{}", scratch.logs()))
            }
        }
    })
}

/// mimedefang with its multiplexor running the Perl filter `filter` (as user defang, spool in
/// the scratch directory, one or two workers).
pub fn mimedefang(dns: &Resolver, filter: &Path) -> Daemon {
    require("mimedefang", "mimedefang");
    require("mimedefang-multiplexor", "mimedefang");
    let rules =
        std::fs::read(filter).unwrap_or_else(|e| panic!("reading {}: {e}", filter.display()));
    retrying("mimedefang", || {
        let scratch = Scratch::new("mimedefang");
        let spool = scratch.dir("spool", Some("defang"));
        // A copy the defang user can read wherever the project was checked out.
        let filter = scratch.write("mimedefang-filter.pl", &rules);
        let socket = spool.join("mimedefang-multiplexor.sock");
        let mut cmd = dns.command("mimedefang-multiplexor");
        cmd.args(["-D", "-U", "defang", "-z"])
            .arg(&spool)
            .arg("-s")
            .arg(&socket)
            .arg("-F")
            .arg(&filter)
            .args(["-m", "1", "-x", "2", "-q", "8", "-Q", "30"]);
        let mux = Process::spawn(
            "mimedefang-multiplexor",
            cmd,
            scratch.path().join("mux.log"),
        );
        let start = Instant::now();
        while !socket.exists() {
            if let Some(how) = mux.exited() {
                drop(mux);
                return Err(format!(
                    "mimedefang-multiplexor ended at start ({how})\n{}",
                    scratch.logs()
                ));
            }
            if start.elapsed() > START_WITHIN {
                drop(mux);
                return Err(format!(
                    "mimedefang-multiplexor made no socket within {} s\n{}",
                    START_WITHIN.as_secs(),
                    scratch.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }

        let port = free_port();
        let mut cmd = dns.command("mimedefang");
        cmd.args(["-D", "-U", "defang", "-z"])
            .arg(&spool)
            .arg("-m")
            .arg(&socket)
            .arg("-p")
            .arg(format!("inet:{port}@127.0.0.1"))
            .arg("-q");
        let md = Process::spawn("mimedefang", cmd, scratch.path().join("mimedefang.log"));
        match md.wait_listening(port) {
            Ok(()) => Ok(Daemon {
                name: "mimedefang",
                port,
                processes: vec![md, mux],
                scratch,
            }),
            Err(e) => {
                drop(md);
                drop(mux);
                Err(format!("{e}\n{}", scratch.logs()))
            }
        }
    })
}
