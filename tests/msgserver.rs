//! The library loaded as Messaging Server loads it (issue 17, item 5): `spamfilter-load
//! --option-dat` (tools/msgserver.c) reads an MTA option file, dlopens every
//! `spamfilterN_library` by its path, looks up the BMI names only, runs every slot's whole BMI
//! call sequence on its own thread, all slots at once on the same message, and applies
//! `spamfilterN_null_action`, `spamfilterN_string_action` (with `$U`) and `spamfilterN_optional`.
//! Every test talks to real pymilter Milters (tests/milters/any_reply.py); the parallel run is
//! proven by two Milters that each wait at end of message for the other to arrive.

#[path = "support/milters.rs"]
mod milters;
#[path = "support/sieve.rs"]
mod sieve;

mod support {
    pub mod built;
    pub mod tempdir;
}

use milters::{any_reply, free_port, json_string, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::built::{library, made};
use support::tempdir::TempDir;

/// build/spamfilter-load (make decides what is stale).
fn loader() -> PathBuf {
    made("build/spamfilter-load")
}

/// The library's option file for a Milter on `port` (TIMEOUT in hundredths: 30 s, longer than
/// any rendezvous below).
fn milter_opt(dir: &TempDir, name: &str, port: u16) -> PathBuf {
    dir.write(name, format!("HOST=127.0.0.1\nPORT={port}\nTIMEOUT=3000\n"))
}

/// A message whose Subject carries `marker`, with CRLF line ends and a folded field.
fn message(dir: &TempDir, marker: &str) -> PathBuf {
    dir.write(
        "message.eml",
        format!(
            "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n\
             Subject: {marker}\r\nX-Folded: first\r\n\tsecond\r\n\r\n\
             Hello Bob,\r\nthis is the body.\r\n"
        ),
    )
}

/// One slot of the MTA option file: `spamfilterN_<key>=<value>` lines.
fn slot(n: u32, lines: &[(&str, String)]) -> String {
    lines
        .iter()
        .map(|(k, v)| format!("spamfilter{n}_{k}={v}\n"))
        .collect()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn shown(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The action text of `slot N: verdict K: <option> (L bytes):`, exactly its L bytes.
    fn action(&self, slot: u32, verdict: u32, option: &str) -> String {
        let head = format!("slot {slot}: verdict {verdict}: {option} (");
        let at = self
            .stdout
            .find(&head)
            .unwrap_or_else(|| panic!("no {head:?} in\n{}", self.shown()));
        let rest = &self.stdout[at + head.len()..];
        let (len, rest) = rest.split_once(" bytes):\n").expect("a byte count");
        let len: usize = len.parse().expect("a number of bytes");
        rest[..len].to_string()
    }

    fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l == line)
    }
}

