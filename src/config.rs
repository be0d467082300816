//! The option file: lines of `option=value`, names case-insensitive, `!` and `#` comments.
//! Every value is checked here, once, so that the rest of the library can trust the `Config`.
//! An error names the file, the line, the option, the value and what was expected.

use crate::error::{escape, Error, Result};
use std::path::Path;
use std::time::Duration;

/// How the verdict writes header additions (see `verdict.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SieveDialect {
    /// RFC 5293 editheader: `addheader "Name" "value"` (the default).
    Rfc5293,
    /// Messaging Server 6.x's older one-argument form: `addheader "Name: value"`.
    Legacy,
}

/// Limits on what a Milter sends for one message (docs/reliability.md, "Limits"). Each is far
/// beyond what a real Milter sends (opendkim, rspamd, spamass-milter stay below a tenth of them);
/// crossing one ends the conversation with an error naming it, and nothing the Milter sent is
/// kept, so that a flood costs neither memory nor time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MilterLimits {
    /// MAX_EDITS: modifications (header edits, added and deleted recipients) per message.
    pub max_edits: usize,
    /// MAX_VERDICT_SIZE: the bytes the Milter sends for the verdict, together: header names
    /// and values, recipient addresses and their arguments, reply texts.
    pub max_verdict_size: usize,
    /// MAX_HEADER_VALUE: the bytes of one header value.
    pub max_header_value: usize,
    /// MAX_ADDED_RECIPIENTS: ADDRCPTs per message.
    pub max_added_recipients: usize,
    /// MAX_REPLY_TEXT: the bytes of one REPLYCODE text.
    pub max_reply_text: usize,
}

impl Default for MilterLimits {
    fn default() -> MilterLimits {
        MilterLimits {
            max_edits: 10_000,
            max_verdict_size: 1 << 20,
            // libmilter sends at most 65535 data bytes in a packet (MILTER_MAX_DATA_SIZE).
            max_header_value: 65_535,
            max_added_recipients: 1_000,
            // libmilter: at most 32 lines of at most 980 bytes (smfi_setmlreply).
            max_reply_text: 65_535,
        }
    }
}

/// What the Sieve engine that runs the verdict allows; the defaults are Pigeonhole's. What a
/// Milter asks beyond them is shortened or left out (and logged), so that the verdict still
/// compiles and runs and its reject, quarantine or refusals are never lost with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SieveLimits {
    /// SIEVE_MAX_HEADER_SIZE: the longest value `addheader` takes (Pigeonhole's
    /// sieve_editheader_max_header_size, 2048; a longer literal fails the compilation).
    pub max_header_size: usize,
    /// SIEVE_MAX_REDIRECTS: redirects per run (sieve_max_redirects, 4; one more fails the run,
    /// which then keeps the message: implicit keep).
    pub max_redirects: usize,
    /// SIEVE_MAX_SCRIPT_SIZE: the size of the whole verdict (sieve_max_script_size, 1M).
    pub max_script_size: usize,
}

impl Default for SieveLimits {
    fn default() -> SieveLimits {
        SieveLimits {
            max_header_size: 2048,
            max_redirects: 4,
            max_script_size: 1 << 20,
        }
    }
}

/// Where DEBUG output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(std::path::PathBuf),
    Syslog,
}

/// One option as written in the file (or its default), for the check tool to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionSource {
    /// Upper-case option name.
    pub name: &'static str,
    /// The value as understood (normalised text).
    pub value: String,
    /// The line it was set on; `None` when the default applies.
    pub line: Option<usize>,
}

/// A validated option file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The option file's path as given (for messages).
    pub path: String,
    /// HOST: Milter host name or address literal (IPv6 with or without brackets).
    pub host: String,
    /// PORT: 1..=65535.
    pub port: u16,
    /// DEBUG: 0..=3 (larger values are accepted and act as 3).
    pub debug: u8,
    /// TIMEOUT, hundredths of a second: each operation on the connection.
    pub timeout: Duration,
    /// CONNECT_TIMEOUT, hundredths of a second: TCP connect and SOCKS handshake (= TIMEOUT when unset).
    pub connect_timeout: Duration,
    /// MESSAGE_TIMEOUT, hundredths of a second: the whole Milter conversation of one message, so
    /// that a trickling Milter or endless PROGRESS cannot hold a message for ever. Default 30000 (300 s).
    pub message_timeout: Duration,
    /// SOCKS_HOST ("" = direct connection).
    pub socks_host: String,
    /// SOCKS_PORT: 1..=65535, default 1080.
    pub socks_port: u16,
    /// SOCKS_USERNAME: sent with SOCKS_PASSWORD (RFC 1929). Default: "milter".
    pub socks_username: String,
    /// SOCKS_PASSWORD ("" = no authentication offered).
    pub socks_password: String,
    /// CONTEXT_EDITS: 0 or 1, default 1.
    pub context_edits: bool,
    /// MILTER_PROTOCOL: the protocol version offered, 2, 3, 4 or 6 (default 6).
    pub milter_protocol: u32,
    /// QUARANTINE_FOLDER: the folder the verdict files quarantined mail into (default "Quarantine").
    pub quarantine_folder: String,
    /// SIEVE_DIALECT: "rfc5293" (default) or "legacy".
    pub sieve_dialect: SieveDialect,
    /// LOG_FILE: a file to append DEBUG output to; "syslog" sends it to syslog; default stderr.
    pub log_target: LogTarget,
    /// CONNECTION_REUSE: how many idle Milter connections a handle keeps for the next message
    /// (0 = off, the default; at most 256).
    pub connection_reuse: u32,
    /// MAX_EDITS, MAX_VERDICT_SIZE, MAX_HEADER_VALUE, MAX_ADDED_RECIPIENTS, MAX_REPLY_TEXT.
    pub milter_limits: MilterLimits,
    /// SIEVE_MAX_HEADER_SIZE, SIEVE_MAX_REDIRECTS, SIEVE_MAX_SCRIPT_SIZE.
    pub sieve_limits: SieveLimits,
    /// Every known option with its value as understood, in table order.
    pub sources: Vec<OptionSource>,
    /// Warnings (unknown options, duplicates), each a complete sentence with file and line.
    pub warnings: Vec<String>,
}

/// The largest option file accepted. A real one is a few hundred bytes; the cap keeps a wrong
/// path (a log file, a disk image) from being read into memory whole.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The longest timeout, in hundredths of a second: one day.
pub const MAX_TIMEOUT: i64 = 8_640_000;

/// Text quoted in messages is cut to about this many characters, so that a 1 MiB line cannot
/// flood a log.
const SHOW_MAX: usize = 60;

/// RFC 1929 carries the user name and the password each behind a one-octet length.
const RFC1929_MAX: usize = 255;

/// What an error or `sources` shows instead of a password.
const MASK: &str = "********";

