//! The library against real Milter daemons, each started by the test on a free loopback port and
//! stopped at its end (tests/support/daemons.rs): rspamd's proxy, spamass-milter with spamd,
//! clamav-milter with clamd, opendkim signing and verifying, and mimedefang. Each test asserts
//! the exact verdict, reply text and headers the daemon's decisions turn into.
//!
//! No packet leaves loopback: every daemon resolves through its own dnsmasq on 127.53.x.y.
//! DAEMONS_DEBUG=2 prints the library's protocol trace of every conversation on stderr.

#[path = "support/daemons.rs"]
mod daemons;
#[path = "support/date.rs"]
mod date;

use daemons::{Daemon, DkimKey, Resolver};
use milter_spamfilter::verdict::{Disposition, Edit, Stage};
use milter_spamfilter::{Config, Content, Envelope, Filtered, Handle, Recipient, VerdictKind};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Messages, the envelope, one conversation.

/// A fixture from tests/daemons/, dated now (its Date in the file is only a placeholder: the
/// daemons score a message's age) and with CRLF line ends as the MTA hands a message over.
fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/daemons")
        .join(name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    crlf(&date::dated(&text))
}

/// LF line ends made CRLF (existing CRLF kept).
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 20);
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' && (i == 0 || text[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The plain message with its Subject and body replaced.
fn variant(subject: &str, body: &str) -> Vec<u8> {
    let plain = String::from_utf8(fixture("plain.eml")).expect("plain.eml is ASCII");
    let (header, _) = plain.split_once("\r\n\r\n").expect("plain.eml has a body");
    let header = header.replace(
        "Subject: Minutes of the Tuesday meeting",
        &format!("Subject: {subject}"),
    );
    crlf(format!("{header}\r\n\r\n{body}").as_bytes())
}

/// One SMTP client, as the MTA describes it to the library.
fn envelope() -> Envelope {
    Envelope {
        client_name: Some(b"mail.example.org".to_vec()),
        client_addr: Some("192.0.2.10".parse().expect("literal address")),
        client_port: 41234,
        helo: Some(b"mail.example.org".to_vec()),
        sender: b"alice@example.org".to_vec(),
        recipients: vec![Recipient::new(b"bob@example.net".to_vec())],
        macros: vec![
            (b"j".to_vec(), b"mx.example.net".to_vec()),
            (b"i".to_vec(), b"4DAEMON1".to_vec()),
        ],
        ..Envelope::default()
    }
}

