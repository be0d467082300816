//! The Brightmail client API (BMI) face of the library, as an MTA uses it: the C programs
//! c_tests/bmi_*.c dlopen the built cdylib and look up the bmi* names only, as Messaging Server
//! and Exim do. Against real Milters (tests/milters/any_reply.py and load_milter.py, pymilter on
//! libmilter: package python3-milter), with Sieve verdicts checked by Pigeonhole (package
//! dovecot-sieve). Also: the Rust signatures against include/bmi_api.h (a compile), the
//! exported names (nm -D), and bad input of every kind (c_tests/bmi_abuse.c).

#[path = "../fuzz/bmi_checks.rs"]
mod bmi_checks;
#[path = "support/milters.rs"]
mod milters;
#[path = "support/sieve.rs"]
mod sieve;
mod support {
    pub mod built;
    pub mod load_milter;
    pub mod tempdir;
}

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::built::{library, made};
use support::load_milter::LoadMilter;
use support::tempdir::TempDir;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// build/`name`, made from c_tests/`name`.c by the Makefile (as `make memcheck` runs it).
fn program(name: &str) -> PathBuf {
    made(&format!("build/{name}"))
}

/// Runs cc on `source` (C11, -Wall -Wextra -Werror, include/ and `include` on the path).
fn compile(source: &str, out: &Path, include: &[&Path]) -> Result<(), String> {
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{MANIFEST}/include"));
    for dir in include {
        cmd.arg(format!("-I{}", dir.display()));
    }
    let result = cmd
        .arg("-o")
        .arg(out)
        .arg(Path::new(MANIFEST).join(source))
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (install the Debian package gcc): {e}"));
    if result.status.success() {
        Ok(())
    } else {
        Err(format!(
            "compiling {source} failed:\n{}",
            String::from_utf8_lossy(&result.stderr)
        ))
    }
}

/// The function names a C header declares or mentions: each `bmiName` right before a `(`.
fn declared_functions(header: &str) -> BTreeSet<String> {
    header
        .split('(')
        .filter_map(|before| {
            let name = before
                .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()?;
            name.starts_with("bmi").then(|| name.to_string())
        })
        .collect()
}

fn bmi_api_h() -> String {
    std::fs::read_to_string(Path::new(MANIFEST).join("include/bmi_api.h")).expect("bmi_api.h")
}

// ---------------------------------------------------------------------------------------------
// The interface itself.

#[test]
fn rust_signatures_match_the_header() {
    let generated = Path::new(env!("OUT_DIR"));
    let decls = std::fs::read_to_string(generated.join("bmi_declarations.h"))
        .expect("build.rs writes OUT_DIR/bmi_declarations.h");
    // The same functions on both sides...
    assert_eq!(declared_functions(&bmi_api_h()).len(), 33);
    assert_eq!(declared_functions(&decls), declared_functions(&bmi_api_h()));
    // ...with the same types: declaring one twice differently does not compile.
    let dir = TempDir::new("signatures");
    compile("c_tests/bmi_signatures.c", &dir.path("sig"), &[generated])
        .unwrap_or_else(|e| panic!("a Rust signature differs from include/bmi_api.h:\n{e}"));
    // And the check has teeth: one parameter's type changed is a compile error.
    let wrong = decls.replace(
        "bmiAccumulateBody(const char *chunk, int length",
        "bmiAccumulateBody(const char *chunk, long length",
    );
    assert_ne!(wrong, decls, "the declaration to break was not found");
    std::fs::write(dir.path("bmi_declarations.h"), wrong).unwrap();
    let e = compile("c_tests/bmi_signatures.c", &dir.path("sig2"), &[dir.dir()])
        .expect_err("a changed signature compiled");
    assert!(e.contains("conflicting types"), "{e}");
}

