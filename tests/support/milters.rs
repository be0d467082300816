//! Real Milters for the tests, on free loopback ports, stopped when dropped:
//! - `any_reply(spec)`: tests/milters/any_reply.py (pymilter on sendmail's libmilter, package
//!   python3-milter), which answers each stage as a JSON spec says and records what it received;
//!   `Server::recorded` reads that record back;
//! - `script_milter()`: tests/milters/script_milter.py (pymilter), which answers each message as
//!   the script in its CONNECT host name says;
//! - `opendkim()`: opendkim (packages opendkim, opendkim-tools) signing for example.org with
//!   selector `test` and a key generated for the test. Its resolver is pointed at 127.0.0.1 so
//!   that libunbound never sends a packet off this machine.
//!
//! A missing program is a failure that names the Debian package to install, never a skip.

#![allow(dead_code)] // Each test file uses a different part.

use milter_spamfilter::{Config, Handle};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "process.rs"]
mod process;
#[allow(clippy::duplicate_mod)]
#[path = "tempdir.rs"]
mod tempdir;
pub use process::free_port;
use process::Group;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const PYTHON: &str = "/usr/bin/python3";

/// A running Milter, stopped on drop: when it holds a pipe from us on its stdin (any_reply.py
/// --until-stdin-closes) closing that stops it at once; otherwise, or if it has not gone within
/// two seconds, SIGTERM to its whole process group, then SIGKILL if it has not gone within two
/// more. Its scratch directory is removed.
pub struct Server {
    group: Group,
    pub port: u16,
    pub name: &'static str,
    dir: PathBuf,
}

impl Server {
    /// The library's configuration for this Milter: every default, this address.
    pub fn config(&self) -> Config {
        Config::with_host_port("127.0.0.1", self.port)
    }

    /// A handle on `config()`.
    pub fn handle(&self) -> Handle {
        Handle::new(self.config())
    }

