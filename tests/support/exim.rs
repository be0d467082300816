//! A real MTA that calls the library through the Brightmail client API: Exim 4.96 (Debian 12's
//! exim4 source package) built with EXPERIMENTAL_BRIGHTMAIL by scripts/exim-build.sh against
//! include/bmi_api.h and our library as libbmiclient_single.so.
//!
//! `Exim::start(options)` runs it as an SMTP daemon on a free loopback port, with a spool, logs,
//! configuration and two maildirs of its own in a scratch directory, and our option file
//! (`options`) as its `bmi_config_file`. The RCPT ACL sets `control = bmi_run`, so every message
//! goes through the library, with the recipient's opt-in values (`bmi_optin`) looked up in the
//! file `optin` (`address: value:value`, empty unless a test writes it with `set_optin`); the
//! routers then act on each recipient's verdict, as docs/exim.md tells an administrator to:
//! - `bmi_dont_deliver`: the verdict is NULL (do not deliver): `:blackhole:`;
//! - `bmi_milter_reject`: the verdict is a destination whose Sieve rejects the message (an
//!   unguarded `ereject`): Exim cannot run Sieve, so it is not delivered either (`:blackhole:`);
//! - `bmi_deliver_alternate`: any other destination: delivered to the maildir `alternate`, with
//!   the destination (our Sieve verdict) in the header `X-BMI-Alt-Location`, base64-encoded
//!   because it spans several CRLF-ended lines;
//! - `bmi_deliver_default`: delivered normally, to the maildir `default`.
//!
//! Each delivered file has Exim's `Envelope-to:` field, so a test knows whose copy it is. The
//! daemon (with everything it forked) is stopped when the `Exim` is dropped, whatever the test's
//! outcome; the scratch directory is kept only when the test failed or EXIM_KEEP is set.
//!
//! Exim runs in the mount namespace of a `daemons::Resolver` (the including test file has
//! `mod daemons`): its /etc/resolv.conf names a dnsmasq on loopback, so that the reverse lookup
//! Exim makes of every client address it is told with the PROXY protocol stays on this machine.
//!
//! Exim runs every BMI call as its compiled-in user `mail`: the scratch directory is made that
//! user's. Running it needs root (`-C` with a configuration of our own, and the user switch), as
//! CI does. BMI_LIBRARY names another library to link in the place of ours (for developing these
//! tests against a stand-in); by default it is the cdylib cargo built next to the test binary.

#![allow(dead_code)] // Each test uses a different part.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Stateless helpers, so a test that also includes daemons.rs or milters.rs (each with its own
// copy) loses nothing by the second copy.
#[allow(clippy::duplicate_mod)]
#[path = "built.rs"]
mod built;
#[allow(clippy::duplicate_mod)]
#[path = "process.rs"]
mod process;
#[allow(clippy::duplicate_mod)]
#[path = "tempdir.rs"]
mod tempdir;
use super::daemons::Resolver;
pub use process::free_port;
use process::Group;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Exim's compiled-in user (scripts/exim-build.sh): every BMI call runs as this user.
pub const EXIM_USER: &str = "mail";

/// How long Exim may take to start listening, and a message to be received and delivered (the
/// daemon Milters behind it, spamd above all, take seconds per message).
const START_WITHIN: Duration = Duration::from_secs(20);
pub const DELIVERED_WITHIN: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The binary.

/// The library Exim is linked with: BMI_LIBRARY, or the cdylib cargo built with the test.
fn library() -> PathBuf {
    std::env::var_os("BMI_LIBRARY")
        .map(PathBuf::from)
        .unwrap_or_else(built::library)
}

/// The Exim binary, built by scripts/exim-build.sh once (the script keeps it under build/exim/
/// and only points its libbmiclient_single.so at `library()` when nothing else changed).
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(MANIFEST).join("scripts/exim-build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(library())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}); it needs the packages dpkg-dev libpcre2-dev libdb-dev and deb-src \
             sources (.ci/run sets them up):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Path::new(MANIFEST).join("build/exim/bin/exim")
    })
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// Where a copy was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// `bmi_deliver_default`: the verdict says deliver normally.
    Default,
    /// `bmi_deliver_alternate`: the verdict is a destination string.
    Alternate,
}

/// One delivered copy.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub folder: Folder,
    /// The recipient, from Exim's `Envelope-to:` field.
    pub recipient: String,
    /// The file as Exim wrote it (LF line ends), `X-BMI-Alt-Location` included.
    pub message: Vec<u8>,
    /// `$bmi_alt_location` of this recipient, decoded (alternate deliveries only).
    pub alt_location: Option<Vec<u8>>,
}