#[test]
fn the_header_compiles_as_c_and_cpp_with_every_warning() {
    let dir = TempDir::new("header");
    let src = dir.write(
        "h.c",
        "#include \"bmi_api.h\"\nint main(void) { return BMI_TRUE - 1; }\n",
    );
    for (cc, std) in [("cc", "-std=c11"), ("c++", "-std=c++11")] {
        let mut cmd = Command::new(cc);
        cmd.args([std, "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .arg(format!("-I{MANIFEST}/include"))
            .arg("-o")
            .arg(dir.path("h"));
        if cc == "c++" {
            cmd.args(["-x", "c++"]);
        }
        let out = cmd
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cc} (Debian packages gcc, g++): {e}"));
        assert!(
            out.status.success(),
            "{cc} {std}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `NAME = N` of the header's enums.
fn header_value(header: &str, name: &str) -> u32 {
    header
        .lines()
        .find_map(|l| {
            let (n, v) = l.trim().split_once(" = ")?;
            (n == name).then(|| v.trim_end_matches(',').trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{name} not in bmi_api.h"))
}

#[test]
fn the_header_numbers_are_the_librarys() {
    use milter_spamfilter::bmi::error::{kind, location};
    let h = bmi_api_h();
    for (name, v) in [
        ("NONE", location::NONE),
        ("SERVER", location::SERVER),
        ("NETWORK", location::NETWORK),
        ("CLIENT", location::CLIENT),
        ("CONFIG", location::CONFIG),
    ] {
        assert_eq!(
            header_value(&h, &format!("BMI_ERROR_LOCATION_{name}")),
            v,
            "{name}"
        );
    }
    for (name, v) in [
        ("NONE", kind::NONE),
        ("MEMORY", kind::MEMORY),
        ("CONFIG", kind::CONFIG),
        ("CONNECT", kind::CONNECT),
        ("TIMEOUT", kind::TIMEOUT),
        ("IO", kind::IO),
        ("INVALID_ARG", kind::INVALID_ARG),
        ("PROTOCOL", kind::PROTOCOL),
        ("TEMPFAIL", kind::TEMPFAIL),
        ("STATE", kind::STATE),
        ("BAD_VERDICT", kind::BAD_VERDICT),
        ("INTERNAL", kind::INTERNAL),
    ] {
        assert_eq!(
            header_value(&h, &format!("BMI_ERROR_TYPE_{name}")),
            v,
            "{name}"
        );
    }
    assert!(h.contains("#define BMI_ERROR_WARNING ((BmiError)0x00800000u)"));
    assert_eq!(milter_spamfilter::bmi::error::WARNING, 0x0080_0000);
}

#[test]
fn nm_lists_every_bmi_function_beside_the_spamfilter_ones() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(library())
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (Debian package binutils): {e}"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[1] == "T").then(|| f[2].to_string())
        })
        .collect();
    let wanted = declared_functions(&bmi_api_h());
    assert_eq!(wanted.len(), 33, "bmi_api.h declares {wanted:?}");
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    let bmi: Vec<&String> = exported.iter().filter(|n| n.starts_with("bmi")).collect();
    assert_eq!(bmi.len(), 33, "exactly the header's bmi functions: {bmi:?}");
    for f in [
        "spamfilter_init",
        "spamfilter_filter",
        "spamfilter_last_error",
    ] {
        assert!(exported.contains(f), "{f} is no longer exported");
    }
}

#[test]
fn the_bmi_functions_stay_out_of_milter_spamfilter_h() {
    let h = std::fs::read_to_string(Path::new(MANIFEST).join("include/milter_spamfilter.h"))
        .expect("milter_spamfilter.h");
    assert!(
        declared_functions(&h).is_empty() && !h.contains("Bmi"),
        "BMI in milter_spamfilter.h"
    );
}

#[test]
fn every_bad_call_is_a_clear_error_and_never_a_crash() {
    let dir = TempDir::new("abuse");
    let port = milters::free_port();
    let live = LoadMilter::start();
    let out = Command::new(program("bmi_abuse"))
        .arg(library())
        .arg(dir.dir())
        .arg(port.to_string())
        .arg(live.port.to_string())
        .output()
        .expect("running bmi_abuse");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok "),
        "bmi_abuse: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_verdict_string_fuzz_corpus_replays_cleanly() {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let path = Path::new(MANIFEST)
            .join("fuzz")
            .join(dir)
            .join("bmi_verdict_str");
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            let data = std::fs::read(entry.path()).expect("a corpus file");
            bmi_checks::check_bmi_verdict_str(&data);
            n += 1;
        }
    }
    assert!(n >= 4, "fuzz/corpus/bmi_verdict_str holds {n} inputs");
}

// ---------------------------------------------------------------------------------------------
// Messages through real Milters, as the MTA sends them.

/// One verdict as bmi_mta printed it.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    error: u32,
    default: bool,
    old: String,
    destination: Option<String>,
    recipients: Vec<String>,
    string: String,
}

/// What one message got: verdicts, or a fatal error of a call.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Verdicts(Vec<Verdict>),
    Fatal {
        call: String,
        location: u32,
        kind: u32,
        text: String,
    },
}

