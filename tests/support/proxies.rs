//! Real SOCKS5 proxies for the tests, on free loopback ports, stopped when dropped: dante
//! (`danted`, package dante-server) with or without username authentication against a system
//! user the helpers create, and microsocks (package microsocks) with or without `-u/-P`.
//! Both are told to connect out only from 127.0.0.1, so no test packet leaves the machine.

#![allow(dead_code)] // Each test file uses a different part.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

#[path = "process.rs"]
mod process;
#[allow(clippy::duplicate_mod)]
#[path = "tempdir.rs"]
mod tempdir;
pub use process::free_port;
use process::Group;

/// The system user dante's `username` method checks; created (or its password reset) by
/// `ensure_socks_user`.
pub const SOCKS_USER: &str = "miltersocks";
pub const SOCKS_PASSWORD: &str = "s0cks-Test-pw";

/// A running proxy; SIGTERM to its whole process group on drop (dante forks helpers), then
/// SIGKILL if it has not gone within two seconds.
pub struct Proxy {
    group: Group,
    pub port: u16,
    pub name: &'static str,
    dir: PathBuf,
}

impl Proxy {
    /// What the proxy wrote to stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.group.stop(Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh private directory for one proxy's files.
fn scratch_dir(what: &str) -> PathBuf {
    tempdir::fresh_dir(&std::env::temp_dir(), &format!("milter-net-{what}"))
}

/// Fails with the package to install when `program` is missing.
fn require(program: &str, package: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(program).exists());
    assert!(
        found,
        "{program} is not installed: install the Debian package {package} (apt-get install {package})"
    );
}

/// Starts `cmd` (which listens on `port`) and waits until it accepts connections.
fn start(
    cmd: Command,
    name: &'static str,
    port: u16,
    dir: PathBuf,
) -> std::result::Result<Proxy, String> {
    let stderr = std::fs::File::create(dir.join("stderr"))
        .map_err(|e| format!("creating {}/stderr: {e}", dir.display()))?;
    let group = Group::spawn(cmd, Stdio::null(), Stdio::null(), stderr.into())
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let proxy = Proxy {
        group,
        port,
        name,
        dir,
    };
    proxy
        .group
        .wait_listening_or_log(name, port, Duration::from_secs(10), || proxy.log())?;
    Ok(proxy)
}

/// Starts a proxy, retrying on a new port when another process took the chosen one between
/// our probe and the proxy's bind.
fn start_retrying(name: &'static str, make: impl Fn(u16, &PathBuf) -> Command) -> Proxy {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let dir = scratch_dir(name);
        match start(make(port, &dir), name, port, dir) {
            Ok(p) => return p,
            Err(e) => last = e,
        }
    }
    panic!("{last}")
}

/// dante's client authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DanteAuth {
    /// `socksmethod: none`
    None,
    /// `socksmethod: username`, checked against the system user `SOCKS_USER`.
    Username,
}

/// danted on 127.0.0.1, connecting out from 127.0.0.1 only.
pub fn dante(auth: DanteAuth) -> Proxy {
    require("danted", "dante-server");
    let method = match auth {
        DanteAuth::None => "none",
        DanteAuth::Username => {
            ensure_socks_user();
            "username"
        }
    };
    start_retrying("danted", |port, dir| {
        // Root is needed to check passwords against /etc/shadow; the unprivileged user is the
        // one dante drops to otherwise.
        let conf = format!(
            "logoutput: stderr\n\
             internal: 127.0.0.1 port = {port}\n\
             external: 127.0.0.1\n\
             clientmethod: none\n\
             socksmethod: {method}\n\
             user.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
             socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }}\n"
        );
        let path = dir.join("danted.conf");
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let mut cmd = Command::new("danted");
        cmd.arg("-f").arg(&path).args(["-N", "1"]);
        cmd
    })
}

/// microsocks on 127.0.0.1, connecting out from 127.0.0.1 only; with `-u/-P` when
/// `credentials` are given.
pub fn microsocks(credentials: Option<(&str, &str)>) -> Proxy {
    require("microsocks", "microsocks");
    start_retrying("microsocks", |port, _dir| {
        let mut cmd = Command::new("microsocks");
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-b",
            "127.0.0.1",
        ]);
        if let Some((user, password)) = credentials {
            cmd.args(["-u", user, "-P", password]);
        }
        cmd
    })
}

/// Creates the system user `SOCKS_USER` when missing and sets its password to
/// `SOCKS_PASSWORD`. Idempotent; safe to call from several tests (and test binaries) at once.
pub fn ensure_socks_user() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    require("useradd", "passwd");
    require("chpasswd", "passwd");
    let exists = || {
        Command::new("id")
            .args(["-u", SOCKS_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !exists() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SOCKS_USER,
            ])
            .output()
            .expect("running useradd");
        // Another test binary may have created it meanwhile: only its absence is a failure.
        assert!(
            exists(),
            "useradd {SOCKS_USER} failed (the dante tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // chpasswd fails while another chpasswd holds /etc/shadow's lock: try again briefly.
    let mut last = String::new();
    for _ in 0..20 {
        let child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = child.expect("running chpasswd");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = writeln!(stdin, "{SOCKS_USER}:{SOCKS_PASSWORD}");
        }
        let out = child.wait_with_output().expect("waiting for chpasswd");
        if out.status.success() {
            *done = true;
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chpasswd could not set the password of {SOCKS_USER}: {last}");
}