/// Filters `message` through the daemon with a fresh handle; any error fails the test with the
/// daemon's logs.
fn filter(daemon: &Daemon, message: &[u8]) -> Filtered {
    let mut config = Config::with_host_port("127.0.0.1", daemon.port);
    config.timeout = Duration::from_secs(30);
    config.connect_timeout = Duration::from_secs(10);
    config.message_timeout = Duration::from_secs(60);
    config.debug = std::env::var("DAEMONS_DEBUG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let handle = Handle::new(config);
    match handle.filter(&envelope(), Content::Buffer(message)) {
        Ok(f) => {
            eprintln!(
                "{} ({} ms): {:?} at {:?}, reply {:?}\n{}",
                daemon.name,
                f.elapsed.as_millis(),
                f.outcome.disposition,
                f.outcome.stage,
                f.verdict.reply.as_deref().map(String::from_utf8_lossy),
                String::from_utf8_lossy(&f.verdict.script)
            );
            f
        }
        Err(e) => panic!("{}: {:?}: {e}\n{}", daemon.name, e.kind, daemon.logs()),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Reading the verdict back: a small Sieve tokenizer, enough for the scriptlets the library
// writes (commands of identifiers, tags, numbers, strings and string lists, ending in `;`).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    Tag(String),
    Number(u64),
    Str(Vec<u8>),
    List(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SieveCommand {
    name: String,
    args: Vec<Arg>,
}

/// The commands of a scriptlet, in order; a block (`if ... { ... }`) contributes its test's
/// command name with the arguments and then the commands inside it.
fn parse_sieve(script: &[u8]) -> Vec<SieveCommand> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut current: Option<SieveCommand> = None;
    let string = |i: &mut usize| -> Vec<u8> {
        let mut s = Vec::new();
        *i += 1;
        while *i < script.len() && script[*i] != b'"' {
            if script[*i] == b'\\' && *i + 1 < script.len() {
                *i += 1;
            }
            s.push(script[*i]);
            *i += 1;
        }
        assert!(*i < script.len(), "unterminated string in {}", text(script));
        *i += 1;
        s
    };
    while i < script.len() {
        let c = script[i];
        if c.is_ascii_whitespace() || c == b',' {
            i += 1;
        } else if c == b'"' {
            let s = string(&mut i);
            current
                .as_mut()
                .expect("a string outside a command")
                .args
                .push(Arg::Str(s));
        } else if c == b'[' {
            let mut list = Vec::new();
            i += 1;
            loop {
                while script[i].is_ascii_whitespace() || script[i] == b',' {
                    i += 1;
                }
                if script[i] == b']' {
                    i += 1;
                    break;
                }
                list.push(string(&mut i));
            }
            current
                .as_mut()
                .expect("a list outside a command")
                .args
                .push(Arg::List(list));
        } else if c == b';' || c == b'{' || c == b'}' {
            if let Some(cmd) = current.take() {
                out.push(cmd);
            }
            i += 1;
        } else if c == b':' {
            let start = i;
            i += 1;
            while i < script.len() && (script[i].is_ascii_alphanumeric() || script[i] == b'_') {
                i += 1;
            }
            current
                .as_mut()
                .expect("a tag outside a command")
                .args
                .push(Arg::Tag(text(&script[start..i])));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < script.len() && script[i].is_ascii_digit() {
                i += 1;
            }
            let n = text(&script[start..i]).parse().expect("a number");
            current
                .as_mut()
                .expect("a number outside a command")
                .args
                .push(Arg::Number(n));
        } else {
            let start = i;
            while i < script.len() && (script[i].is_ascii_alphanumeric() || script[i] == b'_') {
                i += 1;
            }
            assert!(i > start, "unexpected byte {c:#x} in {}", text(script));
            let name = text(&script[start..i]);
            match current.as_mut() {
                // A test inside a command (`if envelope ...`): keep it as a tag-like argument.
                Some(cmd) => cmd.args.push(Arg::Tag(name)),
                None => {
                    current = Some(SieveCommand {
                        name,
                        args: Vec::new(),
                    })
                }
            }
        }
    }
    assert!(
        current.is_none(),
        "a command without `;` in {}",
        text(script)
    );
    out
}

/// A header field the verdict adds: (name, value, at the end rather than at the top).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Added {
    name: String,
    value: String,
    last: bool,
}

/// The `addheader` actions of a verdict, in order.
fn added_headers(f: &Filtered) -> Vec<Added> {
    parse_sieve(&f.verdict.script)
        .into_iter()
        .filter(|c| c.name == "addheader")
        .map(|c| {
            let last = c.args.contains(&Arg::Tag(":last".to_string()));
            let strings: Vec<String> = c
                .args
                .iter()
                .filter_map(|a| match a {
                    Arg::Str(s) => Some(text(s)),
                    _ => None,
                })
                .collect();
            assert_eq!(strings.len(), 2, "addheader with name and value: {c:?}");
            Added {
                name: strings[0].clone(),
                value: strings[1].clone(),
                last,
            }
        })
        .collect()
}

/// Asserts a reject verdict: `ereject` with exactly `reply`, and nothing else.
fn assert_rejected(f: &Filtered, reply: &str) {
    assert_eq!(f.outcome.disposition, Disposition::Reject, "{f:?}");
    assert_eq!(f.outcome.stage, Stage::Eom, "{f:?}");
    assert_eq!(f.verdict.kind, VerdictKind::Sieve);
    assert_eq!(f.verdict.reply.as_deref().map(text).as_deref(), Some(reply));
    let quoted = reply.replace('\\', "\\\\").replace('"', "\\\"");
    assert_eq!(
        text(&f.verdict.script),
        format!("require [\"ereject\"];\r\nereject \"{quoted}\";\r\n")
    );
}

/// Asserts a verdict that only adds header fields at the end (`addheader :last`), with exactly
/// these names in any order (several Milters vary the order between runs), and returns them.
fn assert_adds_at_end(f: &Filtered, names: &[&str]) -> Vec<Added> {
    assert_eq!(f.verdict.kind, VerdictKind::Sieve, "{f:?}");
    assert!(f.verdict.reply.is_none(), "{f:?}");
    let commands = parse_sieve(&f.verdict.script);
    assert_eq!(
        commands[0],
        SieveCommand {
            name: "require".to_string(),
            args: vec![Arg::List(vec![b"editheader".to_vec()])]
        },
        "{}",
        text(&f.verdict.script)
    );
    assert!(
        commands[1..].iter().all(|c| c.name == "addheader"),
        "only addheader actions:\n{}",
        text(&f.verdict.script)
    );
    let added = added_headers(f);
    assert!(added.iter().all(|a| a.last), "all at the end: {added:?}");
    let got: BTreeSet<&str> = added.iter().map(|a| a.name.as_str()).collect();
    let want: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(got, want, "{}", text(&f.verdict.script));
    assert_eq!(added.len(), names.len(), "{added:?}");
    added
}

/// The value of the one added field `name` in `added`.
fn value_of<'a>(added: &'a [Added], name: &str) -> &'a str {
    &added
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("{name} in {added:?}"))
        .value
}

