//! What tests/sieve.rs needs to judge a verdict without trusting src/verdict.rs:
//! - Pigeonhole (Debian package dovecot-sieve): `sievec` compiles a scriptlet, `sieve-test -e`
//!   applies it to a message and stores the result in a maildir, run as an unprivileged user;
//! - the project's own small Sieve parser, for what Pigeonhole cannot show: the one-argument
//!   `addheader` of the legacy dialect, `ereject`, and the exact bytes behind `${hex:..}`;
//! - the reference model: the header that sendmail makes of the original header and the Milter's
//!   edits, placed where Sieve can put fields (docs/verdicts.md), and how a value is written.

#![allow(dead_code)]

use milter_spamfilter::verdict::{Edit, Header, Outcome};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[allow(clippy::duplicate_mod)]
#[path = "tempdir.rs"]
mod tempdir;

// ---------------------------------------------------------------------------------------------
// Pigeonhole.

/// The Pigeonhole settings of every run: a 5000-byte value must fit (the default limit of an
/// added value is 2048 bytes), and a verdict may redirect to more than the default 4 addresses.
const DOVECOT_CONF: &str = "plugin {\n  sieve_editheader_max_header_size = 1M\n  \
                            sieve_max_redirects = 64\n  sieve_max_actions = 256\n}\n";

/// The folder that `fileinto` stores quarantined mail into in these tests.
pub const QUARANTINE_FOLDER: &str = "Quarantine";

/// Who runs sievec and sieve-test: sieve-test refuses to run as root.
#[derive(Debug, Clone)]
enum RunAs {
    Me,
    User { uid: u32, gid: u32 },
}

#[derive(Debug)]
pub struct Pigeonhole {
    sievec: PathBuf,
    sieve_test: PathBuf,
    setpriv: Option<PathBuf>,
    run_as: RunAs,
}

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn run_text(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The unprivileged user: nobody, or a system user made for the tests when there is none.
fn unprivileged_user() -> (u32, u32) {
    let ids = |user: &str| -> Option<(u32, u32)> {
        let uid = run_text(Command::new("id").args(["-u", user]))?
            .parse()
            .ok()?;
        let gid = run_text(Command::new("id").args(["-g", user]))?
            .parse()
            .ok()?;
        Some((uid, gid))
    };
    if let Some(ids) = ids("nobody") {
        return ids;
    }
    const USER: &str = "milter-sieve-test";
    if ids(USER).is_none() {
        let status = Command::new("useradd")
            .args(["-r", "-M", "-s", "/usr/sbin/nologin", USER])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "no user nobody, and useradd -r {USER} failed: {status:?}"
        );
    }
    ids(USER).unwrap_or_else(|| panic!("user {USER} was created but `id` does not know it"))
}

/// Pigeonhole, found once. A missing program fails the test, never skips it.
pub fn pigeonhole() -> &'static Pigeonhole {
    static P: OnceLock<Pigeonhole> = OnceLock::new();
    P.get_or_init(|| {
        let missing = |p: &str| -> PathBuf {
            find_program(p).unwrap_or_else(|| {
                panic!(
                    "{p} is not installed: the Sieve checks need Pigeonhole, \
                     apt-get install dovecot-sieve"
                )
            })
        };
        let sievec = missing("sievec");
        let sieve_test = missing("sieve-test");
        let euid = run_text(Command::new("id").arg("-u")).unwrap_or_default();
        let (setpriv, run_as) = if euid == "0" {
            let setpriv = find_program("setpriv").unwrap_or_else(|| {
                panic!("setpriv is not installed (apt-get install util-linux): needed to run sieve-test as an unprivileged user")
            });
            let (uid, gid) = unprivileged_user();
            (Some(setpriv), RunAs::User { uid, gid })
        } else {
            (None, RunAs::Me)
        };
        Pigeonhole {
            sievec,
            sieve_test,
            setpriv,
            run_as,
        }
    })
}

/// One message as Pigeonhole stored it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// "INBOX" or the folder's name.
    pub folder: String,
    pub message: Vec<u8>,
}

/// What one application of a scriptlet did.
#[derive(Debug)]
pub struct Applied {
    /// sievec's and sieve-test's stderr, and sieve-test's stdout (the redirected copies and
    /// the reject notice go there).
    pub compile_log: String,
    pub log: String,
    pub stored: Vec<Stored>,
    /// The run's directory (script, message, maildir), kept when the test fails.
    scratch: Scratch,
}

impl Applied {
    /// The recipients of the copies sent by redirect, in order.
    pub fn redirected_to(&self) -> Vec<String> {
        self.log
            .lines()
            .filter_map(|l| l.strip_prefix("RECIPIENT: "))
            .map(str::to_string)
            .collect()
    }