impl Got {
    fn verdicts(&self) -> &[Verdict] {
        match self {
            Got::Verdicts(v) => v,
            Got::Fatal { .. } => panic!("a fatal error, not verdicts: {self:?}"),
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    out
}

/// bmi_mta's output, per message; and the peak memory growths it printed.
fn parse_run(stdout: &str) -> (Vec<Got>, Vec<i64>) {
    let mut messages = Vec::new();
    let mut rss = Vec::new();
    for line in stdout.lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "message" => messages.push(Got::Verdicts(Vec::new())),
            "rss_growth_kb" => rss.push(rest.parse().expect("a number")),
            "fatal" => {
                let f: Vec<&str> = rest.splitn(4, ' ').collect();
                *messages.last_mut().expect("a message") = Got::Fatal {
                    call: f[0].to_string(),
                    location: f[1].parse().expect("location"),
                    kind: f[2].parse().expect("type"),
                    text: unescape(f.get(3).copied().unwrap_or("")),
                };
            }
            "verdict" => {
                let field = |k: &str| {
                    rest.split(' ')
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                        .unwrap_or_else(|| panic!("no {k} in {line}"))
                        .to_string()
                };
                let Some(Got::Verdicts(list)) = messages.last_mut() else {
                    panic!("a verdict outside a message: {stdout}")
                };
                list.push(Verdict {
                    error: u32::from_str_radix(field("error").trim_start_matches("0x"), 16)
                        .expect("hex"),
                    default: field("default") == "1",
                    old: field("old"),
                    destination: None,
                    recipients: Vec::new(),
                    string: String::new(),
                });
            }
            "destination" | "recipient" | "string" => {
                let Some(Got::Verdicts(list)) = messages.last_mut() else {
                    panic!("{word} outside a message: {stdout}")
                };
                let v = list.last_mut().expect("a verdict");
                match word {
                    "destination" if rest == "NULL" => v.destination = None,
                    "destination" => v.destination = Some(unescape(rest)),
                    "recipient" => v.recipients.push(rest.to_string()),
                    _ => v.string = rest.to_string(),
                }
            }
            _ => panic!("unexpected line from bmi_mta: {line}"),
        }
    }
    (messages, rss)
}

const MESSAGE: &str = "Received: from client.example.org (client.example.org [192.0.2.7])\n\
    \tby mx.example.org with ESMTP id 1a2b3c\n\
    From: Sender <sender@example.org>\n\
    To: a@example.org, b@example.org\n\
    Subject: a BMI message\n\
    X-Folded: one\n two\n\
    Message-ID: <bmi-1@example.org>\n\
    \n\
    Hello,\n\
    this is the body.\n";