/// This machine's host name, which spamd reports.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .expect("/proc/sys/kernel/hostname")
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The result headers rspamd adds to a message it does not reject (their order varies).
const RSPAMD_HEADERS: [&str; 5] = [
    "X-Spamd-Result",
    "X-Rspamd-Action",
    "X-Rspamd-Server",
    "X-Spam-Status",
    "X-Rspamd-Queue-Id",
];

/// rspamd's proxy worker as a Milter: GTUBE is rejected with rspamd's own reply; a plain message
/// gets rspamd's result headers (in a different order at each run, so compared as a set).
#[test]
fn rspamd_rejects_gtube_with_its_own_reply_and_adds_its_headers_to_plain_mail() {
    let dns = Resolver::start(&[]);
    let rspamd = daemons::rspamd(&dns);

    let gtube = filter(&rspamd, &fixture("gtube.eml"));
    assert_rejected(&gtube, "554 5.7.1 Gtube pattern");

    let plain = filter(&rspamd, &fixture("plain.eml"));
    assert_eq!(plain.outcome.disposition, Disposition::Accept);
    let added = assert_adds_at_end(&plain, &RSPAMD_HEADERS);
    assert_eq!(value_of(&added, "X-Rspamd-Action"), "no action");
    assert_eq!(
        value_of(&added, "X-Rspamd-Server"),
        daemons::RSPAMD_HOSTNAME
    );
    // The queue id is the `i` macro the library passed.
    assert_eq!(value_of(&added, "X-Rspamd-Queue-Id"), "4DAEMON1");
    // "No, score=3.70" and "default: False [3.70 / 15.00];\r\n\tSYMBOL(score)[...];..." agree.
    let status = value_of(&added, "X-Spam-Status");
    let score = status
        .strip_prefix("No, score=")
        .unwrap_or_else(|| panic!("X-Spam-Status: {status}"));
    let result = value_of(&added, "X-Spamd-Result");
    assert!(
        result.starts_with(&format!("default: False [{score} / ")),
        "X-Spamd-Result: {result}"
    );
    // Its symbols are folded one to a line, as rspamd sent them.
    assert!(
        result.contains(";\r\n\tMIME_GOOD("),
        "X-Spamd-Result: {result}"
    );

    // CONNECTION_REUSE against rspamd: it answers every message with ACCEPT or a REPLYCODE at
    // end of message, after which a connection is never kept (libmilter would ignore QUIT_NC
    // there); every message still gets its own verdict, each on a new connection.
    let mut config = Config::with_host_port("127.0.0.1", rspamd.port);
    config.timeout = Duration::from_secs(30);
    config.connection_reuse = 4;
    let handle = Handle::new(config);
    for round in 0..3 {
        for (name, rejected) in [("gtube.eml", true), ("plain.eml", false)] {
            let message = fixture(name);
            let (result, transcript) = handle.filter_traced(&envelope(), Content::Buffer(&message));
            let f = result.unwrap_or_else(|e| panic!("round {round}, {name}: {e}"));
            assert!(
                !transcript.iter().any(|l| l.starts_with("reusing")),
                "round {round}, {name}: {}",
                transcript.join("\n")
            );
            if rejected {
                assert_rejected(&f, "554 5.7.1 Gtube pattern");
            } else {
                assert_eq!(f.outcome.disposition, Disposition::Accept, "round {round}");
                let added = assert_adds_at_end(&f, &RSPAMD_HEADERS);
                assert_eq!(value_of(&added, "X-Rspamd-Action"), "no action");
            }
        }
    }
}