    pub fn rejected(&self) -> bool {
        self.log.contains("reject action: rejected message")
    }

    pub fn discarded(&self) -> bool {
        self.log.contains("discard action")
    }

    pub fn dir(&self) -> &Path {
        &self.scratch.0
    }
}

/// A private directory for one run, removed on drop unless the test failed or SIEVE_KEEP is set
/// (for a look).
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempdir::fresh_dir(&std::env::temp_dir(), "milter-sieve"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("SIEVE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Pigeonhole {
    fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut cmd = match (&self.run_as, &self.setpriv) {
            (RunAs::User { uid, gid }, Some(setpriv)) => {
                let mut c = Command::new(setpriv);
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                c
            }
            _ => Command::new(program),
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir)
            .current_dir(dir);
        cmd
    }

    /// Compiles `script` (Pigeonhole's form: `reject`, not `ereject`) with sievec and applies it
    /// to `message` with sieve-test, for the envelope recipient `recipient`. Panics, with both
    /// logs and the script, when either fails.
    pub fn apply(&self, script: &[u8], message: &[u8], recipient: &str) -> Applied {
        self.apply_under(DOVECOT_CONF, script, message, recipient)
    }

    /// As `apply`, under Pigeonhole's default limits (a value of at most 2048 bytes, at most 4
    /// redirects, a script of at most 1 MiB): what an MTA's engine does unless told otherwise.
    pub fn apply_with_defaults(&self, script: &[u8], message: &[u8], recipient: &str) -> Applied {
        self.apply_under("plugin {\n}\n", script, message, recipient)
    }

    fn apply_under(&self, conf: &str, script: &[u8], message: &[u8], recipient: &str) -> Applied {
        let scratch = Scratch::new();
        let dir = &scratch.0;
        let write = |name: &str, data: &[u8]| {
            std::fs::write(dir.join(name), data)
                .unwrap_or_else(|e| panic!("writing {name} in {}: {e}", dir.display()))
        };
        write("verdict.sieve", script);
        write("message.eml", message);
        write("dovecot.conf", conf.as_bytes());
        let maildir = dir.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("maildir");
            std::fs::create_dir_all(maildir.join(format!(".{QUARANTINE_FOLDER}")).join(sub))
                .expect("maildir folder");
        }
        if let RunAs::User { uid, gid } = self.run_as {
            chown_tree(dir, uid, gid);
        }
        let shown = || String::from_utf8_lossy(script).replace('\r', "");

        let compiled = self
            .command(&self.sievec, dir)
            .args(["-c", "dovecot.conf", "-x", "+editheader"])
            .args(["verdict.sieve", "verdict.svbin"])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.sievec.display()));
        let compile_log = text(&compiled);
        assert!(
            compiled.status.success(),
            "sievec refused the verdict:\n{compile_log}\n--- script ---\n{}",
            shown()
        );

        let applied = self
            .command(&self.sieve_test, dir)
            .args(["-c", "dovecot.conf", "-x", "+editheader", "-e"])
            .arg("-l")
            .arg(format!("maildir:{}", maildir.display()))
            .args(["-a", recipient, "-r", recipient, "-f", "sender@example.com"])
            .args(["verdict.sieve", "message.eml"])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.sieve_test.display()));
        let log = text(&applied);
        assert!(
            applied.status.success() && log.contains("final result: success"),
            "sieve-test did not apply the verdict cleanly ({}):\n{log}\n--- script ---\n{}",
            applied.status,
            shown()
        );
        let mut stored = Vec::new();
        let mut folders = vec![("INBOX".to_string(), maildir.clone())];
        folders.push((
            QUARANTINE_FOLDER.to_string(),
            maildir.join(format!(".{QUARANTINE_FOLDER}")),
        ));
        for (folder, path) in folders {
            for sub in ["new", "cur"] {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path.join(sub))
                    .map(|rd| rd.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                files.sort();
                for f in files {
                    stored.push(Stored {
                        folder: folder.clone(),
                        message: std::fs::read(&f).expect("reading a stored message"),
                    });
                }
            }
        }
        Applied {
            compile_log,
            log,
            stored,
            scratch,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages.

/// The message whose header is `headers` (values with `\n` between folded lines, as the
/// library parses them), with CRLF line ends and a one-line body.
pub fn message(headers: &[Header]) -> Vec<u8> {
    let mut m = Vec::new();
    for h in headers {
        m.extend_from_slice(&h.name);
        m.push(b':');
        for &b in &h.value {
            if b == b'\n' {
                m.extend_from_slice(b"\r\n");
            } else {
                m.push(b);
            }
        }
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"\r\nThe body.\r\n");
    m
}

/// The header fields of a stored message: (name, value after the colon, lines joined by `\n`).
pub fn parse_header(message: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            let last = fields
                .last_mut()
                .expect("a continuation line before any field");
            last.1.push(b'\n');
            last.1.extend_from_slice(line);
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .unwrap_or_else(|| panic!("not a header line: {:?}", String::from_utf8_lossy(line)));
        fields.push((line[..colon].to_vec(), line[colon + 1..].to_vec()));
    }
    fields
}