fn run_option_dat(option_dat: &Path, message: &Path, rcpts: &[&str]) -> Run {
    let mut cmd = Command::new(loader());
    cmd.args(["--from", "alice@example.org", "--client-addr", "192.0.2.10"]);
    for r in rcpts {
        cmd.args(["--rcpt", r]);
    }
    cmd.arg("--option-dat").arg(option_dat).arg(message);
    let o: Output = cmd.output().expect("run spamfilter-load");
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// An any_reply Milter that, at end of message, waits up to 20 s for `other` to arrive.
fn meeting_milter(dir: &TempDir, me: &str, other: &str, rest: &str) -> Server {
    any_reply(&format!(
        "{{\"rendezvous\": {{\"arrive\": {}, \"await\": {}, \"seconds\": 20}}{rest}}}",
        json_string(&dir.path(me).display().to_string()),
        json_string(&dir.path(other).display().to_string()),
    ))
}

/// Two slots with two different Milters on the same message, at once: each Milter holds its
/// end-of-message reply until the other has reached end of message too, so the run succeeds
/// only if the slots' conversations overlap (run one after the other, the first Milter would
/// give up after 20 s and defer). Slot 1's Milter adds a header (a string verdict), slot 2's
/// discards (a null verdict); both saw the same message, field by field.
#[test]
fn two_slots_run_in_parallel_with_different_milters_on_the_same_message() {
    let dir = TempDir::new("parallel");
    let editor = meeting_milter(
        &dir,
        "one",
        "two",
        ", \"edits\": [[\"addheader\", \"X-Slot-One\", \"seen\"]]",
    );
    let discarder = meeting_milter(&dir, "two", "one", ", \"replies\": {\"eom\": \"discard\"}");
    let option_dat = dir.write(
        "option.dat",
        format!(
            "! the MTA's options\nLOG_FILTER=1\n{}{}",
            slot(
                1,
                &[
                    ("library", library().display().to_string()),
                    (
                        "config_file",
                        milter_opt(&dir, "one.opt", editor.port)
                            .display()
                            .to_string()
                    ),
                    ("string_action", "data:,$U".to_string()),
                ]
            ),
            slot(
                2,
                &[
                    ("library", library().display().to_string()),
                    (
                        "config_file",
                        milter_opt(&dir, "two.opt", discarder.port)
                            .display()
                            .to_string()
                    ),
                    ("null_action", "data:,discard;".to_string()),
                ]
            ),
        ),
    );
    let marker = "parallel-slots-4711";
    let run = run_option_dat(&option_dat, &message(&dir, marker), &["bob@example.net"]);
    assert_eq!(run.code, Some(0), "{}", run.shown());
    assert!(run.has_line("message: accept"), "{}", run.shown());
    assert!(
        run.has_line("slot 1: verdict 1: recipients: bob@example.net"),
        "{}",
        run.shown()
    );
    let sieve = run.action(1, 1, "spamfilter1_string_action");
    assert!(
        sieve.starts_with("data:,") && sieve.contains("X-Slot-One"),
        "slot 1's verdict is not its Milter's edit:\n{}",
        run.shown()
    );
    assert!(run.has_line("slot 2: verdict 1: null"), "{}", run.shown());
    assert_eq!(
        run.action(2, 1, "spamfilter2_null_action"),
        "data:,discard;"
    );
    for (server, name) in [(&editor, "slot 1's"), (&discarder, "slot 2's")] {
        let rec = server.recorded(marker);
        // The eom event of a missed rendezvous has no body: the Milter deferred at once.
        assert!(
            rec.first("eom").get("body").text().is_some(),
            "{name} Milter missed the rendezvous: the slots did not run at once: {}",
            rec.line
        );
        let headers = rec.headers();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["From", "To", "Subject", "X-Folded"],
            "{name} Milter: {}",
            rec.line
        );
        assert_eq!(
            rec.first("connect").get("address").text().as_deref(),
            Some("192.0.2.10"),
            "{name} Milter: {}",
            rec.line
        );
    }
}

/// A string verdict runs spamfilterN_string_action with every `$U` replaced by the verdict; a
/// null verdict runs spamfilterN_null_action. Slots 1 and 2 share one editing Milter with
/// different string actions (`data:,$U` and `data:,[$U][$U]`): slot 2's text is slot 1's verdict
/// twice, byte for byte; the verdict itself is a Sieve scriptlet that Pigeonhole compiles and
/// that adds the Milter's header. Slot 3's Milter discards.
#[test]
fn null_action_and_string_action_with_u_substituted() {
    let dir = TempDir::new("actions");
    let editor = any_reply("{\"edits\": [[\"addheader\", \"X-Edited\", \"by the milter\"]]}");
    let discarder = any_reply("{\"replies\": {\"eom\": \"discard\"}}");
    let edit_opt = milter_opt(&dir, "edit.opt", editor.port)
        .display()
        .to_string();
    let lib = library().display().to_string();
    let option_dat = dir.write(
        "option.dat",
        format!(
            "{}{}{}",
            slot(
                1,
                &[
                    ("library", lib.clone()),
                    ("config_file", edit_opt.clone()),
                    ("string_action", "data:,$U".into()),
                ]
            ),
            slot(
                2,
                &[
                    ("library", lib.clone()),
                    ("config_file", edit_opt),
                    ("string_action", "data:,[$U][$U]".into()),
                ]
            ),
            slot(
                3,
                &[
                    ("library", lib),
                    (
                        "config_file",
                        milter_opt(&dir, "discard.opt", discarder.port)
                            .display()
                            .to_string()
                    ),
                    (
                        "null_action",
                        "data:,require \"fileinto\"; fileinto \"SPAM_CAN\";".into()
                    ),
                    ("string_action", "data:,$U".into()),
                ]
            ),
        ),
    );
    let message = message(&dir, "actions-test");
    let run = run_option_dat(&option_dat, &message, &["bob@example.net"]);
    assert_eq!(run.code, Some(0), "{}", run.shown());
    let one = run.action(1, 1, "spamfilter1_string_action");
    let verdict = one
        .strip_prefix("data:,")
        .unwrap_or_else(|| panic!("{}", run.shown()));
    assert_eq!(
        run.action(2, 1, "spamfilter2_string_action"),
        format!("data:,[{verdict}][{verdict}]"),
        "$U not replaced by the verdict, every time:\n{}",
        run.shown()
    );
    assert_eq!(
        run.action(3, 1, "spamfilter3_null_action"),
        "data:,require \"fileinto\"; fileinto \"SPAM_CAN\";"
    );
    let original = std::fs::read(&message).expect("read the message");
    let applied = sieve::pigeonhole().apply(
        &sieve::for_pigeonhole(verdict.as_bytes()),
        &original,
        "bob@example.net",
    );
    let stored = applied
        .stored
        .first()
        .expect("Pigeonhole stored the message");
    let text = String::from_utf8_lossy(&stored.message);
    assert!(
        text.contains("X-Edited: by the milter"),
        "the verdict did not add the Milter's header:\n{verdict}\nstored:\n{text}"
    );
}