/// spamass-milter in front of spamd: flagging (`-m`: headers only, the body and Content-Type
/// left alone) it adds X-Spam-Flag: YES to GTUBE and a "No" status to plain mail; with `-r -1`
/// it rejects GTUBE with its fixed reply; without `-m` (its default, a report for a body) it is
/// accepted too, and its body replacement is left out with the Content-Type that goes with it.
#[test]
fn spamass_milter_flags_gtube_or_rejects_it_with_r() {
    let dns = Resolver::start(&[]);
    let spamd = daemons::spamd(&dns);
    let flagging = daemons::spamass_milter(&dns, &spamd, &["-m"]);
    let rejecting = daemons::spamass_milter(&dns, &spamd, &["-m", "-r", "-1"]);
    let checker = |added: &[Added]| {
        let version = value_of(added, "X-Spam-Checker-Version");
        assert!(
            version.starts_with("SpamAssassin ")
                && version.ends_with(&format!(" on {}", hostname())),
            "X-Spam-Checker-Version: {version}"
        );
    };

    let flagged = filter(&flagging, &fixture("gtube.eml"));
    assert_eq!(flagged.outcome.disposition, Disposition::Continue);
    let added = assert_adds_at_end(
        &flagged,
        &[
            "X-Spam-Flag",
            "X-Spam-Status",
            "X-Spam-Level",
            "X-Spam-Checker-Version",
        ],
    );
    assert_eq!(value_of(&added, "X-Spam-Flag"), "YES");
    let status = value_of(&added, "X-Spam-Status");
    // The rules that hit, a comma-separated list that may be folded; which others hit besides
    // GTUBE may vary with the rules of the day (the fixture is dated when the test runs).
    let rules: Vec<&str> = status
        .split_once(" tests=")
        .map(|(_, r)| r.split(|c: char| c == ',' || c.is_whitespace()).collect())
        .unwrap_or_default();
    assert!(
        status.starts_with("Yes, score=") && rules.contains(&"GTUBE"),
        "X-Spam-Status: {status}"
    );
    assert_eq!(value_of(&added, "X-Spam-Level"), "*".repeat(50));
    checker(&added);

    let rejected = filter(&rejecting, &fixture("gtube.eml"));
    assert_rejected(&rejected, "550 5.7.1 Blocked by SpamAssassin");

    // Without -m, spamass-milter registers CHGBODY and replaces a spam's body with its report
    // (and its Content-Type with multipart/mixed): the library offers every action, so it is
    // accepted; the body stays, and so does the Content-Type that describes it.
    let reporting = daemons::spamass_milter(&dns, &spamd, &[]);
    let reported = filter(&reporting, &fixture("gtube.eml"));
    assert_eq!(reported.outcome.disposition, Disposition::Continue);
    assert!(
        reported.outcome.edits.contains(&Edit::ReplaceBody),
        "{:?}",
        reported.outcome.edits
    );
    let script = String::from_utf8_lossy(&reported.verdict.script).into_owned();
    assert!(script.contains("\"X-Spam-Flag\" \"YES\""), "{script}");
    assert!(
        !script.to_ascii_lowercase().contains("content-type"),
        "a Content-Type edit for a body that was not replaced: {script}"
    );

    let plain = filter(&flagging, &fixture("plain.eml"));
    assert_eq!(plain.outcome.disposition, Disposition::Continue);
    let added = assert_adds_at_end(
        &plain,
        &["X-Spam-Status", "X-Spam-Level", "X-Spam-Checker-Version"],
    );
    let status = value_of(&added, "X-Spam-Status");
    let score: f64 = status
        .strip_prefix("No, score=")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("X-Spam-Status: {status}"));
    // X-Spam-Level is one star per whole point of the score as SpamAssassin holds it, while
    // X-Spam-Status shows that score rounded to a tenth: a score of 2.96 shows as 3.0 with two
    // stars. (Which rules hit, and so the score, moves with the fixture's age: DATE_IN_PAST_*.)
    let level = value_of(&added, "X-Spam-Level");
    let stars = level.len();
    let (low, high) = (
        (score - 0.05).max(0.0).floor() as usize,
        (score + 0.049).max(0.0).floor() as usize,
    );
    assert!(
        level.bytes().all(|b| b == b'*') && (low..=high).contains(&stars),
        "X-Spam-Level {level:?} for X-Spam-Status {status}"
    );
    checker(&added);
}