/// The known options, in table order (the order of `sources` and of docs/options.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Host,
    Port,
    Debug,
    Timeout,
    ConnectTimeout,
    MessageTimeout,
    SocksHost,
    SocksPort,
    SocksUsername,
    SocksPassword,
    ContextEdits,
    MilterProtocol,
    QuarantineFolder,
    SieveDialect,
    LogFile,
    ConnectionReuse,
    MaxEdits,
    MaxVerdictSize,
    MaxHeaderValue,
    MaxAddedRecipients,
    MaxReplyText,
    SieveMaxHeaderSize,
    SieveMaxRedirects,
    SieveMaxScriptSize,
}

impl Opt {
    const ALL: [Opt; 24] = [
        Opt::Host,
        Opt::Port,
        Opt::Debug,
        Opt::Timeout,
        Opt::ConnectTimeout,
        Opt::MessageTimeout,
        Opt::SocksHost,
        Opt::SocksPort,
        Opt::SocksUsername,
        Opt::SocksPassword,
        Opt::ContextEdits,
        Opt::MilterProtocol,
        Opt::QuarantineFolder,
        Opt::SieveDialect,
        Opt::LogFile,
        Opt::ConnectionReuse,
        Opt::MaxEdits,
        Opt::MaxVerdictSize,
        Opt::MaxHeaderValue,
        Opt::MaxAddedRecipients,
        Opt::MaxReplyText,
        Opt::SieveMaxHeaderSize,
        Opt::SieveMaxRedirects,
        Opt::SieveMaxScriptSize,
    ];

    fn name(self) -> &'static str {
        match self {
            Opt::Host => "HOST",
            Opt::Port => "PORT",
            Opt::Debug => "DEBUG",
            Opt::Timeout => "TIMEOUT",
            Opt::ConnectTimeout => "CONNECT_TIMEOUT",
            Opt::MessageTimeout => "MESSAGE_TIMEOUT",
            Opt::SocksHost => "SOCKS_HOST",
            Opt::SocksPort => "SOCKS_PORT",
            Opt::SocksUsername => "SOCKS_USERNAME",
            Opt::SocksPassword => "SOCKS_PASSWORD",
            Opt::ContextEdits => "CONTEXT_EDITS",
            Opt::MilterProtocol => "MILTER_PROTOCOL",
            Opt::QuarantineFolder => "QUARANTINE_FOLDER",
            Opt::SieveDialect => "SIEVE_DIALECT",
            Opt::LogFile => "LOG_FILE",
            Opt::ConnectionReuse => "CONNECTION_REUSE",
            Opt::MaxEdits => "MAX_EDITS",
            Opt::MaxVerdictSize => "MAX_VERDICT_SIZE",
            Opt::MaxHeaderValue => "MAX_HEADER_VALUE",
            Opt::MaxAddedRecipients => "MAX_ADDED_RECIPIENTS",
            Opt::MaxReplyText => "MAX_REPLY_TEXT",
            Opt::SieveMaxHeaderSize => "SIEVE_MAX_HEADER_SIZE",
            Opt::SieveMaxRedirects => "SIEVE_MAX_REDIRECTS",
            Opt::SieveMaxScriptSize => "SIEVE_MAX_SCRIPT_SIZE",
        }
    }

    fn from_name(name: &str) -> Option<Opt> {
        Opt::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(name))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The names of every known option, in table order.
pub fn option_names() -> impl Iterator<Item = &'static str> {
    Opt::ALL.into_iter().map(Opt::name)
}

impl Config {
    /// Reads and validates an option file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let shown = path.display().to_string();
        let text = read_capped(path, &shown)?;
        Config::parse(&shown, &text)
    }

    /// Validates option-file text; `path` is used in messages only.
    pub fn parse(path: &str, text: &[u8]) -> Result<Config> {
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(too_big(path, text.len() as u64));
        }
        // Editors on other systems may start the file with a UTF-8 byte order mark.
        let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
        let mut b = Builder::new(path);
        for (i, raw) in text.split(|&c| c == b'\n').enumerate() {
            b.line(i + 1, raw)?;
        }
        b.finish()
    }

    /// A configuration with every default and the given Milter address, for tests and tools
    /// that need no option file. Brackets around an IPv6 literal are removed; the values are
    /// otherwise taken as given (the caller vouches for them), and `path` is `<built-in>`.
    pub fn with_host_port(host: &str, port: u16) -> Config {
        let mut b = Builder::new("<built-in>");
        b.config.host = strip_brackets(host).to_string();
        b.config.port = port;
        b.build()
    }
}

/// Reads at most `MAX_FILE_BYTES` (+1, to notice a file that grew) from `path`.
fn read_capped(path: &Path, shown: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    // O_NONBLOCK so that a FIFO given by mistake is refused below instead of waiting for a
    // writer for ever; it changes nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::config(format!("{shown}: cannot open the option file: {e}")))?;
    // fstat of the open file, not stat of the name, so that what is checked is what is read.
    let meta = file
        .metadata()
        .map_err(|e| Error::config(format!("{shown}: cannot examine the option file: {e}")))?;
    if meta.is_dir() {
        return Err(Error::config(format!(
            "{shown}: is a directory, not an option file"
        )));
    }
    if !meta.is_file() {
        return Err(Error::config(format!(
            "{shown}: is not a regular file (a device, FIFO or socket), not an option file"
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(shown, meta.len()));
    }
    let mut text = Vec::with_capacity(meta.len() as usize);
    (&file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::config(format!("{shown}: cannot read the option file: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::config(format!(
            "{shown}: the option file grew past the limit of {MAX_FILE_BYTES} bytes while it was read"
        )));
    }
    Ok(text)
}

fn too_big(shown: &str, size: u64) -> Error {
    Error::config(format!(
        "{shown}: the option file is {size} bytes, more than the limit of {MAX_FILE_BYTES} bytes"
    ))
}

/// Bytes for a message: escaped as `error::escape` does, cut to about `SHOW_MAX` characters.
fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, &b) in bytes.iter().enumerate() {
        let piece = escape(&[b]);
        if s.len() + piece.len() > SHOW_MAX && i + 1 < bytes.len() {
            s.push_str("...");
            break;
        }
        s.push_str(&piece);
    }
    s
}

/// White space around names and values; CR too, so that a stray CR before CRLF is harmless.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

/// One pair of surrounding double quotes is removed, so that a value can keep leading or trailing
/// blanks (a password) or be explicitly empty. Nothing inside is special.
fn unquote(value: &str) -> &str {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A decimal integer with an optional sign; `None` for anything else (hex, blanks, overflow).
fn parse_int(value: &str) -> Option<i64> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    value.parse::<i64>().ok()
}

/// An integer in `lo..=hi`, or the "expected" half of the message.
fn int_in(value: &str, lo: i64, hi: i64) -> std::result::Result<i64, String> {
    match parse_int(value) {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("is not a number from {lo} to {hi}")),
    }
}

/// A count in `lo..=hi`.
fn size_in(value: &str, lo: i64, hi: i64) -> std::result::Result<usize, String> {
    Ok(int_in(value, lo, hi)? as usize)
}