/// An unreachable Milter is a fatal error: with spamfilterN_optional=0 the MTA defers the message
/// with its own 451 text naming the failed call, our location and type, and the slot; with
/// spamfilterN_optional=1 the message passes that slot unfiltered. Another slot's verdict is
/// applied either way.
#[test]
fn optional_0_defers_and_optional_1_passes_when_the_milter_is_unreachable() {
    let dir = TempDir::new("optional");
    let working = any_reply("{\"edits\": [[\"addheader\", \"X-Working\", \"yes\"]]}");
    let nobody = free_port();
    let lib = library().display().to_string();
    let down_opt = milter_opt(&dir, "down.opt", nobody).display().to_string();
    let up_opt = milter_opt(&dir, "up.opt", working.port)
        .display()
        .to_string();
    let message = message(&dir, "optional-test");
    for optional in ["0", "1"] {
        let option_dat = dir.write(
            &format!("option{optional}.dat"),
            format!(
                "{}{}",
                slot(
                    1,
                    &[
                        ("library", lib.clone()),
                        ("config_file", down_opt.clone()),
                        ("string_action", "data:,$U".into()),
                        ("optional", optional.into()),
                    ]
                ),
                slot(
                    2,
                    &[
                        ("library", lib.clone()),
                        ("config_file", up_opt.clone()),
                        ("string_action", "data:,$U".into()),
                    ]
                ),
            ),
        );
        let run = run_option_dat(&option_dat, &message, &["bob@example.net"]);
        let fatal = run
            .stdout
            .lines()
            .find(|l| l.starts_with("slot 1: fatal error 0x"))
            .unwrap_or_else(|| panic!("no fatal error in slot 1:\n{}", run.shown()));
        assert!(fatal.ends_with(": network, connect"), "{}", run.shown());
        assert!(
            run.action(2, 1, "spamfilter2_string_action")
                .contains("X-Working"),
            "{}",
            run.shown()
        );
        if optional == "0" {
            assert_eq!(run.code, Some(1), "{}", run.shown());
            let reply = run
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("message: defer: "))
                .unwrap_or_else(|| panic!("not deferred:\n{}", run.shown()));
            assert!(
                reply.starts_with("451 4.0.0 Spam filter ")
                    && reply.ends_with(" failed - network - connect [slot 1]"),
                "not the MTA's deferral: {reply}"
            );
        } else {
            assert_eq!(run.code, Some(0), "{}", run.shown());
            assert!(
                run.has_line("slot 1: spamfilter1_optional=1: the message passes unfiltered"),
                "{}",
                run.shown()
            );
            assert!(run.has_line("message: accept"), "{}", run.shown());
        }
    }
}