/// clamav-milter with clamd and a locally built EICAR signature: the EICAR message is rejected
/// with clamav-milter's reply naming the signature; a clean one gets `X-Virus-Status: Clean`.
#[test]
fn clamav_milter_rejects_eicar_and_marks_clean_mail() {
    let dns = Resolver::start(&[]);
    let clamav = daemons::clamav(&dns);
    let scanned_by = |value: &str| {
        assert!(
            value.starts_with("clamav-milter ")
                && value.ends_with(&format!(" at {}", daemons::CLAMAV_HOSTNAME)),
            "X-Virus-Scanned: {value}"
        );
    };

    let eicar = variant("Test file", &format!("{}\r\n", daemons::eicar()));
    let infected = filter(&clamav, &eicar);
    let virus = "Eicar-Test-Local.UNOFFICIAL";
    assert_rejected(
        &infected,
        &format!("550 5.7.1 {}", daemons::CLAMAV_REJECT.replace("%v", virus)),
    );
    // clamav-milter marked the message before rejecting it; a rejected message keeps none of it.
    let edits: Vec<(String, String)> = infected
        .outcome
        .edits
        .iter()
        .filter_map(|e| match e {
            Edit::AddHeader { name, value } => Some((text(name), text(value))),
            _ => None,
        })
        .collect();
    assert_eq!(edits.len(), 2, "{edits:?}");
    scanned_by(&edits[0].1);
    assert_eq!(
        edits[1],
        ("X-Virus-Status".to_string(), format!("Infected ({virus})"))
    );

    let clean = filter(&clamav, &fixture("plain.eml"));
    assert_eq!(clean.outcome.disposition, Disposition::Accept);
    let added = assert_adds_at_end(&clean, &["X-Virus-Scanned", "X-Virus-Status"]);
    assert_eq!(added[0].name, "X-Virus-Scanned");
    scanned_by(&added[0].value);
    assert_eq!(value_of(&added, "X-Virus-Status"), "Clean");
}