/// A size in bytes in `lo..=hi`, optionally followed by `k` (KiB) or `M` (MiB) as Pigeonhole
/// writes its limits (`sieve_max_script_size = 1M`), so that its values can be copied.
fn bytes_in(value: &str, lo: i64, hi: i64) -> std::result::Result<usize, String> {
    let (digits, unit) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1 << 20),
        _ => (value, 1),
    };
    match parse_int(digits).and_then(|n| n.checked_mul(unit)) {
        Some(n) if (lo..=hi).contains(&n) => Ok(n as usize),
        _ => Err(format!(
            "is not a size from {lo} to {hi} bytes (a number, optionally with k or M)"
        )),
    }
}

fn hundredths(n: i64) -> Duration {
    Duration::from_millis(n.unsigned_abs() * 10)
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

/// HOST and SOCKS_HOST: an IPv4 or IPv6 literal (the latter with or without brackets, with an
/// optional `%zone`), or a DNS name. Stored without brackets.
fn parse_host(value: &str, port_option: &str) -> std::result::Result<String, String> {
    use std::net::IpAddr;
    let expected = || "is not a host name or IP address".to_string();
    if let Some(inner) = value.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(inner) if is_ipv6(inner) => Ok(inner.to_string()),
            _ => Err("is not an IPv6 address in brackets".to_string()),
        };
    }
    if value.parse::<IpAddr>().is_ok() || is_ipv6(value) {
        return Ok(value.to_string());
    }
    // The commonest mistake: "host:port". (Several colons: an IPv6 literal with a typo.)
    if let Some((_, port)) = value.split_once(':') {
        if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "is not a host name or IP address (the port goes into {port_option})"
            ));
        }
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        return Ok(value.to_string());
    }
    Err(expected())
}

/// An IPv6 literal, optionally with a `%zone` (interface name or number) for link-local use.
fn is_ipv6(s: &str) -> bool {
    let (addr, zone) = match s.split_once('%') {
        Some((a, z)) => (a, Some(z)),
        None => (s, None),
    };
    addr.parse::<std::net::Ipv6Addr>().is_ok()
        && zone.map_or(true, |z| {
            !z.is_empty()
                && z.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        })
}

/// The file being read: the configuration so far, with defaults, and where each option was set.
struct Builder {
    config: Config,
    lines: [Option<usize>; Opt::ALL.len()],
    /// DEBUG as written (the configuration keeps it capped at 3).
    debug_given: i64,
    /// CONNECT_TIMEOUT as written; resolved at the end, because TIMEOUT may come later.
    connect_timeout_given: Option<i64>,
}

impl Builder {
    fn new(path: &str) -> Builder {
        let timeout = hundredths(3600);
        Builder {
            config: Config {
                path: path.to_string(),
                host: String::new(),
                port: 0,
                debug: 0,
                timeout,
                connect_timeout: timeout,
                message_timeout: hundredths(30_000),
                socks_host: String::new(),
                socks_port: 1080,
                socks_username: "milter".to_string(),
                socks_password: String::new(),
                context_edits: true,
                milter_protocol: 6,
                quarantine_folder: "Quarantine".to_string(),
                sieve_dialect: SieveDialect::Rfc5293,
                log_target: LogTarget::Stderr,
                connection_reuse: 0,
                milter_limits: MilterLimits::default(),
                sieve_limits: SieveLimits::default(),
                sources: Vec::new(),
                warnings: Vec::new(),
            },
            lines: [None; Opt::ALL.len()],
            debug_given: 0,
            connect_timeout_given: None,
        }
    }

    fn path(&self) -> &str {
        &self.config.path
    }