    /// The server's private directory (spec, record, keys, configuration).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server wrote to stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// The any_reply record of the connection whose JSON line contains `marker` (a plain ASCII
    /// string the test put into the envelope: client name, sender, queue id). The Milter writes
    /// it when the connection closes, which may be just after `filter` returned: waits up to
    /// ten seconds for it.
    pub fn recorded(&self, marker: &str) -> Record {
        let path = self.dir.join("record.jsonl");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                return Record::parse(line);
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: no record containing {marker:?} within 10 s; records:\n{text}\nstderr:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every record written so far, in order.
    pub fn records(&self) -> Vec<Record> {
        std::fs::read_to_string(self.dir.join("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(Record::parse)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the lifeline stops it at once; `stop` then only signals what may be left of
        // the group and reaps the leader.
        if self.group.close_stdin() {
            self.group.wait_ended(Duration::from_secs(2));
        }
        self.group.stop(Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh private directory for one server's files, under `base`.
fn scratch_dir_in(base: &Path, what: &str) -> PathBuf {
    tempdir::fresh_dir(base, &format!("milter-real-{what}"))
}

/// A fresh private directory in the system temp dir.
fn scratch_dir(what: &str) -> PathBuf {
    scratch_dir_in(&std::env::temp_dir(), what)
}

/// A fresh directory that only its owner can write to, all the way up to `/`: opendkim refuses a
/// configuration or key file in a directory others may write to, such as /tmp.
fn safe_scratch_dir(what: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let safe = |dir: &Path| {
        dir.ancestors()
            .all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o022 == 0 && m.uid() == 0))
    };
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(target_tmp);
    let candidates = [target_tmp, Path::new("/run")];
    let base = candidates.iter().find(|c| safe(c)).unwrap_or_else(|| {
        panic!(
            "opendkim needs a directory that only root can write to, up to /: none of {candidates:?}"
        )
    });
    scratch_dir_in(base, what)
}

/// Fails with the package to install when `program` is missing.
fn require(program: &str, package: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists());
    assert!(
        found,
        "{program} is not installed: install the Debian package {package} \
         (apt-get install {package})"
    );
}

/// Fails with the package to install when pymilter is missing.
fn require_pymilter() {
    let probe = Command::new(PYTHON).args(["-c", "import Milter"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "{PYTHON} cannot import Milter: install the Debian package python3-milter \
             (apt-get install python3-milter)"
        ),
    }
}

/// Starts `cmd` (which listens on `port`) and waits until it accepts connections. With
/// `lifeline` its stdin is a pipe that `Drop` closes to stop it.
fn start(
    cmd: Command,
    name: &'static str,
    port: u16,
    dir: PathBuf,
    lifeline: bool,
) -> std::result::Result<Server, String> {
    let stderr = std::fs::File::create(dir.join("stderr"))
        .map_err(|e| format!("creating {}/stderr: {e}", dir.display()))?;
    let stdin = if lifeline {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let group = Group::spawn(cmd, stdin, Stdio::null(), stderr.into())
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let server = Server {
        group,
        port,
        name,
        dir,
    };
    server
        .group
        .wait_listening_or_log(name, port, Duration::from_secs(20), || server.log())?;
    Ok(server)
}

/// Starts a server, retrying on a new port when another process took the chosen one between
/// our probe and the server's bind. `make` prepares the directory and returns the command.
fn start_retrying(
    name: &'static str,
    dir: impl Fn(&str) -> PathBuf,
    lifeline: bool,
    make: impl Fn(u16, &Path) -> Command,
) -> Server {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let dir = dir(name);
        match start(make(port, &dir), name, port, dir, lifeline) {
            Ok(s) => return s,
            Err(e) => last = e,
        }
    }
    panic!("{last}")
}

/// tests/milters/any_reply.py with `spec`, a JSON object as that script documents, without its
/// "record" key: the record goes to the server's directory and is read with `recorded`.
pub fn any_reply(spec: &str) -> Server {
    require_pymilter();
    start_retrying("any_reply", scratch_dir, true, |port, dir| {
        any_reply_command(port, dir, spec)
    })
}

/// tests/milters/script_milter.py: one pymilter process that answers each message as the script
/// in its CONNECT host name says (see that file), for any number of different conversations.
pub fn script_milter() -> Server {
    require_pymilter();
    start_retrying("script_milter", scratch_dir, true, |port, _dir| {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(Path::new(MANIFEST).join("tests/milters/script_milter.py"))
            .arg(port.to_string())
            .arg("--until-stdin-closes");
        cmd
    })
}

/// `any_reply` on a given port (another Milter in the place of one that was stopped), without
/// a retry on another port.
pub fn any_reply_at(port: u16, spec: &str) -> Server {
    require_pymilter();
    let dir = scratch_dir("any_reply");
    start(
        any_reply_command(port, &dir, spec),
        "any_reply",
        port,
        dir,
        true,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn any_reply_command(port: u16, dir: &Path, spec: &str) -> Command {
    let body = spec.trim();
    assert!(
        body.starts_with('{') && body.ends_with('}'),
        "an any_reply spec is a JSON object: {spec}"
    );
    let inner = body[1..body.len() - 1].trim();
    let record = dir.join("record.jsonl");
    let record = json_string(&record.display().to_string());
    let full = if inner.is_empty() {
        format!("{{\"record\": {record}}}")
    } else {
        format!("{{\"record\": {record}, {inner}}}")
    };
    let path = dir.join("spec.json");
    std::fs::write(&path, full).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let mut cmd = Command::new(PYTHON);
    cmd.arg(Path::new(MANIFEST).join("tests/milters/any_reply.py"))
        .arg(port.to_string())
        .arg(&path)
        .arg("--until-stdin-closes");
    cmd
}

/// opendkim signing mail From example.org (selector `test`) for clients in 127.0.0.0/8, with a
/// key made by opendkim-genkey in the server's directory.
pub fn opendkim() -> Server {
    require("opendkim", "opendkim");
    require("opendkim-genkey", "opendkim-tools");
    start_retrying("opendkim", safe_scratch_dir, false, |port, dir| {
        let out = Command::new("opendkim-genkey")
            .arg("-D")
            .arg(dir)
            .args(["-d", "example.org", "-s", "test"])
            .output()
            .expect("running opendkim-genkey");
        assert!(
            out.status.success(),
            "opendkim-genkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = dir.join("test.private");
        // opendkim refuses a key that others may read (RequireSafeKeys).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", key.display()));
        // Nameservers: libunbound ignores resolv.conf and would recurse from the root servers;
        // 127.0.0.1 keeps every query on this machine (a signer needs none anyway).
        let conf = format!(
            "Socket inet:{port}@127.0.0.1\n\
             Mode s\n\
             Domain example.org\n\
             Selector test\n\
             KeyFile {key}\n\
             InternalHosts 127.0.0.0/8\n\
             Background no\n\
             Nameservers 127.0.0.1\n\
             Syslog no\n\
             PidFile {pid}\n",
            key = key.display(),
            pid = dir.join("opendkim.pid").display()
        );
        let path = dir.join("opendkim.conf");
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let mut cmd = Command::new("opendkim");
        cmd.arg("-x").arg(&path).arg("-f");
        cmd
    })
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// What any_reply.py recorded for one connection.

/// One connection's events, in the order the Milter saw them.
#[derive(Debug, Clone)]
pub struct Record {
    pub events: Vec<Json>,
    /// The JSON line as written, for failure messages.
    pub line: String,
}

impl Record {
    fn parse(line: &str) -> Record {
        let value = Json::parse(line).unwrap_or_else(|e| panic!("bad record line ({e}): {line}"));
        Record {
            events: value.get("events").list().to_vec(),
            line: line.to_string(),
        }
    }

    /// The event names in order (`negotiate`, `connect`, ..., `close`).
    pub fn names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e.get("event").text().unwrap_or_default())
            .collect()
    }

    /// Every event called `name`.
    pub fn all(&self, name: &str) -> Vec<&Json> {
        self.events
            .iter()
            .filter(|e| e.get("event").text().as_deref() == Some(name))
            .collect()
    }

    /// The first event called `name`; fails showing the record when there is none.
    pub fn first(&self, name: &str) -> &Json {
        self.all(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {name} event in the record: {}", self.line))
    }

    /// The header fields as received: (name, value bytes).
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.all("header")
            .into_iter()
            .map(|e| {
                (
                    e.get("name").text().unwrap_or_default(),
                    e.get("value").bytes().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The macro `name` as visible at the first `event`; None when not sent (yet).
    pub fn macro_at(&self, event: &str, name: &str) -> Option<String> {
        self.first(event).get("macros").get(name).text()
    }
}

/// A parsed JSON value. Strings are kept as the code points the script wrote; `bytes()` turns
/// them back into the bytes they stand for (each code point 0-255 is one byte).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    List(Vec<Json>),
    Object(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    /// The member `key` of an object; `Null` when absent or not an object.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(members) => members
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// The items of a list; empty for anything else.
    pub fn list(&self) -> &[Json] {
        match self {
            Json::List(items) => items,
            _ => &[],
        }
    }

    pub fn text(&self) -> Option<String> {
        match self {
            Json::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A string as the bytes it records (code points 0-255, one byte each).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Json::Str(s) => Some(
                s.chars()
                    .map(|c| u8::try_from(c as u32).expect("a recorded byte is 0-255"))
                    .collect(),
            ),
            _ => None,
        }
    }

    pub fn num(&self) -> Option<i64> {
        match self {
            Json::Num(n) => Some(*n as i64),
            _ => None,
        }
    }

    /// The strings of a list of strings.
    pub fn texts(&self) -> Vec<String> {
        self.list().iter().filter_map(Json::text).collect()
    }

    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing text at offset {}", p.i));
        }
        Ok(v)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at offset {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    members.push((key, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(format!("expected ',' or '}}' at offset {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::List(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::List(items));
                        }
                        _ => return Err(format!("expected ',' or ']' at offset {}", self.i)),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
                t.parse()
                    .map(Json::Num)
                    .map_err(|e| format!("bad number {t:?}: {e}"))
            }
            _ => Err(format!("unexpected input at offset {}", self.i)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                            let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                            let n = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                            self.i += 4;
                            // The script writes ASCII only, so surrogate pairs stand for
                            // characters outside the BMP; bytes are never written that way.
                            let n = if (0xd800..0xdc00).contains(&n)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                let lo = std::str::from_utf8(&self.s[self.i + 2..self.i + 6])
                                    .map_err(|e| e.to_string())?;
                                let lo = u32::from_str_radix(lo, 16).map_err(|e| e.to_string())?;
                                self.i += 6;
                                0x10000 + ((n - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                n
                            };
                            out.push(char::from_u32(n).ok_or("bad \\u escape")?);
                        }
                        _ => return Err(format!("bad escape at offset {}", self.i)),
                    }
                }
                _ => {
                    // Raw UTF-8 passes through (the script writes ASCII, but be general).
                    let start = self.i - 1;
                    let len = match c {
                        0x00..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    let chunk = self
                        .s
                        .get(start..start + len)
                        .ok_or("truncated UTF-8 in a string")?;
                    out.push_str(std::str::from_utf8(chunk).map_err(|e| e.to_string())?);
                    self.i = start + len;
                }
            }
        }
    }
}