/// Runs bmi_mta on `option_file` with `args` (MESSAGE unless --body-mb says otherwise).
fn run_mta(dir: &TempDir, option_file: &Path, args: &[&str]) -> (Vec<Got>, Vec<i64>) {
    let message = dir.write("message.eml", MESSAGE);
    let out = Command::new(program("bmi_mta"))
        .arg(library())
        .arg(option_file)
        .arg(&message)
        .args(args)
        .output()
        .expect("running bmi_mta");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bmi_mta {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_run(&stdout)
}

fn option_file(dir: &TempDir, port: u16, extra: &str) -> PathBuf {
    dir.write(
        "milter.opt",
        format!("HOST=127.0.0.1\nPORT={port}\nTIMEOUT=5000\n{extra}"),
    )
}

/// One message with recipients `to` through an any_reply Milter with `spec`.
fn through(spec: &str, to: &[&str]) -> (Got, milters::Server) {
    let milter = milters::any_reply(spec);
    let dir = TempDir::new("msg");
    let opt = option_file(&dir, milter.port, "");
    let mut args = vec!["--from", "sender@example.org"];
    for t in to {
        args.extend(["--to", t]);
    }
    let (mut got, _) = run_mta(&dir, &opt, &args);
    assert_eq!(got.len(), 1);
    (got.remove(0), milter)
}

/// The BMI location and type constants.
use milter_spamfilter::bmi::error::{kind, location};

#[test]
fn a_clean_message_is_one_default_verdict_and_the_milter_saw_it_as_sent() {
    let (got, milter) = through("{}", &["a@example.org", "b@example.org"]);
    let v = got.verdicts();
    assert_eq!(v.len(), 1, "{got:?}");
    assert!(v[0].default && v[0].destination.is_none() && v[0].error == 0);
    assert_eq!(v[0].old, "default");
    assert_eq!(v[0].recipients, ["a@example.org", "b@example.org"]);
    assert!(v[0].string.starts_with("MSF1"));
    // The conversation followed the calls: CONNECT with the IP only, MAIL, RCPT each, every
    // header field with its folding, the body.
    let r = milter.recorded("sender@example.org");
    let connect = r.first("connect");
    assert_eq!(connect.get("address").text().as_deref(), Some("127.0.0.1"));
    assert!(r.all("helo").is_empty(), "BMI knows no HELO: {}", r.line);
    let rcpts: Vec<String> = r
        .all("envrcpt")
        .iter()
        .map(|e| e.get("args").texts()[0].clone())
        .collect();
    assert_eq!(rcpts, ["<a@example.org>", "<b@example.org>"]);
    let names: Vec<String> = r.headers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "Received",
            "From",
            "To",
            "Subject",
            "X-Folded",
            "Message-ID"
        ]
    );
    let folded = &r.headers()[4].1;
    assert!(
        folded.ends_with(b"one\r\n two") || folded.ends_with(b"one\n two"),
        "{:?}",
        String::from_utf8_lossy(folded)
    );
    let body = r.first("eom").get("body").bytes().unwrap_or_default();
    assert_eq!(body, b"Hello,\r\nthis is the body.\r\n");
}

#[test]
fn a_reject_is_a_destination_with_ereject() {
    let (got, _m) = through(
        r#"{"replies": {"eom": "554 5.7.1 spam detected"}}"#,
        &["a@example.org", "b@example.org"],
    );
    let v = got.verdicts();
    assert_eq!(v.len(), 1, "{got:?}");
    assert!(!v[0].default);
    assert_eq!(v[0].old, "alternate");
    let d = v[0].destination.as_deref().expect("a destination");
    assert!(d.contains("ereject \"554 5.7.1 spam detected\";"), "{d}");
    let applied = sieve::pigeonhole().apply(
        &sieve::for_pigeonhole(d.as_bytes()),
        MESSAGE.as_bytes(),
        "a@example.org",
    );
    assert!(applied.rejected(), "{}", applied.log);
}

#[test]
fn an_edit_is_the_sieve_verdict_and_pigeonhole_applies_it() {
    let (got, _m) = through(
        r#"{"edits": [["addheader", "X-Spam-Flag", "YES"], ["chgheader", "Subject", 1, "[SPAM] a BMI message"]]}"#,
        &["a@example.org"],
    );
    let v = got.verdicts();
    assert_eq!(v.len(), 1, "{got:?}");
    let d = v[0].destination.as_deref().expect("a destination");
    let applied = sieve::pigeonhole().apply(
        &sieve::for_pigeonhole(d.as_bytes()),
        MESSAGE.as_bytes(),
        "a@example.org",
    );
    assert_eq!(applied.stored.len(), 1, "{}", applied.log);
    let stored = String::from_utf8_lossy(&applied.stored[0].message).into_owned();
    assert!(stored.contains("X-Spam-Flag: YES"), "{stored}");
    assert!(stored.contains("Subject: [SPAM] a BMI message"), "{stored}");
    assert!(!stored.contains("Subject: a BMI message"), "{stored}");
}