fn base64(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// One RFC 2047 encoded-word in UTF-8 or US-ASCII at the start of `s`: (decoded, length).
fn encoded_word(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let rest = s.strip_prefix(b"=?")?;
    let q1 = rest.iter().position(|&b| b == b'?')?;
    let charset = &rest[..q1];
    let charset = charset.split(|&b| b == b'*').next().unwrap_or(charset);
    let latin1 =
        charset.eq_ignore_ascii_case(b"iso-8859-1") || charset.eq_ignore_ascii_case(b"latin1");
    if !latin1
        && !charset.eq_ignore_ascii_case(b"utf-8")
        && !charset.eq_ignore_ascii_case(b"us-ascii")
    {
        return None;
    }
    let enc = *rest.get(q1 + 1)?;
    if rest.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let body_start = q1 + 3;
    let end = rest[body_start..].windows(2).position(|w| w == b"?=")? + body_start;
    let body = &rest[body_start..end];
    if body.iter().any(|&b| b <= b' ' || b >= 0x7f || b == b'?') {
        return None;
    }
    let decoded = match enc {
        b'B' | b'b' => base64(body)?,
        b'Q' | b'q' => {
            let mut out = Vec::new();
            let mut i = 0;
            while i < body.len() {
                match body[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let hi = hex_digit(*body.get(i + 1)?)?;
                        let lo = hex_digit(*body.get(i + 2)?)?;
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    let decoded = if latin1 {
        decoded
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into_bytes()
    } else {
        decoded
    };
    Some((decoded, 2 + end + 2))
}

/// RFC 2047: encoded-words decoded, the white space between two of them dropped.
pub fn decode_2047(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    let mut after_word: Option<usize> = None; // out's length right after the last encoded-word
    while i < v.len() {
        if let Some((decoded, len)) = encoded_word(&v[i..]) {
            if let Some(at) = after_word {
                if out[at..]
                    .iter()
                    .all(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                {
                    out.truncate(at);
                }
            }
            out.extend_from_slice(&decoded);
            after_word = Some(out.len());
            i += len;
            continue;
        }
        if !matches!(v[i], b' ' | b'\t' | b'\r' | b'\n') {
            after_word = None;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// A value as a reader sees it, for comparing what Pigeonhole stored with what was meant:
/// encoded-words decoded, unfolded, every run of white space or control characters one space,
/// trimmed, and any run of bytes that are not UTF-8 (or U+FFFD) one U+FFFD.
pub fn readable(v: &[u8]) -> String {
    let text = String::from_utf8_lossy(&decode_2047(v)).into_owned();
    let mut out = String::new();
    let mut space = false;
    for c in text.chars() {
        if c.is_control() || c == ' ' {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        if c == '\u{FFFD}' && out.ends_with('\u{FFFD}') {
            continue;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The reference model.

/// A field name Sieve accepts.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b > b' ' && b < 0x7f && b != b':')
}

/// How a Milter's value is written into `addheader` (docs/verdicts.md, "Values"), written here
/// independently of src/verdict.rs. `text`: the RFC 5293 dialect, where encoded-words in
/// UTF-8, US-ASCII or ISO-8859-1 are decoded first.
pub fn written_value(raw: &[u8], leadspc: bool, text: bool) -> Vec<u8> {
    let raw = match raw {
        [b' ', rest @ ..] if leadspc => rest,
        _ => raw,
    };
    let decoded = decode_2047(raw);
    let raw = if text { &decoded[..] } else { raw };
    // Characters first: NUL goes, control characters but TAB and line breaks are spaces.
    let chars: Vec<u8> = raw
        .iter()
        .filter(|&&b| b != 0)
        .map(|&b| {
            if (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f {
                b' '
            } else {
                b
            }
        })
        .collect();
    // Then lines, split at every CR, LF or CRLF. Each line with text after the first is a
    // continuation (one space put before it when it has no white space of its own); blank lines
    // in between go; blank lines at the end go with the white space before them.
    let mut lines: Vec<Vec<u8>> = vec![Vec::new()];
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            b'\r' | b'\n' => {
                if chars[i] == b'\r' && chars.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                lines.push(Vec::new());
            }
            b => lines.last_mut().expect("a line").push(b),
        }
        i += 1;
    }
    let blank = |l: &[u8]| l.iter().all(|&b| b == b' ' || b == b'\t');
    let mut out: Vec<u8> = lines[0].clone();
    for line in lines.iter().skip(1).filter(|l| !blank(l)) {
        out.extend_from_slice(b"\r\n");
        if line[0] != b' ' && line[0] != b'\t' {
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    // Trailing white space goes (with the line breaks at the end, if any).
    while out.last().is_some_and(|&b| b == b' ' || b == b'\t') {
        out.pop();
    }
    // What the engine must encode goes unfolded.
    let encoded = out.iter().any(|&b| b >= 0x80) || out.windows(2).any(|w| w == b"=?");
    if text && encoded {
        let mut flat = Vec::with_capacity(out.len());
        for piece in out.split(|&b| b == b'\n') {
            flat.extend_from_slice(piece.strip_suffix(b"\r").unwrap_or(piece));
        }
        out = flat;
    }
    out
}

/// Where a field of the expected header came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The message's own field, unchanged.
    Original,
    /// Written by the verdict: a Milter's value (raw, as it came) or the quarantine reason.
    Added,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: Vec<u8>,
    /// The original value, or the Milter's raw value for an added field.
    pub value: Vec<u8>,
    pub source: Source,
}

/// The header the verdict must produce: sendmail's result of the Milter's edits on the original
/// header, with the fields the verdict writes placed where Sieve can put them:
/// - INSHEADER before the last field of the moment: at the top, in sendmail's order;
/// - everything else written (ADDHEADER, INSHEADER at or past the end, CHGHEADER's new values,
///   a CHGHEADER that finds no field): at the end, in sendmail's order;
/// - an original Received or Auto-Submitted field is never changed (Sieve may not delete it);
/// - the quarantine header, when the reason is not empty, on top of everything (legacy: at the
///   very end); in the legacy dialect every written field is at the end, the top ones first.
pub fn expected_header(o: &Outcome, legacy: bool) -> Expected {
    #[derive(Clone, Copy, PartialEq)]
    enum Place {
        Original { changed: bool },
        Top,
        End,
    }
    struct F {
        name: Vec<u8>,
        value: Option<Vec<u8>>, // None: removed (still counted by CHGHEADER)
        place: Place,
    }
    let mut list: Vec<F> = o
        .headers
        .iter()
        .map(|h| F {
            name: h.name.clone(),
            value: Some(h.value.clone()),
            place: Place::Original { changed: false },
        })
        .collect();
    for e in &o.edits {
        match e {
            Edit::AddHeader { name, value } if valid_name(name) => list.push(F {
                name: name.clone(),
                value: Some(value.clone()),
                place: Place::End,
            }),
            Edit::InsHeader { index, name, value } if valid_name(name) => {
                let at = (*index as usize).min(list.len());
                let place = if at < list.len() {
                    Place::Top
                } else {
                    Place::End
                };
                list.insert(
                    at,
                    F {
                        name: name.clone(),
                        value: Some(value.clone()),
                        place,
                    },
                );
            }
            Edit::ChgHeader { index, name, value } if valid_name(name) => {
                let mut n = (*index).max(1);
                let mut found = None;
                for (k, f) in list.iter().enumerate() {
                    if f.name.eq_ignore_ascii_case(name) {
                        n -= 1;
                        if n == 0 {
                            found = Some(k);
                            break;
                        }
                    }
                }
                match found {
                    Some(k) => {
                        let f = &mut list[k];
                        let protected = [&b"received"[..], b"auto-submitted"]
                            .iter()
                            .any(|p| f.name.eq_ignore_ascii_case(p));
                        if let Place::Original { .. } = f.place {
                            if protected {
                                continue;
                            }
                            f.place = Place::Original { changed: true };
                        }
                        f.value = (!value.is_empty()).then(|| value.clone());
                    }
                    None if !value.is_empty() => list.push(F {
                        name: name.clone(),
                        value: Some(value.clone()),
                        place: Place::End,
                    }),
                    None => {}
                }
            }
            _ => {}
        }
    }
    let field = |f: &F, source: Source| Field {
        name: f.name.clone(),
        value: f.value.clone().unwrap_or_default(),
        source,
    };
    let live = |f: &&F| f.value.is_some();
    let top: Vec<Field> = list
        .iter()
        .filter(live)
        .filter(|f| f.place == Place::Top)
        .map(|f| field(f, Source::Added))
        .collect();
    let kept: Vec<Field> = list
        .iter()
        .filter(live)
        .filter(|f| f.place == Place::Original { changed: false })
        .map(|f| field(f, Source::Original))
        .collect();
    let end: Vec<Field> = list
        .iter()
        .filter(live)
        .filter(|f| matches!(f.place, Place::End | Place::Original { changed: true }))
        .map(|f| field(f, Source::Added))
        .collect();
    let quarantine = o
        .quarantine
        .as_ref()
        .filter(|r| !written_value(r, false, !legacy).is_empty())
        .map(|r| Field {
            name: b"X-Milter-Quarantine".to_vec(),
            value: r.clone(),
            source: Source::Added,
        });
    if legacy {
        Expected {
            top: Vec::new(),
            kept,
            end: top.into_iter().chain(end).chain(quarantine).collect(),
        }
    } else {
        Expected {
            top: quarantine.into_iter().chain(top).collect(),
            kept,
            end,
        }
    }
}

/// The expected header in its three parts: what the verdict adds at the top, the original
/// fields it keeps, what it adds at the end.
#[derive(Debug, Clone)]
pub struct Expected {
    pub top: Vec<Field>,
    pub kept: Vec<Field>,
    pub end: Vec<Field>,
}

impl Expected {
    pub fn all(&self) -> Vec<Field> {
        self.top
            .iter()
            .chain(&self.kept)
            .chain(&self.end)
            .cloned()
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The project's own Sieve parser (RFC 5228 §8 grammar, the part verdicts use).

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Tag(String),
    Number(u64),
    /// A quoted string, unescaped (encoded-character not applied yet).
    Str(Vec<u8>),
    Punct(u8),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn lex(s: &[u8]) -> Result<Vec<Token>, String> {
    let mut toks = Vec::new();
    let mut i = 0;
    let err = |i: usize, what: &str| Err(format!("at byte {i}: {what}"));
    while i < s.len() {
        let c = s[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'\r' => {
                if s.get(i + 1) != Some(&b'\n') {
                    return err(i, "a CR without LF");
                }
                i += 2;
            }
            b'\n' => return err(i, "a line end without CR (RFC 5228 has CRLF)"),
            b'#' => {
                while i < s.len() && s[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                let mut v = Vec::new();
                loop {
                    match s.get(i) {
                        None => return err(start, "a string that does not end"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match s.get(i + 1) {
                            Some(&e @ (b'"' | b'\\')) => {
                                v.push(e);
                                i += 2;
                            }
                            _ => return err(i, "a backslash before neither \" nor \\"),
                        },
                        Some(b'\r') => {
                            if s.get(i + 1) != Some(&b'\n') {
                                return err(i, "a CR without LF in a string");
                            }
                            v.extend_from_slice(b"\r\n");
                            i += 2;
                        }
                        Some(b'\n') => return err(i, "a LF without CR in a string"),
                        Some(0) => return err(i, "a NUL in a string"),
                        Some(&b) => {
                            v.push(b);
                            i += 1;
                        }
                    }
                }
                if std::str::from_utf8(&v).is_err() {
                    return err(start, "a string that is not UTF-8");
                }
                toks.push(Token {
                    tok: Tok::Str(v),
                    start,
                    end: i,
                });
            }
            b':' | b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                let tag = c == b':';
                if tag {
                    i += 1;
                }
                let word_start = i;
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
                    i += 1;
                }
                if i == word_start {
                    return err(start, "a colon without a tag name");
                }
                let word = String::from_utf8_lossy(&s[word_start..i]).into_owned();
                if word == "text" && !tag && s.get(i) == Some(&b':') {
                    return err(start, "a multi-line string (verdicts never write one)");
                }
                toks.push(Token {
                    tok: if tag {
                        Tok::Tag(word)
                    } else {
                        Tok::Ident(word)
                    },
                    start,
                    end: i,
                });
            }
            b'0'..=b'9' => {
                let start = i;
                let mut n: u64 = 0;
                while i < s.len() && s[i].is_ascii_digit() {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(s[i] - b'0')))
                        .ok_or("a number too large")?;
                    i += 1;
                }
                toks.push(Token {
                    tok: Tok::Number(n),
                    start,
                    end: i,
                });
            }
            b';' | b'{' | b'}' | b'[' | b']' | b',' | b'(' | b')' => {
                toks.push(Token {
                    tok: Tok::Punct(c),
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            _ => return err(i, &format!("an unexpected byte 0x{c:02x}")),
        }
    }
    Ok(toks)
}

/// One argument of a command or test.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Tag(String),
    Number(u64),
    Str(Vec<u8>),
    List(Vec<Vec<u8>>),
    /// A test (the identifier after `if`).
    Test(String),
}

#[derive(Debug, Clone)]
pub struct Cmd {
    pub name: String,
    pub args: Vec<Arg>,
    pub block: Option<Vec<Cmd>>,
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|t| &t.tok)
    }

    fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .toks
            .get(self.at)
            .ok_or("unexpected end of script")?
            .tok
            .clone();
        self.at += 1;
        Ok(t)
    }

    fn commands(&mut self, in_block: bool) -> Result<Vec<Cmd>, String> {
        let mut cmds = Vec::new();
        loop {
            match self.peek() {
                None if !in_block => return Ok(cmds),
                None => return Err("a block without }".into()),
                Some(Tok::Punct(b'}')) if in_block => {
                    self.at += 1;
                    return Ok(cmds);
                }
                Some(Tok::Ident(_)) => cmds.push(self.command()?),
                Some(t) => return Err(format!("a command expected, found {t:?}")),
            }
        }
    }

    fn command(&mut self) -> Result<Cmd, String> {
        let Tok::Ident(name) = self.next()? else {
            unreachable!()
        };
        let mut args = Vec::new();
        loop {
            match self.next()? {
                Tok::Punct(b';') => {
                    return Ok(Cmd {
                        name,
                        args,
                        block: None,
                    })
                }
                Tok::Punct(b'{') => {
                    let block = self.commands(true)?;
                    return Ok(Cmd {
                        name,
                        args,
                        block: Some(block),
                    });
                }
                Tok::Punct(b'[') => {
                    let mut list = Vec::new();
                    loop {
                        match self.next()? {
                            Tok::Str(s) => list.push(s),
                            t => return Err(format!("a string expected in a list, found {t:?}")),
                        }
                        match self.next()? {
                            Tok::Punct(b',') => continue,
                            Tok::Punct(b']') => break,
                            t => return Err(format!(", or ] expected, found {t:?}")),
                        }
                    }
                    args.push(Arg::List(list));
                }
                Tok::Tag(t) => args.push(Arg::Tag(t)),
                Tok::Number(n) => args.push(Arg::Number(n)),
                Tok::Str(s) => args.push(Arg::Str(s)),
                Tok::Ident(t) => args.push(Arg::Test(t)),
                t => return Err(format!("unexpected {t:?} in the arguments of {name}")),
            }
        }
    }
}

/// RFC 5228 §2.4.2.4 encoded-character: `${hex:..}` and `${unicode:..}` decoded; a malformed
/// one is left as text. Returns the string and whether any was decoded.
pub fn decode_encoded_character(s: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(s.len());
    let mut used = false;
    let mut i = 0;
    'outer: while i < s.len() {
        if s[i..].starts_with(b"${") {
            let rest = &s[i + 2..];
            let (kind, prefix) = if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"hex:") {
                ("hex", 4)
            } else if rest.len() >= 8 && rest[..8].eq_ignore_ascii_case(b"unicode:") {
                ("unicode", 8)
            } else {
                ("", 0)
            };
            let body = &rest[prefix..];
            if let (false, Some(close)) = (kind.is_empty(), body.iter().position(|&b| b == b'}')) {
                let items: Vec<&[u8]> = body[..close]
                    .split(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                    .filter(|p| !p.is_empty())
                    .collect();
                let mut bytes = Vec::new();
                let ok = !items.is_empty()
                    && items.iter().all(|item| {
                        let Ok(t) = std::str::from_utf8(item) else {
                            return false;
                        };
                        match kind {
                            "hex" if t.len() <= 2 => {
                                u8::from_str_radix(t, 16).map(|b| bytes.push(b)).is_ok()
                            }
                            "unicode" if t.len() <= 6 => u32::from_str_radix(t, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .map(|c| bytes.extend_from_slice(c.to_string().as_bytes()))
                                .is_some(),
                            _ => false,
                        }
                    });
                if ok {
                    out.extend_from_slice(&bytes);
                    used = true;
                    i += 2 + prefix + close + 1;
                    continue 'outer;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    (out, used)
}

/// One action of a verdict, as this parser reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `addheader [:last] name value`, or the legacy `addheader "name: value"` (last: true).
    Add {
        last: bool,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        index: Option<u64>,
        /// ":is" or ":matches" with the value (always with `:comparator "i;octet"`), or None.
        by: Option<(String, Vec<u8>)>,
        name: Vec<u8>,
    },
    Ereject(Vec<u8>),
    /// `if envelope :is "to" address { ereject reply; stop; }`
    RejectRecipient {
        address: Vec<u8>,
        reply: Vec<u8>,
    },
    /// `if envelope :is "to" address { stop; }`: a recipient deferred at RCPT.
    HoldRecipient {
        address: Vec<u8>,
    },
    /// `if envelope :is "to" address { discard; stop; }`: a recipient the Milter deleted
    /// (DELRCPT).
    DeleteRecipient {
        address: Vec<u8>,
    },
    Discard,
    Fileinto(Vec<u8>),
    Redirect(Vec<u8>),
}

/// A header value that a Sieve engine accepts in addheader: no NUL, no control character but
/// TAB, every line break a CRLF followed by white space, and not ending in one.
pub fn check_value(v: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\r' => {
                if v.get(i + 1) != Some(&b'\n') || !matches!(v.get(i + 2), Some(b' ' | b'\t')) {
                    return Err(format!("a line break that is not a fold in {v:?}"));
                }
                i += 2;
            }
            b'\n' => return Err(format!("a bare LF in {v:?}")),
            b'\t' => i += 1,
            b if b < 0x20 || b == 0x7f => {
                return Err(format!("control character 0x{b:02x} in {v:?}"))
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Parses a verdict and checks it as RFC 5228 and the extensions it uses have it: one `require`
/// first, naming exactly the extensions used, each once; only the commands, tags and tests a
/// verdict writes, with valid field names and values. Returns the actions in order.
pub fn parse_verdict(script: &[u8]) -> Result<Vec<Op>, String> {
    let toks = lex(script)?;
    let mut p = Parser { toks, at: 0 };
    let cmds = p.commands(false)?;
    if cmds.is_empty() {
        return Err("an empty script".into());
    }
    let (required, rest): (Vec<String>, &[Cmd]) = match cmds.split_first() {
        Some((first, rest)) if first.name == "require" => match first.args.as_slice() {
            [Arg::List(l)] => (
                l.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
                rest,
            ),
            [Arg::Str(s)] => (vec![String::from_utf8_lossy(s).into_owned()], rest),
            a => return Err(format!("require with {a:?}")),
        },
        _ => (Vec::new(), &cmds[..]),
    };
    let encoded = required.iter().any(|r| r == "encoded-character");
    let mut used: Vec<&'static str> = Vec::new();
    let mut use_ext = |e: &'static str| {
        if !used.contains(&e) {
            used.push(e);
        }
    };
    // Strings with encoded-character applied when the script requires it.
    let mut any_encoded = false;
    let mut string = |s: &[u8]| -> Vec<u8> {
        if encoded {
            let (d, u) = decode_encoded_character(s);
            any_encoded |= u;
            d
        } else {
            s.to_vec()
        }
    };
    let name_ok = |n: &[u8]| -> Result<(), String> {
        if valid_name(n) {
            Ok(())
        } else {
            Err(format!(
                "invalid field name {:?}",
                String::from_utf8_lossy(n)
            ))
        }
    };
    let mut ops = Vec::new();
    for c in rest {
        if c.name == "require" {
            return Err("a second require".into());
        }
        if c.block.is_some() && c.name != "if" {
            return Err(format!("{} with a block", c.name));
        }
        let op = match (c.name.as_str(), c.args.as_slice()) {
            ("addheader", [Arg::Str(line)]) => {
                use_ext("addheader");
                let line = string(line);
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or("legacy addheader without a colon")?;
                let name = line[..colon].to_vec();
                name_ok(&name)?;
                let value = line[colon + 1..]
                    .strip_prefix(b" ")
                    .ok_or("legacy addheader without \": \"")?
                    .to_vec();
                check_value(&value)?;
                Op::Add {
                    last: true,
                    name,
                    value,
                }
            }
            ("addheader", args) => {
                use_ext("editheader");
                let (last, args) = match args {
                    [Arg::Tag(t), rest @ ..] if t == "last" => (true, rest),
                    _ => (false, args),
                };
                let [Arg::Str(name), Arg::Str(value)] = args else {
                    return Err(format!("addheader with {args:?}"));
                };
                let (name, value) = (string(name), string(value));
                name_ok(&name)?;
                check_value(&value)?;
                Op::Add { last, name, value }
            }
            ("deleteheader", args) => {
                use_ext("editheader");
                let mut index = None;
                let mut comparator = None;
                let mut match_type = None;
                let mut strs = Vec::new();
                let mut it = args.iter();
                while let Some(a) = it.next() {
                    match a {
                        Arg::Tag(t) if t == "index" => match it.next() {
                            Some(Arg::Number(n)) if *n >= 1 => index = Some(*n),
                            x => return Err(format!(":index with {x:?}")),
                        },
                        Arg::Tag(t) if t == "comparator" => match it.next() {
                            Some(Arg::Str(s)) => comparator = Some(s.clone()),
                            x => return Err(format!(":comparator with {x:?}")),
                        },
                        Arg::Tag(t) if t == "is" || t == "matches" => match_type = Some(t.clone()),
                        Arg::Str(s) => strs.push(string(s)),
                        x => return Err(format!("deleteheader with {x:?}")),
                    }
                }
                let (name, by) = match (strs.as_slice(), match_type) {
                    ([name], None) if comparator.is_none() => (name.clone(), None),
                    ([name, value], Some(m)) => {
                        if comparator.as_deref() != Some(b"i;octet") {
                            return Err(
                                "deleteheader by value without :comparator \"i;octet\"".into()
                            );
                        }
                        (name.clone(), Some((m, value.clone())))
                    }
                    x => return Err(format!("deleteheader with strings {x:?}")),
                };
                name_ok(&name)?;
                Op::Delete { index, by, name }
            }
            ("ereject", [Arg::Str(r)]) => {
                use_ext("ereject");
                Op::Ereject(string(r))
            }
            ("discard", []) => Op::Discard,
            ("fileinto", [Arg::Str(f)]) => {
                use_ext("fileinto");
                Op::Fileinto(string(f))
            }
            ("redirect", [Arg::Tag(t), Arg::Str(a)]) if t == "copy" => {
                use_ext("copy");
                Op::Redirect(string(a))
            }
            ("if", [Arg::Test(t), Arg::Tag(is), Arg::Str(part), Arg::Str(address)])
                if t == "envelope" && is == "is" && part == b"to" =>
            {
                use_ext("envelope");
                let block = c.block.as_deref().unwrap_or_default();
                match block {
                    [Cmd {
                        name: e,
                        args: ea,
                        block: None,
                    }, Cmd {
                        name: s,
                        args: sa,
                        block: None,
                    }] if e == "ereject" && s == "stop" && sa.is_empty() => {
                        let [Arg::Str(reply)] = ea.as_slice() else {
                            return Err(format!("ereject with {ea:?}"));
                        };
                        use_ext("ereject");
                        Op::RejectRecipient {
                            address: string(address),
                            reply: string(reply),
                        }
                    }
                    [Cmd {
                        name: s,
                        args: sa,
                        block: None,
                    }] if s == "stop" && sa.is_empty() => Op::HoldRecipient {
                        address: string(address),
                    },
                    [Cmd {
                        name: d,
                        args: da,
                        block: None,
                    }, Cmd {
                        name: s,
                        args: sa,
                        block: None,
                    }] if d == "discard" && da.is_empty() && s == "stop" && sa.is_empty() => {
                        Op::DeleteRecipient {
                            address: string(address),
                        }
                    }
                    b => return Err(format!("an envelope guard around {b:?}")),
                }
            }
            (n, a) => return Err(format!("unexpected command {n} {a:?}")),
        };
        ops.push(op);
    }
    if any_encoded {
        use_ext("encoded-character");
    }
    let mut sorted_required = required.clone();
    sorted_required.sort();
    sorted_required.dedup();
    if sorted_required.len() != required.len() {
        return Err(format!("an extension required twice: {required:?}"));
    }
    let mut sorted_used: Vec<String> = used.iter().map(|s| s.to_string()).collect();
    sorted_used.sort();
    if sorted_required != sorted_used {
        return Err(format!(
            "require names {sorted_required:?} but the script uses {sorted_used:?}"
        ));
    }
    Ok(ops)
}

/// The script as Pigeonhole takes it: `ereject` (which it lacks) is `reject`, in `require` and
/// as a command; nothing inside other strings changes.
pub fn for_pigeonhole(script: &[u8]) -> Vec<u8> {
    let toks = lex(script).expect("a script that lexes");
    let mut out = Vec::with_capacity(script.len());
    let mut at = 0;
    let mut in_require = false;
    for (k, t) in toks.iter().enumerate() {
        let replace = match &t.tok {
            Tok::Ident(w) if w == "require" && k == 0 => {
                in_require = true;
                None
            }
            Tok::Punct(b';') => {
                in_require = false;
                None
            }
            Tok::Ident(w) if w == "ereject" => Some(&b"reject"[..]),
            Tok::Str(s) if in_require && s == b"ereject" => Some(&b"\"reject\""[..]),
            _ => None,
        };
        if let Some(r) = replace {
            out.extend_from_slice(&script[at..t.start]);
            out.extend_from_slice(r);
            at = t.end;
        }
    }
    out.extend_from_slice(&script[at..]);
    out
}