/// A slot whose spamfilterN_library cannot be used stops the MTA with an error naming the slot,
/// the option, the path and the reason: a path where there is no file, and a real shared library
/// that is not a BMI library (libz, whose first missing name is reported). With
/// spamfilterN_optional=1 the other slots go on without it.
#[test]
fn a_wrong_library_path_is_a_clear_error_naming_the_slot_and_the_path() {
    let dir = TempDir::new("badlib");
    let working = any_reply("{}");
    let up = milter_opt(&dir, "up.opt", working.port)
        .display()
        .to_string();
    let message = message(&dir, "badlib-test");
    let missing = dir.path("no-such-dir/libmilter.so").display().to_string();
    let libz = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libz.so.1 (Debian package zlib1g)");
    let lib = library().display().to_string();
    let cases = [
        (missing.as_str(), "cannot load the library: "),
        (libz, "the library has no symbol bmiErrorIsFatal"),
    ];
    for (path, reason) in cases {
        for optional in ["0", "1"] {
            let option_dat = dir.write(
                "option.dat",
                format!(
                    "{}{}",
                    slot(1, &[("library", lib.clone()), ("config_file", up.clone())]),
                    slot(
                        2,
                        &[
                            ("library", path.to_string()),
                            ("config_file", up.clone()),
                            ("optional", optional.into()),
                        ]
                    ),
                ),
            );
            let run = run_option_dat(&option_dat, &message, &["bob@example.net"]);
            let wanted = format!("spamfilter-load: slot 2: spamfilter2_library={path}: {reason}");
            assert!(
                run.stderr.lines().any(|l| l.starts_with(&wanted)),
                "wanted {wanted:?}:\n{}",
                run.shown()
            );
            if optional == "0" {
                assert_eq!(run.code, Some(2), "{}", run.shown());
                assert!(run.stdout.is_empty(), "{}", run.shown());
            } else {
                assert_eq!(run.code, Some(0), "{}", run.shown());
                assert!(
                    run.has_line("slot 1: verdict 1: default: deliver normally"),
                    "{}",
                    run.shown()
                );
                assert!(!run.stdout.contains("slot 2:"), "{}", run.shown());
            }
        }
    }
}

/// Mistakes in the MTA option file, and envelope options a BMI caller has no place for, are
/// refused before anything is loaded, each with the file, line, option and value.
#[test]
fn bad_mta_option_files_are_refused_with_the_line_and_the_option() {
    let dir = TempDir::new("badopt");
    let message = message(&dir, "badopt-test");
    let cases = [
        (
            "spamfilter9_library=/x.so\n",
            "option.dat:1: spamfilter9_library: the slot number must be 1 to 8",
        ),
        (
            "SPAMFILTER1_LIBRARY=/x.so\nspamfilter1_optional=yes\n",
            "option.dat:2: spamfilter1_optional: \"yes\" is not 0 or 1",
        ),
        (
            "spamfilter3_library=/x.so\nspamfilter3_library=/y.so\n",
            "option.dat:2: spamfilter3_library: set twice",
        ),
        (
            "spamfilter2_library=\n",
            "option.dat:1: spamfilter2_library: empty",
        ),
        (
            "spamfilter1_library /x.so\n",
            "option.dat:1: \"spamfilter1_library /x.so\": not NAME=VALUE",
        ),
        (
            "! nothing\nOTHER_OPTION=1\n",
            "option.dat names no spamfilterN_library",
        ),
    ];
    for (text, wanted) in cases {
        let option_dat = dir.write("option.dat", text);
        let run = run_option_dat(&option_dat, &message, &[]);
        assert_eq!(run.code, Some(2), "{text}: {}", run.shown());
        assert!(
            run.stderr.contains(wanted),
            "{text}: wanted {wanted:?}\n{}",
            run.shown()
        );
    }
    let option_dat = dir.write("option.dat", "spamfilter1_library=/x.so\n");
    let o = Command::new(loader())
        .args(["--helo", "mail.example.org", "--option-dat"])
        .arg(&option_dat)
        .arg(&message)
        .output()
        .expect("run spamfilter-load");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--helo: the BMI calls of --option-dat carry only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