#[test]
fn a_discard_is_a_null_destination() {
    let (got, _m) = through(
        r#"{"replies": {"eom": "discard"}}"#,
        &["a@example.org", "b@example.org"],
    );
    let v = got.verdicts();
    assert_eq!(v.len(), 1, "{got:?}");
    assert!(!v[0].default && v[0].destination.is_none() && v[0].error == 0);
    assert_eq!(v[0].old, "discard");
}

#[test]
fn a_recipient_refused_at_rcpt_gets_its_own_verdict() {
    let (got, _m) = through(
        r#"{"replies": {"envrcpt": {"bad@example.org": "550 5.1.1 no such user", "*": "continue"}}}"#,
        &["a@example.org", "bad@example.org", "b@example.org"],
    );
    let v = got.verdicts();
    assert_eq!(v.len(), 2, "{got:?}");
    assert_eq!(v[0].recipients, ["a@example.org", "b@example.org"]);
    assert!(v[0].default);
    assert_eq!(v[1].recipients, ["bad@example.org"]);
    let d = v[1].destination.as_deref().expect("its own ereject");
    assert!(d.contains("ereject \"550 5.1.1 no such user\";"), "{d}");
    let applied = sieve::pigeonhole().apply(
        &sieve::for_pigeonhole(d.as_bytes()),
        MESSAGE.as_bytes(),
        "bad@example.org",
    );
    assert!(applied.rejected(), "{}", applied.log);
}

#[test]
fn a_recipient_deferred_at_rcpt_gets_a_verdict_with_a_fatal_error() {
    let (got, _m) = through(
        r#"{"replies": {"envrcpt": {"busy@example.org": "451 4.3.0 mailbox busy", "*": "continue"}, "eom": "discard"}}"#,
        &["busy@example.org", "a@example.org"],
    );
    let v = got.verdicts();
    assert_eq!(v.len(), 2, "{got:?}");
    assert_eq!(v[0].recipients, ["busy@example.org"]);
    assert_eq!(v[0].error >> 24, location::SERVER);
    assert_eq!(v[0].error & 0x7f_ffff, kind::TEMPFAIL);
    assert_eq!(v[0].old, "error");
    // The others: the message's own outcome.
    assert_eq!(v[1].recipients, ["a@example.org"]);
    assert!(!v[1].default && v[1].destination.is_none(), "{:?}", v[1]);
}