impl Delivery {
    /// The message without the fields Exim added at delivery and the alternate location: what
    /// Exim received (with its own `Received:`), for applying the verdict to.
    pub fn received(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut skipping = false;
        let mut in_header = true;
        for line in self.message.split_inclusive(|&b| b == b'\n') {
            if in_header {
                if line == b"\n" {
                    in_header = false;
                } else if line[0] == b' ' || line[0] == b'\t' {
                    if skipping {
                        continue;
                    }
                } else {
                    let name = line.split(|&b| b == b':').next().unwrap_or_default();
                    skipping = [b"X-BMI-Alt-Location".as_slice(), b"Envelope-to"]
                        .iter()
                        .any(|n| name.eq_ignore_ascii_case(n));
                    if skipping {
                        continue;
                    }
                }
            }
            out.extend_from_slice(line);
        }
        out
    }
}

/// A running Exim daemon with its own directory; stopped on drop.
pub struct Exim {
    group: Group,
    pub port: u16,
    dir: PathBuf,
}

impl Exim {
    /// Starts Exim with `options` (the library's option file) as its bmi_config_file, resolving
    /// names through `dns` only.
    pub fn start(dns: &Resolver, options: &str) -> Exim {
        let bin = binary();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "the Exim tests run as root (as CI does): Exim is started with a configuration of \
             their own (-C) and switches to its user {EXIM_USER}"
        );
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = scratch_dir();
            std::fs::write(dir.join("spamfilter.opt"), options)
                .unwrap_or_else(|e| panic!("writing the option file in {}: {e}", dir.display()));
            std::fs::write(dir.join("optin"), "")
                .unwrap_or_else(|e| panic!("writing the optin file in {}: {e}", dir.display()));
            chown_tree(&dir, EXIM_USER);
            // Root's, not Exim's user's: Exim refuses a configuration its user could change.
            std::fs::write(dir.join("configure"), configuration(bin, &dir))
                .unwrap_or_else(|e| panic!("writing the configuration in {}: {e}", dir.display()));
            match Exim::spawn(dns, bin, port, dir) {
                Ok(exim) => return exim,
                Err(e) => last = e,
            }
        }
        panic!("Exim could not be started: {last}")
    }

    fn spawn(dns: &Resolver, bin: &Path, port: u16, dir: PathBuf) -> Result<Exim, String> {
        let stderr = std::fs::File::create(dir.join("stderr"))
            .map_err(|e| format!("creating {}/stderr: {e}", dir.display()))?;
        let program = bin
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", bin.display()))?;
        // unshare and sh exec, so the process group's leader (its pid) is Exim's daemon.
        let mut cmd = dns.command(program);
        cmd.arg("-C")
            .arg(dir.join("configure"))
            .args(["-bdf", "-oX", &port.to_string()])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&dir);
        let group = Group::spawn(cmd, Stdio::null(), Stdio::null(), stderr.into())
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let exim = Exim { group, port, dir };
        exim.group
            .wait_listening_or_log("exim", port, START_WITHIN, || exim.logs())?;
        Ok(exim)
    }

    /// The scratch directory (spool, log, maildirs, configure, spamfilter.opt).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the opt-in file (lines `address: value:value`) that the RCPT ACL looks each
    /// recipient up in for `bmi_optin`.
    pub fn set_optin(&self, lines: &str) {
        let path = self.dir.join("optin");
        std::fs::write(&path, lines).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Exim's main log so far.
    pub fn mainlog(&self) -> String {
        read_text(&self.dir.join("log/mainlog"))
    }

    /// Exim's panic log so far (where it writes `bmi error [loc L type T]`).
    pub fn paniclog(&self) -> String {
        read_text(&self.dir.join("log/paniclog"))
    }

    /// Every log, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- mainlog\n{}--- paniclog\n{}--- rejectlog\n{}--- stderr\n{}",
            self.mainlog(),
            self.paniclog(),
            read_text(&self.dir.join("log/rejectlog")),
            read_text(&self.dir.join("stderr"))
        )
    }

    /// Sends one message over SMTP from the client address `client` (an IPv4 address, told to
    /// Exim with the PROXY protocol: Exim hands it to bmiProcessConnection) and returns the id
    /// Exim gave it. `message` may have LF or CRLF line ends; it is sent with CRLF and
    /// dot-stuffed. Every reply must be positive.
    pub fn send(&self, client: &str, sender: &str, recipients: &[&str], message: &[u8]) -> String {
        let mut smtp =
            Smtp::connect(self.port, client).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let id = smtp
            .transaction(sender, recipients, message)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let _ = smtp.command("QUIT");
        id
    }

    /// Sends several messages from 127.0.0.1 in one SMTP session (so one Exim process receives
    /// them all, calling bmiInitSystem for each) and returns their ids.
    pub fn send_in_one_session(&self, messages: &[(&str, &[&str], &[u8])]) -> Vec<String> {
        let mut smtp = Smtp::connect(self.port, "127.0.0.1")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let ids = messages
            .iter()
            .map(|(sender, recipients, message)| {
                smtp.transaction(sender, recipients, message)
                    .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
            })
            .collect();
        let _ = smtp.command("QUIT");
        ids
    }

    /// Waits until Exim has finished delivering message `id` (its `Completed` line) and
    /// returns the main log lines about it.
    pub fn wait_completed(&self, id: &str) -> Vec<String> {
        let start = Instant::now();
        let wanted = format!("{id} Completed");
        loop {
            let log = self.mainlog();
            if log.lines().any(|l| l.contains(&wanted)) {
                return log
                    .lines()
                    .filter(|l| l.contains(id))
                    .map(str::to_string)
                    .collect();
            }
            assert!(
                start.elapsed() < DELIVERED_WITHIN,
                "message {id} not completed within {} s\n{}",
                DELIVERED_WITHIN.as_secs(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a message from 127.0.0.1 and waits until it is delivered; returns its id and the
    /// copies delivered to the maildirs that carry `marker` (a string in the message).
    pub fn deliver(
        &self,
        sender: &str,
        recipients: &[&str],
        message: &[u8],
        marker: &str,
    ) -> (String, Vec<Delivery>) {
        self.deliver_from("127.0.0.1", sender, recipients, message, marker)
    }

    /// `deliver` from the client address `client`.
    pub fn deliver_from(
        &self,
        client: &str,
        sender: &str,
        recipients: &[&str],
        message: &[u8],
        marker: &str,
    ) -> (String, Vec<Delivery>) {
        let id = self.send(client, sender, recipients, message);
        self.wait_completed(&id);
        let copies = self
            .deliveries()
            .into_iter()
            .filter(|d| contains(&d.message, marker.as_bytes()))
            .collect();
        (id, copies)
    }

    /// Every copy in the two maildirs.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let mut all = Vec::new();
        for (folder, name) in [
            (Folder::Default, "default"),
            (Folder::Alternate, "alternate"),
        ] {
            let new = self.dir.join("mail").join(name).join("new");
            let Ok(entries) = std::fs::read_dir(&new) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                let message = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                all.push(Delivery {
                    folder,
                    recipient: field(&message, "Envelope-to")
                        .map(|v| String::from_utf8_lossy(&v).trim().to_string())
                        .unwrap_or_default(),
                    alt_location: field(&message, "X-BMI-Alt-Location")
                        .map(|v| base64_decode(&v).unwrap_or_else(|e| panic!("{e}: {v:?}"))),
                    message,
                });
            }
        }
        all
    }

    /// Whether the main log says `recipient` of message `id` went to `:blackhole:` by `router`.
    pub fn blackholed(&self, id: &str, recipient: &str, router: &str) -> bool {
        self.mainlog().lines().any(|l| {
            l.contains(id)
                && l.contains(&format!("=> :blackhole: <{recipient}>"))
                && l.contains(&format!("R={router}"))
        })
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        // SIGTERM to the daemon and whatever it forked (receiving and delivering processes stay
        // in its process group), SIGKILL to what is left after a second.
        self.group.stop(Duration::from_secs(1));
        if !std::thread::panicking() && std::env::var_os("EXIM_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("exim: kept {}", self.dir.display());
        }
    }
}

/// Exim's configuration: everything under `dir`, no DNS, no ident, the environment purged.
fn configuration(bin: &Path, dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Written by tests/support/exim.rs; docs/exim.md explains each part.
exim_path = {bin}
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
primary_hostname = mta.example.org
qualify_domain = example.org
keep_environment =
host_lookup =
rfc1413_hosts =
deliver_drop_privilege = true
bmi_config_file = {d}/spamfilter.opt
domainlist local_domains = example.org : example.net
acl_smtp_rcpt = check_rcpt
# The tests' SMTP client names the client address it stands for (the PROXY protocol).
hosts_proxy = 127.0.0.1

begin acl

check_rcpt:
  accept domains = +local_domains
         bmi_optin = ${{lookup{{$local_part@$domain}}lsearch{{{d}/optin}}}}
         control = bmi_run

begin routers

bmi_dont_deliver:
  driver = redirect
  bmi_dont_deliver
  data = :blackhole:

bmi_milter_reject:
  driver = redirect
  bmi_deliver_alternate
  condition = ${{if match{{$bmi_alt_location}}{{\N(?m)^ereject \N}}}}
  data = :blackhole:

bmi_deliver_alternate:
  driver = accept
  bmi_deliver_alternate
  headers_add = X-BMI-Alt-Location: ${{base64:$bmi_alt_location}}
  transport = alternate

bmi_deliver_default:
  driver = accept
  bmi_deliver_default
  transport = default

begin transports

default:
  driver = appendfile
  directory = {d}/mail/default
  maildir_format
  envelope_to_add
  user = {EXIM_USER}

alternate:
  driver = appendfile
  directory = {d}/mail/alternate
  maildir_format
  envelope_to_add
  user = {EXIM_USER}
"#,
        bin = bin.display()
    )
}