    /// One line of the file, without its LF.
    fn line(&mut self, n: usize, raw: &[u8]) -> Result<()> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let path = self.path();
        if raw.contains(&0) {
            return Err(Error::config(format!(
                "{path}:{n}: the line holds a NUL byte, so this is not a text file: \"{}\"",
                show(raw)
            )));
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            return Err(Error::config(format!(
                "{path}:{n}: the line is not UTF-8 text: \"{}\"",
                show(raw)
            )));
        };
        let line = line.trim_matches(is_blank);
        if line.is_empty() || line.starts_with('!') || line.starts_with('#') {
            return Ok(());
        }
        let form = line
            .split_once('=')
            .map(|(name, value)| (name.trim_matches(is_blank), value.trim_matches(is_blank)));
        let Some((name, value)) = form.filter(|(name, _)| !name.is_empty()) else {
            // The line may be a password written without its "="; do not print it.
            let text = if line.to_ascii_uppercase().starts_with("SOCKS_PASSWORD") {
                format!("SOCKS_PASSWORD {MASK}")
            } else {
                show(line.as_bytes())
            };
            return Err(Error::config(format!(
                "{path}:{n}: \"{text}\" is not of the form option=value"
            )));
        };
        let Some(opt) = Opt::from_name(name) else {
            let warning = format!(
                "{path}:{n}: unknown option \"{}\" ignored",
                show(name.as_bytes())
            );
            self.config.warnings.push(warning);
            return Ok(());
        };
        self.set(opt, unquote(value), n)
    }

    fn set(&mut self, opt: Opt, value: &str, n: usize) -> Result<()> {
        if let Some(before) = self.lines[opt.index()] {
            let warning = format!(
                "{}:{n}: {} is also set on line {before}; the value on line {n} is used",
                self.path(),
                opt.name()
            );
            self.config.warnings.push(warning);
        }
        if let Err(expected) = self.apply(opt, value) {
            let shown = match opt {
                Opt::SocksPassword => MASK.to_string(),
                _ => show(value.as_bytes()),
            };
            return Err(Error::config(format!(
                "{}:{n}: {}: \"{shown}\" {expected}",
                self.path(),
                opt.name()
            )));
        }
        self.lines[opt.index()] = Some(n);
        Ok(())
    }

    /// Checks and stores one value; the error is the "what was expected" half of the message.
    fn apply(&mut self, opt: Opt, value: &str) -> std::result::Result<(), String> {
        let c = &mut self.config;
        match opt {
            Opt::Host => c.host = parse_host(value, "PORT")?,
            Opt::Port => c.port = int_in(value, 1, 65535)? as u16,
            Opt::Debug => {
                // Levels above 3 add nothing; they are accepted because "more debugging" is a
                // natural thing to write.
                self.debug_given = int_in(value, 0, 255)?;
                c.debug = self.debug_given.min(3) as u8;
            }
            Opt::Timeout => c.timeout = hundredths(int_in(value, 1, MAX_TIMEOUT)?),
            Opt::ConnectTimeout => match parse_int(value) {
                Some(n) if n <= MAX_TIMEOUT => self.connect_timeout_given = Some(n),
                _ => {
                    return Err(format!(
                        "is not a number up to {MAX_TIMEOUT} (0 or less: the same as TIMEOUT)"
                    ))
                }
            },
            Opt::MessageTimeout => {
                c.message_timeout = hundredths(int_in(value, 1, MAX_TIMEOUT)?);
            }
            Opt::SocksHost => {
                c.socks_host = if value.is_empty() {
                    String::new()
                } else {
                    parse_host(value, "SOCKS_PORT")?
                };
            }
            Opt::SocksPort => c.socks_port = int_in(value, 1, 65535)? as u16,
            Opt::SocksUsername => {
                if value.is_empty() || value.len() > RFC1929_MAX {
                    return Err(format!(
                        "is {} bytes long, not a user name of 1 to {RFC1929_MAX} bytes (RFC 1929)",
                        value.len()
                    ));
                }
                c.socks_username = value.to_string();
            }
            Opt::SocksPassword => {
                if value.len() > RFC1929_MAX {
                    return Err(format!(
                        "is {} bytes long, more than the {RFC1929_MAX} bytes RFC 1929 allows",
                        value.len()
                    ));
                }
                c.socks_password = value.to_string();
            }
            Opt::ContextEdits => match parse_int(value) {
                Some(0) => c.context_edits = false,
                Some(1) => c.context_edits = true,
                _ => return Err("is not 0 or 1".to_string()),
            },
            Opt::MilterProtocol => match parse_int(value) {
                Some(n @ (2 | 3 | 4 | 6)) => c.milter_protocol = n as u32,
                _ => return Err("is not one of 2, 3, 4 or 6".to_string()),
            },
            Opt::QuarantineFolder => {
                if value.is_empty() || has_control(value) {
                    return Err(
                        "is not a folder name (not empty, without control characters)".to_string(),
                    );
                }
                c.quarantine_folder = value.to_string();
            }
            Opt::SieveDialect => {
                c.sieve_dialect = if value.eq_ignore_ascii_case("rfc5293") {
                    SieveDialect::Rfc5293
                } else if value.eq_ignore_ascii_case("legacy") {
                    SieveDialect::Legacy
                } else {
                    return Err("is not rfc5293 or legacy".to_string());
                };
            }
            Opt::LogFile => {
                c.log_target = if value.is_empty() || value.eq_ignore_ascii_case("stderr") {
                    LogTarget::Stderr
                } else if value.eq_ignore_ascii_case("syslog") {
                    LogTarget::Syslog
                } else if has_control(value) {
                    return Err(
                        "is not a file name (without control characters), syslog or stderr"
                            .to_string(),
                    );
                } else {
                    LogTarget::File(value.into())
                };
            }
            Opt::ConnectionReuse => c.connection_reuse = int_in(value, 0, 256)? as u32,
            Opt::MaxEdits => c.milter_limits.max_edits = size_in(value, 1, 1_000_000)?,
            Opt::MaxVerdictSize => {
                c.milter_limits.max_verdict_size = bytes_in(value, 1024, 64 << 20)?;
            }
            // A packet holds at most 1 MiB (protocol::MAX_REPLY_LEN).
            Opt::MaxHeaderValue => c.milter_limits.max_header_value = bytes_in(value, 1, 1 << 20)?,
            Opt::MaxAddedRecipients => {
                c.milter_limits.max_added_recipients = size_in(value, 0, 100_000)?;
            }
            Opt::MaxReplyText => c.milter_limits.max_reply_text = bytes_in(value, 16, 1 << 20)?,
            Opt::SieveMaxHeaderSize => {
                c.sieve_limits.max_header_size = bytes_in(value, 64, 1 << 30)?;
            }
            // 0: redirect is not allowed at all (as Pigeonhole takes it).
            Opt::SieveMaxRedirects => c.sieve_limits.max_redirects = size_in(value, 0, 10_000)?,
            Opt::SieveMaxScriptSize => {
                c.sieve_limits.max_script_size = bytes_in(value, 4096, 1 << 30)?;
            }
        }
        Ok(())
    }

    /// After the last line: the required options, CONNECT_TIMEOUT, `sources`.
    fn finish(mut self) -> Result<Config> {
        for opt in [Opt::Host, Opt::Port] {
            if self.lines[opt.index()].is_none() {
                return Err(Error::config(format!(
                    "{}: {} is required but not set",
                    self.path(),
                    opt.name()
                )));
            }
        }
        if let LogTarget::File(file) = &self.config.log_target {
            // The MTA's working directory is rarely what the administrator had in mind.
            if file.is_relative() {
                let warning = format!(
                    "{}:{}: LOG_FILE \"{}\" is a relative path: it is taken from the MTA's working directory",
                    self.path(),
                    self.lines[Opt::LogFile.index()].unwrap_or(0),
                    show(file.as_os_str().as_encoded_bytes())
                );
                self.config.warnings.push(warning);
            }
        }
        Ok(self.build())
    }

    /// The configuration, with CONNECT_TIMEOUT resolved and `sources` filled.
    fn build(mut self) -> Config {
        let c = &mut self.config;
        c.connect_timeout = match self.connect_timeout_given {
            Some(n) if n > 0 => hundredths(n),
            _ => c.timeout,
        };
        let secs = |d: Duration| {
            let h = d.as_millis() / 10;
            format!("{h} ({}.{:02} s)", h / 100, h % 100)
        };
        let same = matches!(self.connect_timeout_given, None | Some(i64::MIN..=0));
        let mut sources = Vec::with_capacity(Opt::ALL.len());
        for opt in Opt::ALL {
            let value = match opt {
                Opt::Host => c.host.clone(),
                Opt::Port => c.port.to_string(),
                Opt::Debug if self.debug_given > 3 => format!("{} (acts as 3)", self.debug_given),
                Opt::Debug => c.debug.to_string(),
                Opt::Timeout => secs(c.timeout),
                Opt::ConnectTimeout if same => {
                    let s = secs(c.connect_timeout);
                    format!("{}, same as TIMEOUT)", &s[..s.len() - 1])
                }
                Opt::ConnectTimeout => secs(c.connect_timeout),
                Opt::MessageTimeout => secs(c.message_timeout),
                Opt::SocksHost => c.socks_host.clone(),
                Opt::SocksPort => c.socks_port.to_string(),
                Opt::SocksUsername => c.socks_username.clone(),
                Opt::SocksPassword if c.socks_password.is_empty() => String::new(),
                Opt::SocksPassword => MASK.to_string(),
                Opt::ContextEdits => u8::from(c.context_edits).to_string(),
                Opt::MilterProtocol => c.milter_protocol.to_string(),
                Opt::QuarantineFolder => c.quarantine_folder.clone(),
                Opt::SieveDialect => match c.sieve_dialect {
                    SieveDialect::Rfc5293 => "rfc5293".to_string(),
                    SieveDialect::Legacy => "legacy".to_string(),
                },
                Opt::LogFile => match &c.log_target {
                    LogTarget::Stderr => "stderr".to_string(),
                    LogTarget::Syslog => "syslog".to_string(),
                    LogTarget::File(f) => f.display().to_string(),
                },
                Opt::ConnectionReuse => c.connection_reuse.to_string(),
                Opt::MaxEdits => c.milter_limits.max_edits.to_string(),
                Opt::MaxVerdictSize => c.milter_limits.max_verdict_size.to_string(),
                Opt::MaxHeaderValue => c.milter_limits.max_header_value.to_string(),
                Opt::MaxAddedRecipients => c.milter_limits.max_added_recipients.to_string(),
                Opt::MaxReplyText => c.milter_limits.max_reply_text.to_string(),
                Opt::SieveMaxHeaderSize => c.sieve_limits.max_header_size.to_string(),
                Opt::SieveMaxRedirects => c.sieve_limits.max_redirects.to_string(),
                Opt::SieveMaxScriptSize => c.sieve_limits.max_script_size.to_string(),
            };
            sources.push(OptionSource {
                name: opt.name(),
                value,
                line: self.lines[opt.index()],
            });
        }
        c.sources = sources;
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MIN: &str = "HOST=127.0.0.1\nPORT=1234\n";

    fn ok(text: &str) -> Config {
        match Config::parse("milter.opt", text.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("{text:?} was refused: {e}"),
        }
    }

    fn err(text: impl AsRef<[u8]>) -> String {
        match Config::parse("milter.opt", text.as_ref()) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => {
                assert_eq!(e.kind, crate::error::ErrorKind::Config);
                e.message
            }
        }
    }

    fn source<'a>(c: &'a Config, name: &str) -> &'a OptionSource {
        c.sources
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing from sources"))
    }

    /// A file or directory under the temporary directory, removed on drop.
    struct TempPath(std::path::PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("milter-spamfilter-config-{}-{n}-{tag}", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn defaults() {
        let c = ok(MIN);
        assert_eq!(c.path, "milter.opt");
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 1234);
        assert_eq!(c.debug, 0);
        assert_eq!(c.timeout, Duration::from_secs(36));
        assert_eq!(c.connect_timeout, Duration::from_secs(36));
        assert_eq!(c.message_timeout, Duration::from_secs(300));
        assert_eq!(c.socks_host, "");
        assert_eq!(c.socks_port, 1080);
        assert_eq!(c.socks_username, "milter");
        assert_eq!(c.socks_password, "");
        assert!(c.context_edits);
        assert_eq!(c.milter_protocol, 6);
        assert_eq!(c.quarantine_folder, "Quarantine");
        assert_eq!(c.sieve_dialect, SieveDialect::Rfc5293);
        assert_eq!(c.log_target, LogTarget::Stderr);
        assert_eq!(c.connection_reuse, 0);
        assert_eq!(
            c.milter_limits,
            MilterLimits {
                max_edits: 10_000,
                max_verdict_size: 1 << 20,
                max_header_value: 65_535,
                max_added_recipients: 1_000,
                max_reply_text: 65_535,
            }
        );
        // Pigeonhole's defaults.
        assert_eq!(
            c.sieve_limits,
            SieveLimits {
                max_header_size: 2048,
                max_redirects: 4,
                max_script_size: 1 << 20,
            }
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c,
            Config::with_host_port("127.0.0.1", 1234).with_path("milter.opt")
        );
    }

    impl Config {
        fn with_path(mut self, path: &str) -> Config {
            self.path = path.to_string();
            for s in &mut self.sources {
                if s.name == "HOST" {
                    s.line = Some(1);
                }
                if s.name == "PORT" {
                    s.line = Some(2);
                }
            }
            self
        }
    }

    #[test]
    fn every_option() {
        let c = ok("HOST=milter.example\n\
                    PORT=8891\n\
                    DEBUG=2\n\
                    TIMEOUT=150\n\
                    CONNECT_TIMEOUT=50\n\
                    MESSAGE_TIMEOUT=1000\n\
                    SOCKS_HOST=[::1]\n\
                    SOCKS_PORT=1081\n\
                    SOCKS_USERNAME=mta\n\
                    SOCKS_PASSWORD=s3cret\n\
                    CONTEXT_EDITS=0\n\
                    MILTER_PROTOCOL=2\n\
                    QUARANTINE_FOLDER=Junk/Held\n\
                    SIEVE_DIALECT=LEGACY\n\
                    LOG_FILE=/var/log/milter.log\n\
                    CONNECTION_REUSE=256\n\
                    MAX_EDITS=50\n\
                    MAX_VERDICT_SIZE=2048\n\
                    MAX_HEADER_VALUE=100\n\
                    MAX_ADDED_RECIPIENTS=0\n\
                    MAX_REPLY_TEXT=512\n\
                    SIEVE_MAX_HEADER_SIZE=1k\n\
                    SIEVE_MAX_REDIRECTS=0\n\
                    SIEVE_MAX_SCRIPT_SIZE=65536\n");
        assert_eq!(c.host, "milter.example");
        assert_eq!(c.port, 8891);
        assert_eq!(c.debug, 2);
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.message_timeout, Duration::from_secs(10));
        assert_eq!(c.socks_host, "::1");
        assert_eq!(c.socks_port, 1081);
        assert_eq!(c.socks_username, "mta");
        assert_eq!(c.socks_password, "s3cret");
        assert!(!c.context_edits);
        assert_eq!(c.milter_protocol, 2);
        assert_eq!(c.quarantine_folder, "Junk/Held");
        assert_eq!(c.sieve_dialect, SieveDialect::Legacy);
        assert_eq!(c.log_target, LogTarget::File("/var/log/milter.log".into()));
        assert_eq!(c.connection_reuse, 256);
        assert_eq!(
            c.milter_limits,
            MilterLimits {
                max_edits: 50,
                max_verdict_size: 2048,
                max_header_value: 100,
                max_added_recipients: 0,
                max_reply_text: 512,
            }
        );
        assert_eq!(
            c.sieve_limits,
            SieveLimits {
                max_header_size: 1024,
                max_redirects: 0,
                max_script_size: 65536,
            }
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        // sources: table order, every line, values as understood, the password hidden.
        let names: Vec<_> = c.sources.iter().map(|s| s.name).collect();
        assert_eq!(names, option_names().collect::<Vec<_>>());
        let lines: Vec<_> = c.sources.iter().map(|s| s.line).collect();
        assert_eq!(lines, (1..=24).map(Some).collect::<Vec<_>>());
        let values: Vec<_> = c.sources.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(
            values,
            [
                "milter.example",
                "8891",
                "2",
                "150 (1.50 s)",
                "50 (0.50 s)",
                "1000 (10.00 s)",
                "::1",
                "1081",
                "mta",
                "********",
                "0",
                "2",
                "Junk/Held",
                "legacy",
                "/var/log/milter.log",
                "256",
                "50",
                "2048",
                "100",
                "0",
                "512",
                "1024",
                "0",
                "65536",
            ]
        );
    }

    #[test]
    fn limits_out_of_range_name_the_option_and_the_range() {
        for (line, expected) in [
            (
                "MAX_EDITS=0",
                "milter.opt:3: MAX_EDITS: \"0\" is not a number from 1 to 1000000",
            ),
            (
                "MAX_VERDICT_SIZE=65M",
                "milter.opt:3: MAX_VERDICT_SIZE: \"65M\" is not a size from 1024 to 67108864 \
                 bytes (a number, optionally with k or M)",
            ),
            (
                "MAX_HEADER_VALUE=2M",
                "milter.opt:3: MAX_HEADER_VALUE: \"2M\" is not a size from 1 to 1048576 bytes \
                 (a number, optionally with k or M)",
            ),
            (
                "SIEVE_MAX_HEADER_SIZE=1x",
                "milter.opt:3: SIEVE_MAX_HEADER_SIZE: \"1x\" is not a size from 64 to \
                 1073741824 bytes (a number, optionally with k or M)",
            ),
            (
                "SIEVE_MAX_REDIRECTS=-1",
                "milter.opt:3: SIEVE_MAX_REDIRECTS: \"-1\" is not a number from 0 to 10000",
            ),
            (
                "SIEVE_MAX_SCRIPT_SIZE=99999999999999999999k",
                "milter.opt:3: SIEVE_MAX_SCRIPT_SIZE: \"99999999999999999999k\" is not a size \
                 from 4096 to 1073741824 bytes (a number, optionally with k or M)",
            ),
        ] {
            assert_eq!(err(format!("{MIN}{line}\n")), expected);
        }
        let c = ok(&format!(
            "{MIN}SIEVE_MAX_SCRIPT_SIZE=1M\nMAX_REPLY_TEXT=4k\n"
        ));
        assert_eq!(c.sieve_limits.max_script_size, 1 << 20);
        assert_eq!(c.milter_limits.max_reply_text, 4096);
    }

    #[test]
    fn default_sources_have_no_line() {
        let c = ok(MIN);
        assert_eq!(source(&c, "HOST").line, Some(1));
        assert_eq!(source(&c, "PORT").line, Some(2));
        for s in &c.sources[2..] {
            assert_eq!(s.line, None, "{}", s.name);
        }
        assert_eq!(source(&c, "SOCKS_PASSWORD").value, "");
        assert_eq!(
            source(&c, "CONNECT_TIMEOUT").value,
            "3600 (36.00 s, same as TIMEOUT)"
        );
        assert_eq!(source(&c, "LOG_FILE").value, "stderr");
    }

    #[test]
    fn names_case_insensitive_blanks_comments_crlf() {
        let c = ok(
            "\r\n  # a comment\r\n\t! another, with = in it\r\n\r\n  host \t=\t ::1 \r\n\
                    Port= 25\r\nsocks_host =proxy.example.\r\nSieve_Dialect=Rfc5293\r\n   \r\n",
        );
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 25);
        assert_eq!(c.socks_host, "proxy.example.");
        assert_eq!(c.sieve_dialect, SieveDialect::Rfc5293);
        assert_eq!(source(&c, "HOST").line, Some(5));
        assert_eq!(source(&c, "PORT").line, Some(6));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // No final newline, and a byte order mark before the first line.
        let c = ok("\u{feff}HOST=h\nPORT=1");
        assert_eq!((c.host.as_str(), c.port), ("h", 1));
    }

    #[test]
    fn quotes_are_removed() {
        let c = ok(
            "HOST=\"[fe80::1%eth0]\"\nPORT=\"+0080\"\nSOCKS_PASSWORD=\" a=b \"\n\
                    QUARANTINE_FOLDER=\"Spam \"quoted\"\"\nLOG_FILE=\"\"\nSOCKS_USERNAME=\"\n",
        );
        assert_eq!(c.host, "fe80::1%eth0");
        assert_eq!(c.port, 80);
        assert_eq!(c.socks_password, " a=b ");
        // Only the outer pair goes; a lone quote is part of the value.
        assert_eq!(c.quarantine_folder, "Spam \"quoted\"");
        assert_eq!(c.log_target, LogTarget::Stderr);
        assert_eq!(c.socks_username, "\"");
    }

    #[test]
    fn hosts() {
        for (given, stored) in [
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[2001:db8::25]", "2001:db8::25"),
            ("192.0.2.7", "192.0.2.7"),
            ("localhost", "localhost"),
            ("milter-1.example.com", "milter-1.example.com"),
        ] {
            assert_eq!(ok(&format!("HOST={given}\nPORT=1\n")).host, stored);
        }
        assert_eq!(
            err("PORT=1\nHOST=localhost:8891\n"),
            "milter.opt:2: HOST: \"localhost:8891\" is not a host name or IP address (the port goes into PORT)"
        );
        assert_eq!(
            err("SOCKS_HOST=proxy:1080\n"),
            "milter.opt:1: SOCKS_HOST: \"proxy:1080\" is not a host name or IP address (the port goes into SOCKS_PORT)"
        );
        assert_eq!(
            err("HOST=[::1\n"),
            "milter.opt:1: HOST: \"[::1\" is not an IPv6 address in brackets"
        );
        assert_eq!(
            err("HOST=[127.0.0.1]\n"),
            "milter.opt:1: HOST: \"[127.0.0.1]\" is not an IPv6 address in brackets"
        );
        for bad in ["", "\"\"", "two words", "a..b", "bad/name", "::1::2"] {
            assert_eq!(
                err(format!("HOST={bad}\n")),
                format!(
                    "milter.opt:1: HOST: \"{}\" is not a host name or IP address",
                    unquote(bad)
                )
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(
            err("! comment\n\nHOST=h\n# c\n\n\nPORT=80a\n"),
            "milter.opt:7: PORT: \"80a\" is not a number from 1 to 65535"
        );
        for bad in [
            "0",
            "65536",
            "0x50",
            "1e3",
            "8 0",
            "+",
            "-",
            "99999999999999999999999",
        ] {
            assert_eq!(
                err(format!("PORT={bad}\n")),
                format!("milter.opt:1: PORT: \"{bad}\" is not a number from 1 to 65535")
            );
        }
        assert_eq!(ok("HOST=h\nPORT=65535\n").port, 65535);
        // Every line is checked, even one that a later line overrides: it is still a mistake.
        assert_eq!(
            err("HOST=h\nPORT=-0001\nPORT=1\n"),
            "milter.opt:2: PORT: \"-0001\" is not a number from 1 to 65535"
        );
        assert_eq!(
            err("SOCKS_PORT=0\n"),
            "milter.opt:1: SOCKS_PORT: \"0\" is not a number from 1 to 65535"
        );
        assert_eq!(
            err("TIMEOUT=0\n"),
            "milter.opt:1: TIMEOUT: \"0\" is not a number from 1 to 8640000"
        );
        assert_eq!(
            err("TIMEOUT=8640001\n"),
            "milter.opt:1: TIMEOUT: \"8640001\" is not a number from 1 to 8640000"
        );
        assert_eq!(
            ok(&format!("{MIN}TIMEOUT=8640000\n")).timeout,
            Duration::from_secs(86_400)
        );
        assert_eq!(
            err("MESSAGE_TIMEOUT=0\n"),
            "milter.opt:1: MESSAGE_TIMEOUT: \"0\" is not a number from 1 to 8640000"
        );
        assert_eq!(
            ok(&format!("{MIN}MESSAGE_TIMEOUT=1\n")).message_timeout,
            Duration::from_millis(10)
        );
        assert_eq!(
            err("CONNECTION_REUSE=257\n"),
            "milter.opt:1: CONNECTION_REUSE: \"257\" is not a number from 0 to 256"
        );
    }

    #[test]
    fn debug_levels() {
        for (given, level, shown) in [
            ("0", 0, "0"),
            ("1", 1, "1"),
            ("3", 3, "3"),
            ("4", 3, "4 (acts as 3)"),
            ("99", 3, "99 (acts as 3)"),
        ] {
            let c = ok(&format!("{MIN}DEBUG={given}\n"));
            assert_eq!(c.debug, level, "DEBUG={given}");
            assert_eq!(source(&c, "DEBUG").value, shown);
        }
        assert_eq!(
            err("DEBUG=-1\n"),
            "milter.opt:1: DEBUG: \"-1\" is not a number from 0 to 255"
        );
        assert_eq!(
            err("DEBUG=yes\n"),
            "milter.opt:1: DEBUG: \"yes\" is not a number from 0 to 255"
        );
    }

    #[test]
    fn connect_timeout() {
        // Unset, 0 or negative: the same as TIMEOUT, wherever TIMEOUT is in the file.
        for line in ["", "CONNECT_TIMEOUT=0\n", "CONNECT_TIMEOUT=-5\n"] {
            let c = ok(&format!("{line}{MIN}TIMEOUT=250\n"));
            assert_eq!(c.connect_timeout, Duration::from_millis(2500), "{line:?}");
            assert_eq!(
                source(&c, "CONNECT_TIMEOUT").value,
                "250 (2.50 s, same as TIMEOUT)"
            );
        }
        let c = ok(&format!("{MIN}CONNECT_TIMEOUT=8640000\nTIMEOUT=1\n"));
        assert_eq!(c.connect_timeout, Duration::from_secs(86_400));
        assert_eq!(c.timeout, Duration::from_millis(10));
        assert_eq!(source(&c, "CONNECT_TIMEOUT").line, Some(3));
        assert_eq!(
            err("CONNECT_TIMEOUT=8640001\n"),
            "milter.opt:1: CONNECT_TIMEOUT: \"8640001\" is not a number up to 8640000 (0 or less: the same as TIMEOUT)"
        );
        assert_eq!(
            err("CONNECT_TIMEOUT=soon\n"),
            "milter.opt:1: CONNECT_TIMEOUT: \"soon\" is not a number up to 8640000 (0 or less: the same as TIMEOUT)"
        );
    }

    #[test]
    fn socks_credentials() {
        let name = "u".repeat(255);
        let c = ok(&format!(
            "{MIN}SOCKS_USERNAME={name}\nSOCKS_PASSWORD={name}\n"
        ));
        assert_eq!(c.socks_username, name);
        assert_eq!(c.socks_password, name);
        assert_eq!(
            err(format!("SOCKS_USERNAME={name}u\n")),
            format!(
                "milter.opt:1: SOCKS_USERNAME: \"{}...\" is 256 bytes long, not a user name of 1 to 255 bytes (RFC 1929)",
                &name[..60]
            )
        );
        assert_eq!(
            err("SOCKS_USERNAME=\n"),
            "milter.opt:1: SOCKS_USERNAME: \"\" is 0 bytes long, not a user name of 1 to 255 bytes (RFC 1929)"
        );
        // The password never appears in a message.
        let secret = format!("{}X", "p".repeat(255));
        let message = err(format!("SOCKS_PASSWORD={secret}\n"));
        assert_eq!(
            message,
            "milter.opt:1: SOCKS_PASSWORD: \"********\" is 256 bytes long, more than the 255 bytes RFC 1929 allows"
        );
        assert_eq!(
            err("socks_password hunter2\n"),
            "milter.opt:1: \"SOCKS_PASSWORD ********\" is not of the form option=value"
        );
    }

    #[test]
    fn enumerations() {
        assert!(ok(&format!("{MIN}CONTEXT_EDITS=1\n")).context_edits);
        assert!(!ok(&format!("{MIN}CONTEXT_EDITS=0\n")).context_edits);
        assert_eq!(
            err("CONTEXT_EDITS=yes\n"),
            "milter.opt:1: CONTEXT_EDITS: \"yes\" is not 0 or 1"
        );
        assert_eq!(
            err("CONTEXT_EDITS=2\n"),
            "milter.opt:1: CONTEXT_EDITS: \"2\" is not 0 or 1"
        );
        for v in [2, 3, 4, 6] {
            assert_eq!(
                ok(&format!("{MIN}MILTER_PROTOCOL={v}\n")).milter_protocol,
                v
            );
        }
        for bad in ["5", "1", "7", "six"] {
            assert_eq!(
                err(format!("MILTER_PROTOCOL={bad}\n")),
                format!("milter.opt:1: MILTER_PROTOCOL: \"{bad}\" is not one of 2, 3, 4 or 6")
            );
        }
        assert_eq!(
            ok(&format!("{MIN}SIEVE_DIALECT=legacy\n")).sieve_dialect,
            SieveDialect::Legacy
        );
        assert_eq!(
            err("SIEVE_DIALECT=5228\n"),
            "milter.opt:1: SIEVE_DIALECT: \"5228\" is not rfc5293 or legacy"
        );
        assert_eq!(
            err("QUARANTINE_FOLDER=\n"),
            "milter.opt:1: QUARANTINE_FOLDER: \"\" is not a folder name (not empty, without control characters)"
        );
        assert_eq!(
            err("QUARANTINE_FOLDER=a\x07b\n"),
            "milter.opt:1: QUARANTINE_FOLDER: \"a\\x07b\" is not a folder name (not empty, without control characters)"
        );
    }

    #[test]
    fn log_file() {
        for (given, target) in [
            ("syslog", LogTarget::Syslog),
            ("SysLog", LogTarget::Syslog),
            ("stderr", LogTarget::Stderr),
            ("", LogTarget::Stderr),
            ("/tmp/m.log", LogTarget::File("/tmp/m.log".into())),
        ] {
            let c = ok(&format!("{MIN}LOG_FILE={given}\n"));
            assert_eq!(c.log_target, target, "LOG_FILE={given}");
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        }
        let c = ok(&format!("{MIN}LOG_FILE=m.log\n"));
        assert_eq!(c.log_target, LogTarget::File("m.log".into()));
        assert_eq!(
            c.warnings,
            ["milter.opt:3: LOG_FILE \"m.log\" is a relative path: it is taken from the MTA's working directory"]
        );
        assert_eq!(
            err("LOG_FILE=a\tb\n"),
            "milter.opt:1: LOG_FILE: \"a\\x09b\" is not a file name (without control characters), syslog or stderr"
        );
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(
            err("HOST=h\nPORT 25\n"),
            "milter.opt:2: \"PORT 25\" is not of the form option=value"
        );
        assert_eq!(
            err("=25\n"),
            "milter.opt:1: \"=25\" is not of the form option=value"
        );
        let long = format!("{}\u{7f}", "x".repeat(100));
        assert_eq!(
            err(&long),
            format!(
                "milter.opt:1: \"{}...\" is not of the form option=value",
                "x".repeat(60)
            )
        );
        assert_eq!(
            err("a\x01\"b\\c\n"),
            "milter.opt:1: \"a\\x01\\\"b\\\\c\" is not of the form option=value"
        );
        assert_eq!(
            err("HOST=h\nPORT=1\nQUARANTINE_FOLDER=caf\u{e9}\x1b[31m\n"),
            "milter.opt:3: QUARANTINE_FOLDER: \"caf\\xc3\\xa9\\x1b[31m\" is not a folder name (not empty, without control characters)"
        );
    }

    #[test]
    fn unknown_and_duplicate_options() {
        let c = ok("HOST=a\nFOO=1\nPORT=1\nhost=b\nSOCKS HOST=x\nHOST=c\n");
        assert_eq!(c.host, "c");
        assert_eq!(source(&c, "HOST").line, Some(6));
        assert_eq!(
            c.warnings,
            [
                "milter.opt:2: unknown option \"FOO\" ignored",
                "milter.opt:4: HOST is also set on line 1; the value on line 4 is used",
                "milter.opt:5: unknown option \"SOCKS HOST\" ignored",
                "milter.opt:6: HOST is also set on line 4; the value on line 6 is used",
            ]
        );
    }

    #[test]
    fn required_options() {
        assert_eq!(err("PORT=1\n"), "milter.opt: HOST is required but not set");
        assert_eq!(err("HOST=h\n"), "milter.opt: PORT is required but not set");
        assert_eq!(err(""), "milter.opt: HOST is required but not set");
        assert_eq!(
            err("# HOST=h\n! PORT=1\n"),
            "milter.opt: HOST is required but not set"
        );
    }

    #[test]
    fn binary_text() {
        assert_eq!(
            err("HOST=h\nPORT=1\nDEBUG=\x001\n"),
            "milter.opt:3: the line holds a NUL byte, so this is not a text file: \"DEBUG=\\x001\""
        );
        assert_eq!(
            err(b"HOST=h\n# caf\xe9\nPORT=1\n"),
            "milter.opt:2: the line is not UTF-8 text: \"# caf\\xe9\""
        );
        assert_eq!(
            err(b"\x7fELF\x02\x01\x01\x00\x00"),
            "milter.opt:1: the line holds a NUL byte, so this is not a text file: \"\\x7fELF\\x02\\x01\\x01\\x00\\x00\""
        );
    }

    #[test]
    fn huge_text() {
        // A 10 MB line is stopped by the size cap before anything looks at it.
        let mut text = b"HOST=".to_vec();
        text.resize(10_000_000, b'a');
        assert_eq!(
            err(&text),
            "milter.opt: the option file is 10000000 bytes, more than the limit of 1048576 bytes"
        );
        // Just under the cap: parsed, and the long value is cut in the message.
        let mut text = b"PORT=1\nHOST=".to_vec();
        text.resize(MAX_FILE_BYTES as usize, b'a');
        let message = err(&text);
        assert!(
            message.starts_with(&format!("milter.opt:2: HOST: \"{}", "a".repeat(55))),
            "{message}"
        );
        assert!(
            message.ends_with("...\" is not a host name or IP address"),
            "{message}"
        );
        assert!(message.len() < 120, "{message}");
    }

    #[test]
    fn file_ok() {
        let t = TempPath::new("ok.opt");
        std::fs::write(&t.0, "HOST=[::1]\r\nPORT=8891\r\nFOO=bar\r\n").expect("write temp file");
        let c = Config::from_file(&t.0).expect("reads");
        assert_eq!(c.path, t.0.display().to_string());
        assert_eq!((c.host.as_str(), c.port), ("::1", 8891));
        assert_eq!(
            c.warnings,
            [format!(
                "{}:3: unknown option \"FOO\" ignored",
                t.0.display()
            )]
        );
    }

    #[test]
    fn file_missing() {
        let t = TempPath::new("missing.opt");
        let e = Config::from_file(&t.0).expect_err("missing file");
        assert_eq!(e.kind, crate::error::ErrorKind::Config);
        assert_eq!(
            e.message,
            format!(
                "{}: cannot open the option file: No such file or directory (os error 2)",
                t.0.display()
            )
        );
    }

    #[test]
    fn file_is_directory() {
        let t = TempPath::new("dir.opt");
        std::fs::create_dir(&t.0).expect("create temp dir");
        let e = Config::from_file(&t.0).expect_err("directory");
        assert_eq!(
            e.message,
            format!("{}: is a directory, not an option file", t.0.display())
        );
    }

    #[test]
    fn file_is_fifo() {
        let t = TempPath::new("fifo.opt");
        let c_path = std::ffi::CString::new(t.0.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // Without a writer, a blocking open would hang here for ever.
        let e = Config::from_file(&t.0).expect_err("fifo");
        assert_eq!(
            e.message,
            format!(
                "{}: is not a regular file (a device, FIFO or socket), not an option file",
                t.0.display()
            )
        );
    }

    #[test]
    fn file_huge() {
        let t = TempPath::new("huge.opt");
        let f = std::fs::File::create(&t.0).expect("create temp file");
        // Sparse: costs no disk, and shows that the size is checked before reading.
        f.set_len(10 * 1024 * 1024 * 1024).expect("set_len");
        drop(f);
        let e = Config::from_file(&t.0).expect_err("huge file");
        assert_eq!(
            e.message,
            format!(
                "{}: the option file is 10737418240 bytes, more than the limit of 1048576 bytes",
                t.0.display()
            )
        );
    }

    #[test]
    fn file_binary() {
        let t = TempPath::new("binary.opt");
        std::fs::write(&t.0, b"HOST=h\nPORT=1\n\xff\xfe\n").expect("write temp file");
        let e = Config::from_file(&t.0).expect_err("binary file");
        assert_eq!(
            e.message,
            format!(
                "{}:3: the line is not UTF-8 text: \"\\xff\\xfe\"",
                t.0.display()
            )
        );
    }

    #[test]
    fn built_in() {
        let c = Config::with_host_port("[::1]", 9);
        assert_eq!((c.host.as_str(), c.port), ("::1", 9));
        assert_eq!(c.path, "<built-in>");
        assert_eq!(c.sources.len(), Opt::ALL.len());
        assert_eq!(source(&c, "PORT").value, "9");
    }
}