/// opendkim signs a message through the library; the DKIM-Signature of the verdict, put on the
/// message as the MTA's Sieve would, verifies as `dkim=pass` through opendkim in verify mode;
/// the same signature over a changed body gives `dkim=fail`, and no signature `dkim=none`.
#[test]
fn opendkim_verifies_what_it_signed_through_the_library() {
    let key = DkimKey::generate();
    let dns = Resolver::start(&[key.record()]);
    let signer = daemons::opendkim_signer(&dns, &key);
    let verifier = daemons::opendkim_verifier(&dns);

    let message = fixture("plain.eml");
    let signed = filter(&signer, &message);
    assert_eq!(signed.outcome.disposition, Disposition::Accept);
    // One field, at the top of the header (opendkim inserts it at index 0).
    let added = added_headers(&signed);
    assert_eq!(added.len(), 1, "{added:?}");
    let Added { name, value, last } = &added[0];
    assert_eq!((name.as_str(), *last), ("DKIM-Signature", false));
    assert!(
        value.starts_with("v=1; a=rsa-sha256; c=simple/simple; d=example.org; s=test;"),
        "DKIM-Signature: {value}"
    );
    // header.b in the results is the first 8 characters of the b= tag.
    let b: String = value
        .split(';')
        .find_map(|tag| tag.trim().strip_prefix("b="))
        .expect("a b= tag")
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(8)
        .collect();

    // The signature applied as the verdict says: `addheader` puts `Name: value` at the top.
    let mut with_signature = format!("DKIM-Signature: {value}\r\n").into_bytes();
    with_signature.extend_from_slice(&message);
    let results = |m: &[u8]| {
        let f = filter(&verifier, m);
        assert_eq!(f.outcome.disposition, Disposition::Accept);
        let added = added_headers(&f);
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(
            (added[0].name.as_str(), added[0].last),
            ("Authentication-Results", false)
        );
        added[0].value.clone()
    };
    assert_eq!(
        results(&with_signature),
        format!(
            "verifier.example.net;\r\n\tdkim=pass (2048-bit key; unprotected) \
             header.d=example.org header.i=@example.org header.a=rsa-sha256 header.s=test \
             header.b={b};\r\n\tdkim-atps=neutral"
        )
    );
    // The verifier found the key through the loopback resolver.
    assert!(
        dns.log().contains("query[TXT] test._domainkey.example.org"),
        "{}",
        dns.log()
    );

    let tampered = text(&with_signature).replace("next week", "next year");
    assert_ne!(tampered.as_bytes(), with_signature.as_slice());
    assert_eq!(
        results(tampered.as_bytes()),
        format!(
            "verifier.example.net;\r\n\tdkim=fail reason=\"signature verification failed\" \
             (2048-bit key; unprotected) header.d=example.org header.i=@example.org \
             header.a=rsa-sha256 header.s=test header.b={b};\r\n\tdkim-atps=neutral"
        )
    );

    assert_eq!(
        results(&message),
        "verifier.example.net; dkim=none; dkim-atps=neutral"
    );
}

/// mimedefang with a small filter (tests/daemons/mimedefang-filter.pl): every message gets
/// `X-Defang-Test: checked`; a Subject with "forbidden" is rejected with the filter's reply.
#[test]
fn mimedefang_adds_its_header_and_rejects_a_keyword() {
    let dns = Resolver::start(&[]);
    let filter_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/daemons/mimedefang-filter.pl");
    let mimedefang = daemons::mimedefang(&dns, &filter_file);

    let plain = filter(&mimedefang, &fixture("plain.eml"));
    assert_eq!(plain.outcome.disposition, Disposition::Continue);
    let added = assert_adds_at_end(&plain, &["X-Defang-Test", "X-Scanned-By"]);
    assert_eq!(
        added[0].name, "X-Defang-Test",
        "the filter's own header first"
    );
    assert_eq!(value_of(&added, "X-Defang-Test"), "checked");
    let scanned = value_of(&added, "X-Scanned-By");
    assert!(
        scanned.starts_with("MIMEDefang ") && scanned.contains(" on "),
        "X-Scanned-By: {scanned}"
    );

    let keyword = filter(&mimedefang, &variant("A forbidden subject", "Hello.\r\n"));
    assert_rejected(&keyword, "554 5.7.1 Forbidden keyword in Subject");
}