#[test]
fn a_message_the_milter_defers_is_a_fatal_server_tempfail() {
    let (got, _m) = through(
        r#"{"replies": {"eom": "451 4.7.1 try later"}}"#,
        &["a@example.org"],
    );
    match got {
        Got::Fatal {
            call,
            location: l,
            kind: k,
            text,
        } => {
            assert_eq!(call, "bmiEndMessage");
            assert_eq!((l, k), (location::SERVER, kind::TEMPFAIL));
            assert!(text.contains("451 4.7.1 try later"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreachable_milter_is_a_fatal_network_error_with_a_text() {
    let dir = TempDir::new("unreachable");
    let port = milters::free_port();
    let opt = option_file(&dir, port, "CONNECT_TIMEOUT=2000\n");
    let (got, _) = run_mta(&dir, &opt, &["--to", "a@example.org"]);
    match &got[0] {
        Got::Fatal {
            location: l,
            kind: k,
            text,
            ..
        } => {
            assert_eq!((*l, *k), (location::NETWORK, kind::CONNECT), "{got:?}");
            assert!(
                text.contains(&format!("127.0.0.1:{port}")) && text.contains("PORT"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The option-file cache, and connections kept across bmiInitSystem/bmiFreeSystem.

#[test]
fn a_changed_option_file_is_read_again() {
    let milter = milters::any_reply(r#"{"replies": {"eom": "discard"}}"#);
    let dir = TempDir::new("reload");
    let closed = milters::free_port();
    let opt = option_file(&dir, closed, "CONNECT_TIMEOUT=2000\n");
    // After the first message the file names the live Milter: the second message goes there.
    let live = dir.write(
        "live.opt",
        format!("HOST=127.0.0.1\nPORT={}\nTIMEOUT=5000\n", milter.port),
    );
    let (got, _) = run_mta(
        &dir,
        &opt,
        &[
            "--to",
            "a@example.org",
            "--repeat",
            "3",
            "--swap",
            live.to_str().unwrap(),
        ],
    );
    assert!(
        matches!(&got[0], Got::Fatal { location: l, .. } if *l == location::NETWORK),
        "{got:?}"
    );
    for g in &got[1..] {
        let v = g.verdicts();
        assert!(
            v.len() == 1 && v[0].destination.is_none() && !v[0].default,
            "{got:?}"
        );
    }
}

/// A transparent TCP relay to `to` on a free loopback port that counts the connections it
/// accepts: the Milter's records cannot tell (libmilter calls its close callback at QUIT_NC, so
/// a kept connection is recorded as one connection per message).
struct Counter {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counter {
    fn new(to: u16) -> Counter {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    pipe(client, server);
                    pipe(s2, c2);
                }
            }
        });
        Counter { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_kept_connection_serves_the_next_init_free_pair() {
    let milter = milters::any_reply("{}");
    for reuse in [1, 0] {
        let counter = Counter::new(milter.port);
        let dir = TempDir::new("reuse");
        let opt = option_file(&dir, counter.port, &format!("CONNECTION_REUSE={reuse}\n"));
        let (got, _) = run_mta(&dir, &opt, &["--to", "a@example.org", "--repeat", "4"]);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|g| g.verdicts()[0].default), "{got:?}");
        let n = counter.accepted();
        if reuse == 1 {
            // One connection for the four messages, each with its own bmiInitSystem and
            // bmiFreeSystem; and at most one more, on which the library asks once whether the
            // Milter answers OPTNEG after QUIT_NC (src/resume.rs).
            assert!(
                n <= 2,
                "{n} connections for 4 messages with CONNECTION_REUSE=1"
            );
        } else {
            assert_eq!(n, 4, "CONNECTION_REUSE=0: a connection per message");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Memory: no message is held whole.

#[test]
fn a_100_mb_body_in_4_kb_chunks_grows_the_peak_memory_by_less_than_2_mb() {
    let milter = LoadMilter::start();
    let dir = TempDir::new("memory");
    let opt = option_file(&dir, milter.port, "MESSAGE_TIMEOUT=600000\n");
    let message = dir.write("load.eml", "Subject: load 0\nFrom: a@example.org\n\nx\n");
    let out = Command::new(program("bmi_mta"))
        .arg(library())
        .arg(&opt)
        .arg(&message)
        .args([
            "--to",
            "a@example.org",
            "--body-mb",
            "100",
            "--chunk",
            "4096",
            "--rss",
        ])
        .output()
        .expect("running bmi_mta");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, rss) = parse_run(&stdout);
    // The Milter got every byte (64-byte lines, each LF sent as CRLF).
    let total: u64 = 100 << 20;
    let d = got[0].verdicts()[0].destination.clone().expect("a verdict");
    assert!(
        d.contains(&format!("\"X-Body-Bytes\" \"{}\";", total + total / 64)),
        "{d}"
    );
    assert!(
        rss[0] < 2048,
        "peak memory grew by {} KB during the body",
        rss[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Threads: different messages pushed at the same time.

/// One load message (its verdict follows the Subject's number `n`, see load_milter.py) pushed
/// through the exported functions; panics unless it got its own verdict.
fn load_message(option_file: &std::ffi::CStr, n: usize) {
    use milter_spamfilter::bmi::*;
    use std::ffi::{CStr, CString};
    use std::ptr::{null, null_mut};
    let text = |s: String| CString::new(s).expect("no NUL");
    let last = || {
        // SAFETY: the library's per-thread last-error string, valid until its next call here.
        unsafe { CStr::from_ptr(milter_spamfilter::ffi::spamfilter_last_error()) }
            .to_string_lossy()
            .into_owned()
    };
    let subject = text(format!("Subject: load {n}\n"));
    let sender = text("From: a@example.org\n".into());
    let body = "line\n".repeat(n % 5 + 1);
    let (ip, from, to) = (
        text("192.0.2.1".into()),
        text("".into()),
        text("x@example.org".into()),
    );
    // SAFETY: every pointer is a live C string or an out-parameter of ours; the system and the
    // message are freed once, at the end, and used by this thread only.
    unsafe {
        let mut system = null_mut();
        assert_eq!(
            bmiInitSystem(1, option_file.as_ptr(), &mut system),
            0,
            "{}",
            last()
        );
        let mut m = null_mut();
        assert_eq!(bmiInitMessage(system, &mut m), 0);
        let steps = [
            bmiProcessConnection(ip.as_ptr(), m),
            bmiProcessFROM(from.as_ptr(), m),
            bmiAccumulateTO(to.as_ptr(), null_mut(), m),
            bmiEndTO(m),
            bmiAccumulateHeaders(subject.as_ptr(), subject.as_bytes().len() as i32, m),
            bmiAccumulateHeaders(sender.as_ptr(), sender.as_bytes().len() as i32, m),
            bmiEndHeaders(m),
            bmiAccumulateBody(body.as_ptr().cast(), body.len() as i32, m),
            bmiEndBody(m),
        ];
        assert!(
            steps.iter().all(|&e| e == 0),
            "message {n}: {steps:x?}: {}",
            last()
        );
        let end = bmiEndMessage(m);
        let mut v = null();
        bmiAccessFirstVerdict(m, &mut v);
        let destination = || {
            let d = bmiVerdictAccessDestination(v);
            (!d.is_null()).then(|| CStr::from_ptr(d).to_string_lossy().into_owned())
        };
        match n % 4 {
            0 => {
                let d = destination().unwrap_or_else(|| panic!("message {n}: {end:x} {}", last()));
                assert!(
                    d.contains(&format!("\"X-Load-Id\" \"{n}\";")),
                    "message {n}: {d}"
                );
                let bytes = body.len() * 6 / 5;
                assert!(
                    d.contains(&format!("\"X-Body-Bytes\" \"{bytes}\";")),
                    "{n}: {d}"
                );
            }
            1 => {
                let d = destination().unwrap_or_else(|| panic!("message {n}: {end:x} {}", last()));
                let want = format!("ereject \"550 5.7.1 rejected load message {n}\";");
                assert!(d.contains(&want), "message {n}: {d}");
            }
            2 => {
                assert_eq!(end, error::TEMPFAIL, "message {n}");
                assert!(v.is_null());
                assert!(
                    last().contains(&format!("deferred load message {n}")),
                    "{}",
                    last()
                );
            }
            _ => {
                assert_eq!(end, 0, "message {n}: {}", last());
                assert!(!v.is_null() && destination().is_none(), "message {n}");
                assert_eq!(bmiVerdictDestinationIsDefault(v), BMI_FALSE, "message {n}");
            }
        }
        bmiFreeMessage(m);
        bmiFreeSystem(system);
    }
}

#[test]
fn messages_pushed_from_several_threads_at_once_each_get_their_own_verdict() {
    let milter = LoadMilter::with_connect(0);
    let dir = TempDir::new("threads");
    let opt = option_file(&dir, milter.port, "CONNECTION_REUSE=2\n");
    let path = std::ffi::CString::new(opt.to_str().expect("a UTF-8 path")).expect("no NUL");
    std::thread::scope(|s| {
        for t in 0..4 {
            let path = &path;
            s.spawn(move || {
                for k in 0..12 {
                    load_message(path, t * 12 + k);
                }
            });
        }
    });
}

/// At DEBUG=1 a message through the BMI face gets its one line, as through spamfilter_filter:
/// the Milter, the verdict the spamfilter_* face would have returned, and the time.
#[test]
fn debug_1_logs_one_line_per_bmi_message() {
    let milter = milters::any_reply(r#"{"replies": {"eom": "discard"}}"#);
    let dir = TempDir::new("debug");
    let log = dir.path("filter.log");
    let opt = option_file(
        &dir,
        milter.port,
        &format!("DEBUG=1\nLOG_FILE={}\n", log.display()),
    );
    let (got, _) = run_mta(&dir, &opt, &["--to", "a@example.org"]);
    assert_eq!(got.len(), 1, "{got:?}");
    let text = std::fs::read_to_string(&log).expect("the log file was written");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("milter 127.0.0.1:{}", milter.port)))
        .collect();
    assert_eq!(lines.len(), 1, "one line per message:\n{text}");
    assert!(
        lines[0].contains("discard") && lines[0].contains(" ms"),
        "{}",
        lines[0]
    );
}