/// A fresh directory for one Exim under the system temp dir.
fn scratch_dir() -> PathBuf {
    let dir = tempdir::fresh_dir(&std::env::temp_dir(), "milter-exim");
    for sub in ["spool", "log", "mail"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    }
    dir
}

/// Gives `path` and everything under it to the system user `user`.
fn chown_tree(path: &Path, user: &str) {
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running chown: {e}"));
    assert!(
        out.status.success(),
        "chown -R {user}: {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The unfolded value of the first header field `name` of `message` (LF line ends).
pub fn field(message: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut value: Option<Vec<u8>> = None;
    for line in message.split(|&b| b == b'\n') {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(v) = value.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            if line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
                value = Some(line[colon + 1..].trim_ascii().to_vec());
            }
        }
    }
    value
}

/// Standard base64 (RFC 4648), as Exim's `${base64:..}` writes it; blanks ignored.
pub fn base64_decode(text: &[u8]) -> Result<Vec<u8>, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text.iter().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("{:?} is not a base64 character", c as char))?;
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// A small SMTP client.

struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects, tells Exim the client address `client` in a PROXY protocol (v1) header, and
    /// says EHLO.
    fn connect(port: u16, client: &str) -> Result<Smtp, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connecting to Exim on 127.0.0.1:{port}: {e}"))?;
        let local = stream
            .local_addr()
            .map_err(|e| format!("the socket's address: {e}"))?;
        stream
            .write_all(
                format!("PROXY TCP4 {client} 127.0.0.1 {} {port}\r\n", local.port()).as_bytes(),
            )
            .map_err(|e| format!("sending the PROXY header: {e}"))?;
        stream
            .set_read_timeout(Some(DELIVERED_WITHIN))
            .map_err(|e| format!("setting a read timeout: {e}"))?;
        let writer = stream
            .try_clone()
            .map_err(|e| format!("cloning the socket: {e}"))?;
        let mut smtp = Smtp {
            reader: BufReader::new(stream),
            writer,
        };
        smtp.expect("banner", 220)?;
        smtp.command("EHLO client.example.net")?;
        Ok(smtp)
    }

    /// MAIL, RCPT for each recipient, DATA; the id from Exim's `250 OK id=...`.
    fn transaction(
        &mut self,
        sender: &str,
        recipients: &[&str],
        message: &[u8],
    ) -> Result<String, String> {
        self.command(&format!("MAIL FROM:<{sender}>"))?;
        for r in recipients {
            self.command(&format!("RCPT TO:<{r}>"))?;
        }
        self.send_line("DATA")?;
        self.expect("DATA", 354)?;
        self.writer
            .write_all(&dot_stuffed(message))
            .map_err(|e| format!("sending the message: {e}"))?;
        let reply = self.expect("end of data", 250)?;
        reply
            .split("id=")
            .nth(1)
            .map(|id| id.trim().to_string())
            .ok_or_else(|| format!("no message id in Exim's reply {reply:?}"))
    }

    fn command(&mut self, line: &str) -> Result<String, String> {
        self.send_line(line)?;
        self.expect(line, 250)
    }

    fn send_line(&mut self, line: &str) -> Result<(), String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("sending {line:?}: {e}"))
    }

    /// Reads one (possibly multi-line) reply; an error unless its code is `code`.
    fn expect(&mut self, after: &str, code: u16) -> Result<String, String> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(|e| format!("reading the reply to {after:?}: {e}"))?;
            if line.is_empty() {
                return Err(format!(
                    "Exim closed the connection after {after:?}: {reply}"
                ));
            }
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        if reply.starts_with(&code.to_string()) {
            Ok(reply)
        } else {
            Err(format!(
                "Exim answered {after:?} with {reply:?}, not {code}"
            ))
        }
    }
}

/// `message` with CRLF line ends, leading dots doubled, a final line end, and the end-of-data
/// line.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let text = message.strip_suffix(b"\n").unwrap_or(message);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
