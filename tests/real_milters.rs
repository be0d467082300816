//! The library against real libmilter-based Milters on loopback, through its safe Rust API:
//! tests/milters/any_reply.py (pymilter on sendmail's libmilter) gives each reply, modification,
//! macro list and protocol flag on demand and records what the library sent it; opendkim signs.
//! Each test asserts the exact verdict the Milter's decisions turn into, and what the Milter
//! received. The last tests run the C loader (build/spamfilter-load) as an MTA would.
//!
//! Every Milter is started by the test that needs it, on a free port, and stopped at its end
//! (tests/support/milters.rs); cases that need different Milters run in parallel threads.

#[path = "support/milters.rs"]
mod milters;
mod support {
    pub mod built;
}

use milter_spamfilter::protocol::consts::*;
use milter_spamfilter::session::{offered_protocol, OFFERED_ACTIONS};
use milter_spamfilter::verdict::{
    Disposition, Edit, RecipientReject, Stage, DEFAULT_REJECT, DEFAULT_TEMPFAIL,
};
use milter_spamfilter::{Content, Envelope, Filtered, Handle, Recipient, VerdictKind};
use milters::{any_reply, opendkim, Record, Server};
use std::process::Command;
use std::sync::Mutex;
use support::built::{library, made};

// ---------------------------------------------------------------------------------------------
// Messages, envelopes, running cases side by side.

/// A plain message with LF line ends, as an MTA may hand it over.
const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\n\
To: Bob <bob@example.net>\n\
Subject: test message\n\
X-Old: obsolete\n\
Message-ID: <m1@example.org>\n\
\n\
Hello Bob.\n\
Second line.\n";

/// An envelope whose client name, sender and queue id carry `tag`, so that the Milter's record
/// of this message can be found by it.
fn envelope(tag: &str) -> Envelope {
    Envelope {
        client_name: Some(format!("{tag}.client.example").into_bytes()),
        client_addr: Some("192.0.2.10".parse().expect("literal address")),
        client_port: 40000,
        helo: Some(b"helo.client.example".to_vec()),
        sender: format!("{tag}@example.org").into_bytes(),
        mail_args: vec![b"SIZE=1234".to_vec(), b"BODY=8BITMIME".to_vec()],
        recipients: vec![Recipient {
            address: b"bob@example.net".to_vec(),
            esmtp_args: vec![b"NOTIFY=NEVER".to_vec()],
        }],
        macros: vec![
            (b"j".to_vec(), b"mta.example.net".to_vec()),
            (b"i".to_vec(), format!("Q-{tag}").into_bytes()),
            (b"{auth_type}".to_vec(), b"PLAIN".to_vec()),
            (b"{auth_authen}".to_vec(), b"alice".to_vec()),
            (b"{msg_id}".to_vec(), b"<m1@example.org>".to_vec()),
        ],
    }
}

/// Filters `message` through `handle`; a failure shows the Milter's stderr.
fn filter_with(m: &Server, handle: &Handle, env: &Envelope, message: &[u8]) -> Filtered {
    handle
        .filter(env, Content::Buffer(message))
        .unwrap_or_else(|e| {
            panic!(
                "{} on port {}: filter failed: {:?}: {e}\nthe Milter's stderr:\n{}",
                m.name,
                m.port,
                e.kind,
                m.log()
            )
        })
}

fn filter(m: &Server, env: &Envelope, message: &[u8]) -> Filtered {
    filter_with(m, &m.handle(), env, message)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn script(f: &Filtered) -> String {
    text(&f.verdict.script)
}

/// `s` as a Sieve quoted string: `"` and `\` escaped.
fn sieve_quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The verdict of a reject: `ereject` with exactly `reply`.
fn ereject(reply: &str) -> String {
    format!(
        "require [\"ereject\"];\r\nereject {};\r\n",
        sieve_quoted(reply)
    )
}

/// Asserts a reject with exactly `reply`, decided at `stage`.
fn assert_rejected(f: &Filtered, stage: Stage, reply: &[u8]) {
    assert_eq!(
        f.verdict.kind,
        VerdictKind::Sieve,
        "verdict: {:?}",
        f.verdict
    );
    assert_eq!(script(f), ereject(&text(reply)));
    assert_eq!(f.verdict.reply.as_deref(), Some(reply));
    assert_eq!(f.outcome.disposition, Disposition::Reject);
    assert_eq!(f.outcome.stage, stage);
    assert_eq!(f.outcome.reply.as_deref(), Some(reply));
}

/// Asserts a deferral with exactly `reply`, decided at `stage`.
fn assert_deferred(f: &Filtered, stage: Stage, reply: &[u8]) {
    assert_eq!(
        f.verdict.kind,
        VerdictKind::Defer,
        "verdict: {:?}",
        f.verdict
    );
    assert_eq!(
        f.verdict.reply.as_deref(),
        Some(reply),
        "verdict: {:?}",
        f.verdict
    );
    assert!(f.verdict.script.is_empty(), "verdict: {:?}", f.verdict);
    assert_eq!(f.outcome.disposition, Disposition::Tempfail);
    assert_eq!(f.outcome.stage, stage);
}

/// Asserts no verdict at all.
fn assert_no_verdict(f: &Filtered) {
    assert_eq!(
        f.verdict.kind,
        VerdictKind::None,
        "verdict: {:?}",
        f.verdict
    );
    assert!(f.verdict.script.is_empty());
    assert_eq!(f.verdict.reply, None);
}

/// The callbacks the Milter saw, without negotiate/abort/close.
fn stages_seen(r: &Record) -> Vec<String> {
    r.names()
        .into_iter()
        .filter(|n| !matches!(n.as_str(), "negotiate" | "abort" | "close"))
        .collect()
}

/// Asserts the value of each macro the Milter got at `stage` (None: not sent).
fn assert_macros(r: &Record, stage: &str, want: &[(&str, Option<&str>)]) {
    for (name, value) in want {
        assert_eq!(
            r.macro_at(stage, name).as_deref(),
            *value,
            "macro {name} at {stage}"
        );
    }
}

type Case<'a> = (String, Box<dyn FnOnce() + Send + 'a>);

fn case<'a>(name: impl Into<String>, f: impl FnOnce() + Send + 'a) -> Case<'a> {
    (name.into(), Box::new(f))
}

/// Runs every case on its own thread and fails once, naming every case that failed.
fn all_of(cases: Vec<Case<'_>>) {
    let failures: Vec<String> = std::thread::scope(|s| {
        let running: Vec<_> = cases
            .into_iter()
            .map(|(name, f)| (name, s.spawn(f)))
            .collect();
        running
            .into_iter()
            .filter_map(|(name, h)| {
                h.join().err().map(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("{name}: {msg}")
                })
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Runs `check` on each of `items`, each on its own thread (as `all_of`), a failure named by
/// `name` of its item.
fn all_cases<T: Send>(
    items: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> String,
    check: impl Fn(T) + Copy + Send,
) {
    all_of(
        items
            .into_iter()
            .map(|item| case(name(&item), move || check(item)))
            .collect(),
    );
}

/// A Milter that answers `reply` at `stage` (an any_reply callback name), and MESSAGE filtered
/// through it with the envelope of `tag`.
fn reply_at(stage: &str, reply: &str, tag: &str) -> (Server, Filtered) {
    let m = any_reply(&format!(r#"{{"replies": {{"{stage}": "{reply}"}}}}"#));
    let f = filter(&m, &envelope(tag), MESSAGE);
    (m, f)
}

// ---------------------------------------------------------------------------------------------
// Dispositions.

/// MILTER_PROTOCOL 2, 3 and 4: libmilter answers with the version offered, and the library
/// sends only what that version defines (no DATA before version 4) and still gets its verdict.
#[test]
fn older_protocol_versions_answered_by_libmilter() {
    let m = any_reply(r#"{"edits": [["addheader", "X-Old", "kept"]]}"#);
    for version in [2u32, 3, 4] {
        let mut config = m.config();
        config.milter_protocol = version;
        let tag = format!("ver{version}");
        let f = filter_with(&m, &Handle::new(config), &envelope(&tag), MESSAGE);
        assert_eq!(f.negotiation.version, version);
        assert_eq!(
            script(&f),
            "require [\"editheader\"];\r\naddheader :last \"X-Old\" \"kept\";\r\n",
            "version {version}"
        );
        let r = m.recorded(&tag);
        let names = r.names();
        assert_eq!(
            names.iter().any(|n| n == "data"),
            version >= 4,
            "version {version}: {names:?}"
        );
        assert_eq!(names.iter().filter(|n| *n == "header").count(), 5);
        assert!(names.ends_with(&["body".to_string(), "eom".to_string(), "close".to_string()]));
    }
}

#[test]
fn continue_without_edits_is_no_verdict() {
    let m = any_reply("{}");
    let f = filter(&m, &envelope("cont"), MESSAGE);
    assert_no_verdict(&f);
    assert_eq!(f.outcome.disposition, Disposition::Continue);
    assert_eq!(f.outcome.stage, Stage::Eom);
    assert_eq!(f.outcome.reply, None);
    assert!(f.outcome.edits.is_empty());
    assert!(f.outcome.rejected_recipients.is_empty());
    let r = m.recorded("cont");
    assert_eq!(
        r.names(),
        [
            "negotiate",
            "connect",
            "helo",
            "envfrom",
            "envrcpt",
            "data",
            "header",
            "header",
            "header",
            "header",
            "header",
            "eoh",
            "body",
            "eom",
            "close"
        ]
    );
}

#[test]
fn accept_anywhere_is_no_verdict() {
    let stages = [
        ("connect", Stage::Connect),
        ("helo", Stage::Helo),
        ("envfrom", Stage::Mail),
        ("data", Stage::Data),
        ("eoh", Stage::Eoh),
        ("eom", Stage::Eom),
    ];
    all_cases(
        stages,
        |(stage, _)| format!("accept at {stage}"),
        |(stage, want)| {
            let (m, f) = reply_at(stage, "accept", "acc");
            assert_no_verdict(&f);
            assert_eq!(f.outcome.disposition, Disposition::Accept);
            assert_eq!(f.outcome.stage, want);
            assert_eq!(stages_seen(&m.recorded("acc")).last().unwrap(), stage);
        },
    );
}

#[test]
fn reject_at_each_stage_is_ereject_with_the_default_reply() {
    let stages = [
        ("connect", Stage::Connect),
        ("helo", Stage::Helo),
        ("envfrom", Stage::Mail),
        ("data", Stage::Data),
        ("header", Stage::Header),
        ("eoh", Stage::Eoh),
        ("body", Stage::Body),
        ("eom", Stage::Eom),
    ];
    all_cases(
        stages,
        |(stage, _)| format!("reject at {stage}"),
        |(stage, want)| {
            let (m, f) = reply_at(stage, "reject", "rej");
            assert_rejected(&f, want, DEFAULT_REJECT);
            assert_eq!(script(&f), ereject("550 5.7.1 Command rejected"));
            // Nothing after the rejecting stage reached the Milter.
            let seen = stages_seen(&m.recorded("rej"));
            assert_eq!(seen.last().unwrap(), stage, "stages seen: {seen:?}");
            assert_eq!(seen.iter().filter(|s| *s == stage).count(), 1);
        },
    );
}

#[test]
fn replycode_text_is_the_reject_text_exactly() {
    let cases = vec![
        (
            "envfrom",
            "550 5.7.1 custom text",
            Stage::Mail,
            "550 5.7.1 custom text",
        ),
        (
            "eom",
            "550 5.7.1 custom text",
            Stage::Eom,
            "550 5.7.1 custom text",
        ),
        (
            "helo",
            "554 5.7.0 go away",
            Stage::Helo,
            "554 5.7.0 go away",
        ),
        // libmilter sends a Milter's "%%" as it is; the client shows one "%".
        (
            "eom",
            "550 5.7.1 100%% spam",
            Stage::Eom,
            "550 5.7.1 100% spam",
        ),
        // Quotes and backslashes are escaped in the Sieve string.
        (
            "body",
            r#"550 5.7.1 \"quoted\" and back\\slash"#,
            Stage::Body,
            r#"550 5.7.1 "quoted" and back\slash"#,
        ),
    ];
    all_cases(
        cases,
        |(stage, reply, _, _)| format!("{reply} at {stage}"),
        |(stage, reply, want_stage, want)| {
            let (_m, f) = reply_at(stage, reply, "code");
            assert_eq!(script(&f), ereject(want));
            assert_rejected(&f, want_stage, want.as_bytes());
        },
    );
}

#[test]
fn a_multi_line_reply_is_kept_line_for_line() {
    let m =
        any_reply(r#"{"replies": {"eom": ["550 5.7.1 first line", "second line", "third line"]}}"#);
    let f = filter(&m, &envelope("multi"), MESSAGE);
    let want = "550-5.7.1 first line\r\n550-5.7.1 second line\r\n550 5.7.1 third line";
    assert_rejected(&f, Stage::Eom, want.as_bytes());
    assert_eq!(script(&f), ereject(want));
}

#[test]
fn tempfail_and_a_4xx_reply_defer_the_message() {
    let cases = vec![
        (
            "envfrom",
            "tempfail",
            Stage::Mail,
            DEFAULT_TEMPFAIL.to_vec(),
        ),
        ("eom", "tempfail", Stage::Eom, DEFAULT_TEMPFAIL.to_vec()),
        (
            "eom",
            "451 4.7.1 try again later",
            Stage::Eom,
            b"451 4.7.1 try again later".to_vec(),
        ),
        (
            "connect",
            "421 4.3.2 busy",
            Stage::Connect,
            b"421 4.3.2 busy".to_vec(),
        ),
        (
            "data",
            "450 4.2.0 mailbox busy",
            Stage::Data,
            b"450 4.2.0 mailbox busy".to_vec(),
        ),
    ];
    all_cases(
        cases,
        |(stage, reply, _, _)| format!("{reply} at {stage}"),
        |(stage, reply, want_stage, want)| {
            let (_m, f) = reply_at(stage, reply, "temp");
            assert_deferred(&f, want_stage, &want);
            assert_eq!(f.outcome.reply.as_deref(), Some(&want[..]));
        },
    );
}

#[test]
fn discard_is_discard_and_ignored_at_connect() {
    let mut cases: Vec<Case> = [
        ("data", Stage::Data),
        ("body", Stage::Body),
        ("eom", Stage::Eom),
    ]
    .into_iter()
    .map(|(stage, want)| {
        case(format!("discard at {stage}"), move || {
            let (_m, f) = reply_at(stage, "discard", "disc");
            assert_eq!(f.verdict.kind, VerdictKind::Sieve);
            assert_eq!(script(&f), "discard;\r\n");
            assert_eq!(f.verdict.reply, None);
            assert_eq!(f.outcome.disposition, Disposition::Discard);
            assert_eq!(f.outcome.stage, want);
        })
    })
    .collect();
    // A DISCARD about the connection means nothing (as Postfix): the message is accepted.
    cases.push(case("discard at connect", || {
        let (_m, f) = reply_at("connect", "discard", "disc");
        assert_no_verdict(&f);
        assert_eq!(f.outcome.disposition, Disposition::Accept);
        assert_eq!(f.outcome.stage, Stage::Connect);
    }));
    all_of(cases);
}

// ---------------------------------------------------------------------------------------------
// Recipients.

fn two_recipients(tag: &str) -> Envelope {
    let mut env = envelope(tag);
    env.recipients = vec![
        Recipient::new(b"alice@example.net".to_vec()),
        Recipient::new(b"bob@example.net".to_vec()),
    ];
    env
}

/// Asserts a verdict that refuses `address` alone with `reply`: one `if envelope :is "to"` block
/// holding the `ereject`, and nothing outside it.
fn assert_recipient_refused(f: &Filtered, address: &str, reply: &str) {
    assert_eq!(
        f.verdict.kind,
        VerdictKind::Sieve,
        "verdict: {:?}",
        f.verdict
    );
    let s = script(f);
    let head = format!(
        "require [\"envelope\", \"ereject\"];\r\nif envelope :is \"to\" {} {{\r\n  ereject {};\r\n",
        sieve_quoted(address),
        sieve_quoted(reply)
    );
    assert!(
        s.starts_with(&head),
        "got:\n{s}\nwanted it to start with:\n{head}"
    );
    assert!(s.ends_with("}\r\n"), "{s}");
    assert_eq!(s.matches("ereject ").count(), 1, "{s}");
    assert_eq!(s.matches('{').count(), 1, "{s}");
}

#[test]
fn a_recipient_refused_at_rcpt_is_guarded_by_envelope_to() {
    let cases = vec![
        case("550 for bob", || {
            let m = any_reply(
                r#"{"replies": {"envrcpt": {"bob@example.net": "550 5.1.1 <bob@example.net>: no such user", "*": "continue"}}}"#,
            );
            let f = filter(&m, &two_recipients("rcpt1"), MESSAGE);
            let reply = "550 5.1.1 <bob@example.net>: no such user";
            assert_eq!(
                f.outcome.rejected_recipients,
                [RecipientReject {
                    index: 1,
                    address: b"bob@example.net".to_vec(),
                    tempfail: false,
                    reply: reply.as_bytes().to_vec(),
                }]
            );
            assert_eq!(f.outcome.disposition, Disposition::Continue);
            assert_recipient_refused(&f, "bob@example.net", reply);
            // The message went on for alice: both RCPTs, then the rest, reached the Milter.
            let r = m.recorded("rcpt1");
            let rcpts: Vec<Vec<String>> = r
                .all("envrcpt")
                .iter()
                .map(|e| e.get("args").texts())
                .collect();
            assert_eq!(rcpts, [["<alice@example.net>"], ["<bob@example.net>"]]);
            assert!(r.names().contains(&"eom".to_string()), "{}", r.line);
        }),
        case("plain reject for alice", || {
            let m = any_reply(
                r#"{"replies": {"envrcpt": {"alice@example.net": "reject", "*": "continue"}}}"#,
            );
            let f = filter(&m, &two_recipients("rcpt2"), MESSAGE);
            assert_eq!(
                f.outcome.rejected_recipients,
                [RecipientReject {
                    index: 0,
                    address: b"alice@example.net".to_vec(),
                    tempfail: false,
                    reply: DEFAULT_REJECT.to_vec(),
                }]
            );
            assert_recipient_refused(&f, "alice@example.net", "550 5.7.1 Command rejected");
        }),
        case("temporary refusal of bob defers bob alone", || {
            let m = any_reply(
                r#"{"replies": {"envrcpt": {"bob@example.net": "450 4.2.1 try bob later", "*": "continue"}}}"#,
            );
            let f = filter(&m, &two_recipients("rcpt3"), MESSAGE);
            assert_eq!(
                f.outcome.rejected_recipients,
                [RecipientReject {
                    index: 1,
                    address: b"bob@example.net".to_vec(),
                    tempfail: true,
                    reply: b"450 4.2.1 try bob later".to_vec(),
                }]
            );
            // alice is delivered now (no verdict for her); bob's deferral is his own.
            assert_eq!(f.verdict.kind, VerdictKind::None, "{:?}", f.verdict);
            assert_eq!(f.verdict.recipients, f.outcome.rejected_recipients);
        }),
        case("every recipient refused rejects the message", || {
            let m = any_reply(
                r#"{"replies": {"envrcpt": {"alice@example.net": "550 5.1.1 no alice", "*": "550 5.1.1 no bob"}}}"#,
            );
            let f = filter(&m, &two_recipients("rcpt4"), MESSAGE);
            assert_eq!(f.outcome.rejected_recipients.len(), 2);
            assert_eq!(f.outcome.disposition, Disposition::Reject);
            assert_eq!(f.outcome.stage, Stage::Rcpt);
            // Each keeps its own reply, in the list and in the script's guards.
            let replies: Vec<&[u8]> = f.verdict.recipients.iter().map(|r| &r.reply[..]).collect();
            assert_eq!(replies, [&b"550 5.1.1 no alice"[..], b"550 5.1.1 no bob"]);
            let s = script(&f);
            assert!(
                s.contains("\"alice@example.net\" {\r\n  ereject \"550 5.1.1 no alice\";")
                    && s.contains("\"bob@example.net\" {\r\n  ereject \"550 5.1.1 no bob\";"),
                "{s}"
            );
            // The transaction was aborted before DATA.
            let r = m.recorded("rcpt4");
            assert_eq!(stages_seen(&r).last().unwrap(), "envrcpt");
            assert!(r.names().contains(&"abort".to_string()), "{}", r.line);
        }),
    ];
    all_of(cases);
}

// ---------------------------------------------------------------------------------------------
// Modifications at end of message.

#[test]
fn each_header_edit_appears_in_the_verdict() {
    let cases = vec![
        (
            r#"[["addheader", "X-Added", "added value"]]"#,
            vec![Edit::AddHeader {
                name: b"X-Added".to_vec(),
                value: b"added value".to_vec(),
            }],
            "addheader :last \"X-Added\" \"added value\";\r\n",
        ),
        (
            r#"[["insheader", 0, "X-Top", "top value"]]"#,
            vec![Edit::InsHeader {
                index: 0,
                name: b"X-Top".to_vec(),
                value: b"top value".to_vec(),
            }],
            "addheader \"X-Top\" \"top value\";\r\n",
        ),
        (
            r#"[["chgheader", "Subject", 1, "changed subject"]]"#,
            vec![Edit::ChgHeader {
                index: 1,
                name: b"Subject".to_vec(),
                value: b"changed subject".to_vec(),
            }],
            "deleteheader :comparator \"i;octet\" :is \"Subject\" \"test message\";\r\n\
             addheader :last \"Subject\" \"changed subject\";\r\n",
        ),
        (
            r#"[["chgheader", "X-Old", 1, ""]]"#,
            vec![Edit::ChgHeader {
                index: 1,
                name: b"X-Old".to_vec(),
                value: Vec::new(),
            }],
            "deleteheader :comparator \"i;octet\" :is \"X-Old\" \"obsolete\";\r\n",
        ),
        (
            r#"[["addheader", "X-Added", "added value"], ["insheader", 0, "X-Top", "top value"],
                ["chgheader", "Subject", 1, "changed subject"], ["chgheader", "X-Old", 1, ""]]"#,
            vec![
                Edit::AddHeader {
                    name: b"X-Added".to_vec(),
                    value: b"added value".to_vec(),
                },
                Edit::InsHeader {
                    index: 0,
                    name: b"X-Top".to_vec(),
                    value: b"top value".to_vec(),
                },
                Edit::ChgHeader {
                    index: 1,
                    name: b"Subject".to_vec(),
                    value: b"changed subject".to_vec(),
                },
                Edit::ChgHeader {
                    index: 1,
                    name: b"X-Old".to_vec(),
                    value: Vec::new(),
                },
            ],
            "deleteheader :comparator \"i;octet\" :is \"X-Old\" \"obsolete\";\r\n\
             deleteheader :comparator \"i;octet\" :is \"Subject\" \"test message\";\r\n\
             addheader \"X-Top\" \"top value\";\r\n\
             addheader :last \"Subject\" \"changed subject\";\r\n\
             addheader :last \"X-Added\" \"added value\";\r\n",
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(edits, want_edits, want_script)| {
            case(edits.to_string(), move || {
                let m = any_reply(&format!(r#"{{"edits": {edits}}}"#));
                let f = filter(&m, &envelope("edit"), MESSAGE);
                assert_eq!(f.outcome.disposition, Disposition::Continue);
                assert_eq!(f.outcome.edits, want_edits);
                assert_eq!(f.verdict.kind, VerdictKind::Sieve);
                assert_eq!(
                    script(&f),
                    format!("require [\"editheader\"];\r\n{want_script}")
                );
            })
        })
        .collect();
    all_of(cases);
}

#[test]
fn without_context_edits_a_changed_field_is_deleted_by_position() {
    let m = any_reply(
        r#"{"edits": [["chgheader", "Subject", 1, "changed subject"], ["chgheader", "X-Old", 1, ""]]}"#,
    );
    let mut config = m.config();
    config.context_edits = false;
    let f = filter_with(&m, &Handle::new(config), &envelope("noctx"), MESSAGE);
    assert_eq!(
        script(&f),
        "require [\"editheader\"];\r\n\
         deleteheader :index 1 \"X-Old\";\r\n\
         deleteheader :index 1 \"Subject\";\r\n\
         addheader :last \"Subject\" \"changed subject\";\r\n"
    );
}

#[test]
fn added_recipients_and_quarantine() {
    // PROGRESS in between changes nothing.
    let m = any_reply(
        r#"{"edits": [["addrcpt", "<carol@example.net>"], ["progress"],
                      ["addrcpt", "<dave@example.net>", "NOTIFY=NEVER"],
                      ["quarantine", "suspicious attachment"]]}"#,
    );
    let f = filter(&m, &envelope("addq"), MESSAGE);
    assert_eq!(
        f.outcome.edits,
        [
            Edit::AddRcpt {
                rcpt: b"<carol@example.net>".to_vec(),
                args: None,
            },
            Edit::AddRcpt {
                rcpt: b"<dave@example.net>".to_vec(),
                args: Some(b"NOTIFY=NEVER".to_vec()),
            },
        ]
    );
    assert_eq!(
        f.outcome.quarantine.as_deref(),
        Some(&b"suspicious attachment"[..])
    );
    assert_eq!(
        script(&f),
        "require [\"editheader\", \"fileinto\", \"copy\"];\r\n\
         redirect :copy \"carol@example.net\";\r\n\
         redirect :copy \"dave@example.net\";\r\n\
         addheader \"X-Milter-Quarantine\" \"suspicious attachment\";\r\n\
         fileinto \"Quarantine\";\r\n"
    );

    // QUARANTINE_FOLDER names the folder; the reason may come with the final reply.
    let m = any_reply(r#"{"replies": {"eom": "quarantine held for review"}}"#);
    let mut config = m.config();
    config.quarantine_folder = "Junk/Held".to_string();
    let f = filter_with(&m, &Handle::new(config), &envelope("quar"), MESSAGE);
    assert_eq!(
        f.outcome.quarantine.as_deref(),
        Some(&b"held for review"[..])
    );
    assert_eq!(
        script(&f),
        "require [\"editheader\", \"fileinto\"];\r\n\
         addheader \"X-Milter-Quarantine\" \"held for review\";\r\n\
         fileinto \"Junk/Held\";\r\n"
    );
}

/// A Milter that deletes a recipient, changes the sender and replaces the body (as
/// spamass-milter's report mode does, with a new Content-Type): every action is offered, so
/// libmilter accepts such a Milter; the recipient is dropped for that recipient only, the sender
/// and body changes are left out, and so are the header edits that describe the new body.
#[test]
fn delrcpt_chgfrom_and_replbody() {
    let m = any_reply(
        r#"{"edits": [["addrcpt", "<quarantine@example.net>"], ["delrcpt", "<bob@example.net>"],
                      ["chgfrom", "<bounce@example.org>"], ["replacebody", "report\r\n"],
                      ["chgheader", "Content-Type", 1, "multipart/mixed; boundary=x"],
                      ["addheader", "X-Spam-Flag", "YES"]]}"#,
    );
    let f = filter(&m, &envelope("delr"), MESSAGE);
    assert_eq!(f.negotiation.actions & 0x1ff, 0x1ff & OFFERED_ACTIONS);
    assert!(f.outcome.edits.contains(&Edit::DelRcpt {
        rcpt: b"<bob@example.net>".to_vec()
    }));
    assert!(f.outcome.edits.contains(&Edit::ReplaceBody));
    assert_eq!(
        script(&f),
        "require [\"editheader\", \"envelope\", \"copy\"];\r\n\
         addheader :last \"X-Spam-Flag\" \"YES\";\r\n\
         redirect :copy \"quarantine@example.net\";\r\n\
         if envelope :is \"to\" \"bob@example.net\" {\r\n  discard;\r\n  stop;\r\n}\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// What the Milter received.

/// Header fields that test how values are handed over: one leading space removed (only one,
/// only a space), folded lines joined with LF, and bytes that are not UTF-8 kept.
const TRICKY: &[u8] = b"From: Alice <alice@example.org>\r\n\
Subject:  two leading spaces\r\n\
X-Folded: first line\r\n\tsecond line\r\n  third line\r\n\
X-Tight:no space\r\n\
X-Empty:\r\n\
X-Tab:\ttab first\r\n\
X-Latin1: caf\xe9\r\n\
\r\n\
line one\n\
line two\r\n\
\n\
last line without end";

#[test]
fn the_milter_receives_the_envelope_macros_header_and_body_exactly() {
    let m = any_reply("{}");
    let mut env = envelope("exact");
    env.recipients.push(Recipient {
        address: b"carol@example.com".to_vec(),
        esmtp_args: vec![
            b"NOTIFY=SUCCESS,FAILURE".to_vec(),
            b"ORCPT=rfc822;carol@example.com".to_vec(),
        ],
    });
    let f = filter(&m, &env, TRICKY);
    assert_no_verdict(&f);
    let r = m.recorded("exact");

    let neg = r.first("negotiate");
    assert_eq!(
        neg.get("offered_actions").num(),
        Some(OFFERED_ACTIONS as i64)
    );
    let offered = neg.get("offered_protocol").num().unwrap() as u32;
    // libmilter adds the NR_* bits it can fake; everything the library offers must be there.
    assert_eq!(
        offered & offered_protocol(6),
        offered_protocol(6),
        "offered {offered:#x}"
    );

    let c = r.first("connect");
    assert_eq!(c.get("hostname").text().unwrap(), "exact.client.example");
    assert_eq!(c.get("family").text().unwrap(), "inet");
    assert_eq!(c.get("address").text().unwrap(), "192.0.2.10");
    assert_eq!(c.get("port").num(), Some(40000));
    assert_macros(
        &r,
        "connect",
        &[
            ("j", Some("mta.example.net")),
            ("{client_addr}", Some("192.0.2.10")),
            ("{client_name}", Some("exact.client.example")),
            ("{client_port}", Some("40000")),
            ("_", Some("exact.client.example [192.0.2.10]")),
            // Macros of later stages are not sent early.
            ("i", None),
            ("{mail_addr}", None),
        ],
    );

    assert_eq!(
        r.first("helo").get("name").text().unwrap(),
        "helo.client.example"
    );

    let from = r.first("envfrom");
    assert_eq!(
        from.get("args").texts(),
        ["<exact@example.org>", "SIZE=1234", "BODY=8BITMIME"]
    );
    assert_macros(
        &r,
        "envfrom",
        &[
            ("i", Some("Q-exact")),
            ("{mail_addr}", Some("exact@example.org")),
            ("{mail_host}", Some("example.org")),
            ("{mail_mailer}", Some("smtp")),
            ("{auth_type}", Some("PLAIN")),
            ("{auth_authen}", Some("alice")),
            ("{rcpt_addr}", None),
        ],
    );

    let rcpts = r.all("envrcpt");
    assert_eq!(rcpts.len(), 2);
    assert_eq!(
        rcpts[0].get("args").texts(),
        ["<bob@example.net>", "NOTIFY=NEVER"]
    );
    assert_eq!(
        rcpts[1].get("args").texts(),
        [
            "<carol@example.com>",
            "NOTIFY=SUCCESS,FAILURE",
            "ORCPT=rfc822;carol@example.com"
        ]
    );
    for (e, (addr, host)) in rcpts.iter().zip([
        ("bob@example.net", "example.net"),
        ("carol@example.com", "example.com"),
    ]) {
        let macros = e.get("macros");
        assert_eq!(macros.get("{rcpt_addr}").text().as_deref(), Some(addr));
        assert_eq!(macros.get("{rcpt_host}").text().as_deref(), Some(host));
        assert_eq!(macros.get("{rcpt_mailer}").text().as_deref(), Some("smtp"));
    }

    assert_eq!(r.macro_at("data", "i").as_deref(), Some("Q-exact"));
    assert_eq!(r.macro_at("eoh", "i").as_deref(), Some("Q-exact"));
    // {msg_id} belongs to end of message only.
    assert_eq!(r.macro_at("eoh", "{msg_id}"), None);
    assert_eq!(
        r.macro_at("eom", "{msg_id}").as_deref(),
        Some("<m1@example.org>")
    );

    let headers: Vec<(String, Vec<u8>)> = r.headers();
    let want: Vec<(String, Vec<u8>)> = [
        ("From", &b"Alice <alice@example.org>"[..]),
        ("Subject", b" two leading spaces"),
        ("X-Folded", b"first line\n\tsecond line\n  third line"),
        ("X-Tight", b"no space"),
        ("X-Empty", b""),
        ("X-Tab", b"\ttab first"),
        ("X-Latin1", b"caf\xe9"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_vec()))
    .collect();
    assert_eq!(headers, want, "{}", r.line);

    // The body with CRLF line ends, byte for byte; the last line keeps having no line end.
    let body: &[u8] = b"line one\r\nline two\r\n\r\nlast line without end";
    let eom = r.first("eom");
    assert_eq!(eom.get("body").bytes().unwrap(), body);
    assert_eq!(eom.get("body_bytes").num(), Some(body.len() as i64));
    let chunks: i64 = r
        .all("body")
        .iter()
        .map(|e| e.get("bytes").num().unwrap())
        .sum();
    assert_eq!(chunks, body.len() as i64);
}

#[test]
fn a_large_body_arrives_whole_in_chunks() {
    let m = any_reply("{}");
    let mut message = b"From: a@example.org\nSubject: big\n\n".to_vec();
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    for _ in 0..3000 {
        message.extend_from_slice(line);
    }
    let f = filter(&m, &envelope("big"), &message);
    assert_no_verdict(&f);
    let r = m.recorded("big");
    let want = 3000 * (line.len() + 1) as i64;
    assert_eq!(r.first("eom").get("body_bytes").num(), Some(want));
    let chunks: Vec<i64> = r
        .all("body")
        .iter()
        .map(|e| e.get("bytes").num().unwrap())
        .collect();
    assert!(chunks.len() >= 3, "chunks {chunks:?}");
    assert!(chunks.iter().all(|&n| n <= 65535), "chunks {chunks:?}");
}

/// A large body in memory that is CRLF text already goes out in place (spliced into the write,
/// not copied); the few bare LFs in it still get their CR, a CRLF that straddles two 64 KiB
/// chunks stays one line end, and the Milter receives exactly the converted text, whether it
/// answers every chunk or none.
#[test]
fn a_large_crlf_body_in_memory_arrives_exactly_with_its_bare_lfs_fixed() {
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    let mut body = Vec::new();
    while body.len() < 300_000 {
        body.extend_from_slice(line);
    }
    // A CR as the last byte of the first chunk and its LF as the first of the next.
    body.truncate(65535 - 1);
    body.extend_from_slice(b"\r\n");
    while body.len() < 400_000 {
        body.extend_from_slice(line);
    }
    // Bare LFs far into the body, one in the first bytes of a chunk, and one at the end.
    for at in [150_000usize, 196_606, 333_333] {
        body[at] = b'\n';
        body[at - 1] = b'x';
    }
    body.extend_from_slice(b"last line\n");
    let mut want = Vec::new();
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            want.push(b'\r');
        }
        want.push(b);
    }
    let mut message = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    message.extend_from_slice(&body);
    for spec in ["{}", r#"{"protocol": ["NR_BODY", "NR_HDR"]}"#] {
        let m = any_reply(spec);
        let f = filter(&m, &envelope("crlf"), &message);
        assert_no_verdict(&f);
        let r = m.recorded("crlf");
        let eom = r.first("eom");
        assert_eq!(
            eom.get("body_bytes").num(),
            Some(want.len() as i64),
            "{spec}"
        );
        let got: Vec<u8> = eom
            .get("body")
            .text()
            .expect("body")
            .chars()
            .map(|c| c as u32 as u8)
            .collect();
        assert!(got == want, "{spec}: the body differs from its CRLF form");
        let chunks: Vec<i64> = r
            .all("body")
            .iter()
            .map(|e| e.get("bytes").num().unwrap())
            .collect();
        assert!(
            chunks.iter().all(|&n| n <= 65535),
            "{spec}: chunks {chunks:?}"
        );
    }
}

#[test]
fn null_sender_ipv6_client_and_local_submission() {
    let m = any_reply("{}");
    // The null sender: MAIL FROM:<>, {mail_addr} empty but sent.
    let mut env = envelope("null");
    env.sender = Vec::new();
    assert_no_verdict(&filter(&m, &env, MESSAGE));
    let r = m.recorded("Q-null");
    assert_eq!(
        r.first("envfrom").get("args").texts(),
        ["<>", "SIZE=1234", "BODY=8BITMIME"]
    );
    assert_eq!(r.macro_at("envfrom", "{mail_addr}").as_deref(), Some(""));

    // An IPv6 client.
    let mut env = envelope("six");
    env.client_addr = Some("2001:db8::25".parse().expect("literal address"));
    assert_no_verdict(&filter(&m, &env, MESSAGE));
    let r = m.recorded("Q-six");
    let c = r.first("connect");
    assert_eq!(c.get("family").text().unwrap(), "inet6");
    assert_eq!(c.get("address").text().unwrap(), "2001:db8::25");
    assert_eq!(c.get("port").num(), Some(40000));
    assert_eq!(
        r.macro_at("connect", "{client_addr}").as_deref(),
        Some("2001:db8::25")
    );

    // A local submission: no address, no name, no HELO.
    let mut env = envelope("local");
    env.client_addr = None;
    env.client_name = None;
    env.client_port = 0;
    env.helo = None;
    assert_no_verdict(&filter(&m, &env, MESSAGE));
    let r = m.recorded("Q-local");
    let c = r.first("connect");
    assert_eq!(c.get("hostname").text().unwrap(), "localhost");
    assert_eq!(c.get("family").text().unwrap(), "unknown");
    assert_eq!(r.macro_at("connect", "{client_addr}"), None);
    assert!(r.all("helo").is_empty(), "{}", r.line);
    assert_eq!(
        r.macro_at("envfrom", "{mail_mailer}").as_deref(),
        Some("local")
    );
}

#[test]
fn macro_lists_the_milter_asks_for_are_what_it_gets() {
    let m = any_reply(
        r#"{"symlist": {"connect": ["{client_addr}"], "envfrom": ["{mail_addr}", "{auth_authen}"],
                        "envrcpt": ["{rcpt_addr}"], "eom": ["{msg_id}"]}}"#,
    );
    let f = filter(&m, &envelope("sym"), MESSAGE);
    assert_no_verdict(&f);
    assert_eq!(
        f.negotiation.macros[SMFIM_CONNECT],
        Some(vec![b"{client_addr}".to_vec()])
    );
    assert_eq!(
        f.negotiation.macros[SMFIM_ENVFROM],
        Some(vec![b"{mail_addr}".to_vec(), b"{auth_authen}".to_vec()])
    );
    assert_eq!(f.negotiation.macros[SMFIM_HELO], None);
    assert_ne!(f.negotiation.actions & SMFIF_SETSYMLIST, 0);

    let r = m.recorded("sym");
    assert_macros(
        &r,
        "connect",
        &[
            ("{client_addr}", Some("192.0.2.10")),
            ("j", None),
            ("_", None),
        ],
    );
    assert_macros(
        &r,
        "envfrom",
        &[
            ("{mail_addr}", Some("sym@example.org")),
            ("{auth_authen}", Some("alice")),
            ("i", None),
            ("{auth_type}", None),
        ],
    );
    assert_macros(
        &r,
        "envrcpt",
        &[
            ("{rcpt_addr}", Some("bob@example.net")),
            ("{rcpt_host}", None),
        ],
    );
    // DATA asked for no list of its own: the default one (i).
    assert_eq!(r.macro_at("data", "i").as_deref(), Some("Q-sym"));
    assert_eq!(
        r.macro_at("eom", "{msg_id}").as_deref(),
        Some("<m1@example.org>")
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol flags the Milter negotiates.

const NR_ALL: &str =
    r#""NR_CONN", "NR_HELO", "NR_MAIL", "NR_RCPT", "NR_DATA", "NR_HDR", "NR_EOH", "NR_BODY""#;

#[test]
fn no_reply_flags_still_give_the_right_verdict() {
    let nr_bits = SMFIP_NR_CONN
        | SMFIP_NR_HELO
        | SMFIP_NR_MAIL
        | SMFIP_NR_RCPT
        | SMFIP_NR_DATA
        | SMFIP_NR_HDR
        | SMFIP_NR_EOH
        | SMFIP_NR_BODY;
    let check_all_seen = |r: &Record| {
        assert_eq!(
            stages_seen(r),
            [
                "connect", "helo", "envfrom", "envrcpt", "data", "header", "header", "header",
                "header", "header", "eoh", "body", "eom"
            ]
        );
    };
    let cases = vec![
        case("reject at eom", move || {
            let m = any_reply(&format!(
                r#"{{"protocol": [{NR_ALL}], "replies": {{"eom": "550 5.7.1 rejected at end"}}}}"#
            ));
            let f = filter(&m, &envelope("nr1"), MESSAGE);
            assert_eq!(f.negotiation.protocol & nr_bits, nr_bits);
            assert_rejected(&f, Stage::Eom, b"550 5.7.1 rejected at end");
            check_all_seen(&m.recorded("nr1"));
        }),
        case("addheader at eom", move || {
            let m = any_reply(&format!(
                r#"{{"protocol": [{NR_ALL}], "edits": [["addheader", "X-NR", "yes"]]}}"#
            ));
            let f = filter(&m, &envelope("nr2"), MESSAGE);
            assert_eq!(f.negotiation.protocol & nr_bits, nr_bits);
            assert_eq!(
                script(&f),
                "require [\"editheader\"];\r\naddheader :last \"X-NR\" \"yes\";\r\n"
            );
            check_all_seen(&m.recorded("nr2"));
        }),
        case("continue", move || {
            let m = any_reply(&format!(r#"{{"protocol": [{NR_ALL}, "SKIP"]}}"#));
            let f = filter(&m, &envelope("nr3"), MESSAGE);
            assert_no_verdict(&f);
            check_all_seen(&m.recorded("nr3"));
        }),
        case("tempfail at eom with only NR_HDR", || {
            let m = any_reply(r#"{"protocol": ["NR_HDR"], "replies": {"eom": "451 4.3.0 later"}}"#);
            let f = filter(&m, &envelope("nr4"), MESSAGE);
            assert_eq!(f.negotiation.protocol & SMFIP_NR_HDR, SMFIP_NR_HDR);
            assert_deferred(&f, Stage::Eom, b"451 4.3.0 later");
        }),
    ];
    all_of(cases);
}

/// While a Milter answers OPTNEG, the library encodes the message on the negotiation its thread
/// had with that Milter last, and checks the answer before it writes anything. A Milter put in
/// the place of another (the same address, other flags and macros) gets exactly what it
/// negotiated: from every no-reply bit to every stage answered and a macro list of its own, and
/// back, with the message read through the callback.
#[test]
fn a_milter_that_negotiates_otherwise_at_the_same_address_gets_what_it_negotiated() {
    let all_seen = [
        "connect", "helo", "envfrom", "envrcpt", "data", "header", "header", "header", "header",
        "header", "eoh", "body", "eom",
    ];
    let no_reply =
        |reply: &str| format!(r#"{{"protocol": [{NR_ALL}], "replies": {{"eom": "{reply}"}}}}"#);
    let first = any_reply(&no_reply("550 5.7.1 first"));
    let port = first.port;
    let handle = first.handle();
    for tag in ["neg1", "neg2"] {
        let f = filter_with(&first, &handle, &envelope(tag), MESSAGE);
        assert_rejected(&f, Stage::Eom, b"550 5.7.1 first");
        assert_eq!(stages_seen(&first.recorded(tag)), all_seen, "{tag}");
    }
    drop(first);

    let second = milters::any_reply_at(
        port,
        r#"{"symlist": {"connect": ["j", "{client_addr}"]}, "replies": {"data": "550 5.7.1 second"}}"#,
    );
    let f = filter_with(&second, &handle, &envelope("neg3"), MESSAGE);
    assert_eq!(f.negotiation.protocol & SMFIP_NR_CONN, 0);
    assert_rejected(&f, Stage::Data, b"550 5.7.1 second");
    let r = second.recorded("neg3");
    assert_eq!(
        stages_seen(&r),
        ["connect", "helo", "envfrom", "envrcpt", "data"]
    );
    assert_eq!(
        r.macro_at("connect", "{client_addr}").as_deref(),
        Some("192.0.2.10")
    );
    // `_` is in the default list for CONNECT, not in this Milter's.
    assert_eq!(r.macro_at("connect", "_"), None);
    drop(second);

    let third = milters::any_reply_at(port, &no_reply("550 5.7.1 third"));
    let mut reader: &[u8] = MESSAGE;
    let f = handle
        .filter(&envelope("neg4"), Content::Reader(&mut reader))
        .unwrap_or_else(|e| panic!("filter failed: {e}\nthe Milter's stderr:\n{}", third.log()));
    assert_rejected(&f, Stage::Eom, b"550 5.7.1 third");
    assert_eq!(stages_seen(&third.recorded("neg4")), all_seen);
}

#[test]
fn no_send_flags_leave_those_stages_out() {
    let cases = vec![
        case("every stage left out", || {
            let m = any_reply(
                r#"{"protocol": ["NOCONNECT", "NOHELO", "NOMAIL", "NORCPT", "NODATA", "NOHDRS", "NOEOH", "NOBODY"],
                    "edits": [["addheader", "X-Seen", "yes"]]}"#,
            );
            let f = filter(&m, &envelope("nosend1"), MESSAGE);
            assert_eq!(
                script(&f),
                "require [\"editheader\"];\r\naddheader :last \"X-Seen\" \"yes\";\r\n"
            );
            let r = m.recorded("nosend1");
            assert_eq!(r.names(), ["negotiate", "eom", "close"]);
            assert_eq!(r.first("eom").get("body_bytes").num(), Some(0));
            assert_eq!(r.macro_at("eom", "i").as_deref(), Some("Q-nosend1"));
        }),
        case("no body, reject at eom", || {
            let m = any_reply(
                r#"{"protocol": ["NOBODY", "NOHELO"], "replies": {"eom": "550 5.7.1 no body needed"}}"#,
            );
            let f = filter(&m, &envelope("nosend2"), MESSAGE);
            assert_rejected(&f, Stage::Eom, b"550 5.7.1 no body needed");
            let r = m.recorded("nosend2");
            assert!(
                r.all("body").is_empty() && r.all("helo").is_empty(),
                "{}",
                r.line
            );
            assert_eq!(r.all("header").len(), 5);
        }),
        case("no headers, reject at body", || {
            let m = any_reply(r#"{"protocol": ["NOHDRS"], "replies": {"body": "reject"}}"#);
            let f = filter(&m, &envelope("nosend3"), MESSAGE);
            assert_rejected(&f, Stage::Body, DEFAULT_REJECT);
            let r = m.recorded("nosend3");
            assert!(r.all("header").is_empty(), "{}", r.line);
        }),
    ];
    all_of(cases);
}

#[test]
fn skip_ends_that_kind_of_event() {
    let m = any_reply(
        r#"{"protocol": ["SKIP"], "replies": {"header": {"Subject": "skip"}, "body": "skip",
            "envrcpt": {"*": "skip"}}}"#,
    );
    let mut env = two_recipients("skip");
    env.recipients
        .push(Recipient::new(b"carol@example.net".to_vec()));
    let mut message = MESSAGE.to_vec();
    message.extend_from_slice(&b"x".repeat(200_000));
    message.extend_from_slice(b"\n");
    let f = filter(&m, &env, &message);
    assert_no_verdict(&f);
    assert_ne!(f.negotiation.protocol & SMFIP_SKIP, 0);
    let r = m.recorded("skip");
    assert_eq!(r.all("envrcpt").len(), 1, "{}", r.line);
    let names: Vec<String> = r.headers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["From", "To", "Subject"]);
    assert_eq!(r.all("body").len(), 1, "{}", r.line);
    assert_eq!(
        stages_seen(&r)[..4],
        ["connect", "helo", "envfrom", "envrcpt"]
    );
    assert!(r.names().contains(&"eoh".to_string()) && r.names().contains(&"eom".to_string()));
}

#[test]
fn leading_space_negotiated_keeps_the_value_as_written() {
    let m = any_reply(
        r#"{"protocol": ["HDR_LEADSPC", "SKIP"], "edits": [["addheader", "X-Lead", " lead value"]]}"#,
    );
    let f = filter(&m, &envelope("lead"), TRICKY);
    assert!(f.outcome.leadspc);
    assert_eq!(
        script(&f),
        "require [\"editheader\"];\r\naddheader :last \"X-Lead\" \"lead value\";\r\n"
    );
    let r = m.recorded("lead");
    let headers = r.headers();
    assert_eq!(
        headers[1],
        ("Subject".to_string(), b"  two leading spaces".to_vec())
    );
    assert_eq!(headers[3], ("X-Tight".to_string(), b"no space".to_vec()));
    assert_eq!(
        headers[2],
        (
            "X-Folded".to_string(),
            b" first line\n\tsecond line\n  third line".to_vec()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// opendkim.

const SIGNED: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: signed by opendkim\r\n\
Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n\
Message-ID: <dkim1@example.org>\r\n\
\r\n\
This message is signed.\r\n";

// ---------------------------------------------------------------------------------------------
// The push API (`Handle::message`): the same conversation as `filter`, piece by piece.

/// A loopback relay in front of `upstream` that keeps what each connection sent the Milter, in
/// the order the connections were accepted.
fn recording_relay(upstream: u16) -> (u16, std::sync::Arc<Mutex<Vec<Vec<u8>>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the relay");
    let port = listener.local_addr().expect("its address").port();
    let sent = std::sync::Arc::new(Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&sent);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(milter) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let index = {
                let mut all = record.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            let (mut m_in, mut c_out) = (
                milter.try_clone().expect("clone"),
                client.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut m_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
            let record = std::sync::Arc::clone(&record);
            let (mut c_in, mut m_out) = (client, milter);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || m_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    record.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                }
                let _ = m_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, sent)
}

/// The relay's record of connection `i`, once the library has closed it (QUIT is its last
/// packet).
fn relayed(sent: &Mutex<Vec<Vec<u8>>>, i: usize) -> Vec<u8> {
    let start = std::time::Instant::now();
    loop {
        let got = sent.lock().unwrap().get(i).cloned().unwrap_or_default();
        if got.ends_with(&[0, 0, 0, 1, b'Q']) {
            return got;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "connection {i} did not end with QUIT: {} bytes",
            got.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Pushes `env` and `message` into a push-API message: each header field whole, the body one
/// byte at a time.
fn push_bytewise(h: &Handle, env: &Envelope, message: &[u8]) -> Filtered {
    let mut m = h.message();
    m.connect(milter_spamfilter::Client {
        name: env.client_name.clone(),
        addr: env.client_addr,
        port: env.client_port,
        helo: env.helo.clone(),
        macros: env.macros.clone(),
    })
    .expect("connect");
    let args: Vec<&[u8]> = env.mail_args.iter().map(|a| a.as_slice()).collect();
    m.mail(&env.sender, &args).expect("mail");
    for r in &env.recipients {
        let args: Vec<&[u8]> = r.esmtp_args.iter().map(|a| a.as_slice()).collect();
        m.rcpt(&r.address, &args).expect("rcpt");
    }
    m.end_of_recipients().expect("end_of_recipients");
    let split = message
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a header section")
        + 1;
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in message[..split].split_inclusive(|&b| b == b'\n') {
        match line.first() {
            Some(b' ' | b'\t') => fields.last_mut().expect("a field").extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    for f in &fields {
        m.header(f).expect("header");
    }
    m.end_of_header().expect("end_of_header");
    for b in message[split + 1..].chunks(1) {
        m.body(b).expect("body");
    }
    m.end_of_message().expect("end_of_message")
}

/// A message pushed field by field and in 1-byte body chunks puts the same bytes on the wire
/// and gets the same verdict and outcome as `filter` on the whole buffer: against pymilter
/// answering every stage, and answering only end of message; with edits.
#[test]
fn pushes_put_the_bytes_of_the_whole_message_on_the_wire() {
    let mut body = Vec::new();
    for i in 0..7000 {
        body.extend_from_slice(format!("line {i} with LF\n").as_bytes());
    }
    let message = [
        &MESSAGE[..MESSAGE.len() - 25],
        b"Folded: one\n two\n\n",
        &body,
    ]
    .concat();
    for protocol in [
        r#"["SKIP"]"#,
        r#"["NR_CONN","NR_HELO","NR_MAIL","NR_RCPT","NR_DATA","NR_HDR","NR_EOH","NR_BODY"]"#,
    ] {
        let m = any_reply(&format!(
            r#"{{"protocol": {protocol}, "edits": [["addheader", "X-Pushed", "yes"], ["chgheader", "Subject", 1, "changed"]]}}"#
        ));
        let (relay, sent) = recording_relay(m.port);
        let mut config = m.config();
        config.port = relay;
        let h = Handle::new(config);
        let env = envelope("pushes");
        let whole = filter_with(&m, &h, &env, &message);
        let pushed = push_bytewise(&h, &env, &message);
        let (a, b) = (relayed(&sent, 0), relayed(&sent, 1));
        assert!(
            a == b,
            "{protocol}: the whole message sent {} bytes, the pushes {}",
            a.len(),
            b.len()
        );
        assert_eq!(whole.outcome, pushed.outcome, "{protocol}");
        assert_eq!(whole.verdict, pushed.verdict, "{protocol}");
        assert_eq!(
            pushed.outcome.edits.len(),
            2,
            "{protocol}: {:?}",
            pushed.outcome
        );
        assert_eq!(pushed.verdict.kind, VerdictKind::Sieve);
        let folded = pushed
            .outcome
            .headers
            .last()
            .expect("the fields, for the edits");
        assert_eq!(folded.value, b" one\n two", "{protocol}");
    }
}

/// A message given up before end of message (dropped) aborts its conversation and closes its
/// connection at once: the Milter sees ABORT and the end of the connection, and the connection
/// is not kept for the next message.
#[test]
fn a_dropped_message_aborts_and_closes_its_connection() {
    let m = any_reply("{}");
    let mut config = m.config();
    config.connection_reuse = 1;
    let h = Handle::new(config);
    let env = envelope("dropped");
    let mut msg = h.message();
    msg.connect(milter_spamfilter::Client {
        name: env.client_name.clone(),
        ..Default::default()
    })
    .expect("connect");
    msg.mail(&env.sender, &[]).expect("mail");
    msg.rcpt(b"bob@example.net", &[]).expect("rcpt");
    msg.header(b"Subject: never finished\r\n").expect("header");
    drop(msg);
    // The record is written when the Milter's side of the connection ends.
    let record = m.recorded("dropped.client.example");
    let names = record.names();
    assert!(names.contains(&"abort".to_string()), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("close"), "{names:?}");
    assert!(!names.contains(&"eom".to_string()), "{names:?}");
    // The next message has a connection of its own.
    let next = filter_with(&m, &h, &envelope("after-drop"), MESSAGE);
    assert_eq!(next.outcome.stage, Stage::Eom);
    // Its connection is kept by the handle: closing the handle ends it, and its record.
    drop(h);
    let record = m.recorded("after-drop.client.example");
    assert_eq!(
        record.names().first().map(String::as_str),
        Some("negotiate"),
        "{:?}",
        record.names()
    );
}

/// Pushes out of SMTP order are refused by name and change nothing; stages not pushed are run
/// with what is known; after a rejection at MAIL every later push is a no-op and the verdict is
/// that rejection.
#[test]
fn pushes_keep_smtp_order_and_stop_at_a_decision() {
    let m = any_reply(r#"{"replies": {"envfrom": "550 5.7.1 not you"}}"#);
    let h = m.handle();
    let mut msg = h.message();
    msg.mail(b"order@example.org", &[])
        .expect("mail, with an implied connect");
    let e = msg
        .connect(Default::default())
        .expect_err("connect after mail");
    assert!(e.message.contains("connect() after mail()"), "{e}");
    msg.rcpt(b"bob@example.net", &[])
        .expect("a no-op after the rejection");
    msg.header(b"Subject: x\n").expect("a no-op");
    msg.body(b"body\n").expect("a no-op");
    let f = msg.end_of_message().expect("the verdict");
    assert_rejected(&f, Stage::Mail, b"550 5.7.1 not you");
    let record = m.recorded("order@example.org");
    assert!(
        !record.names().contains(&"envrcpt".to_string()),
        "{:?}",
        record.names()
    );
}

/// The envelope of a submission from loopback, which opendkim's InternalHosts signs.
fn submission(tag: &str) -> Envelope {
    let mut env = envelope(tag);
    env.client_addr = Some("127.0.0.1".parse().expect("literal address"));
    env.client_name = Some(b"localhost".to_vec());
    env.sender = b"alice@example.org".to_vec();
    env
}

#[test]
fn opendkim_signs_through_the_library() {
    let m = opendkim();
    let f = filter(&m, &submission("dkim"), SIGNED);
    // opendkim accepts what it signed.
    assert_eq!(
        f.outcome.disposition,
        Disposition::Accept,
        "{:?}",
        f.outcome
    );
    let sig = f
        .outcome
        .edits
        .iter()
        .find_map(|e| match e {
            Edit::InsHeader { index, name, value } if name == b"DKIM-Signature" => {
                Some((*index, text(value)))
            }
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no DKIM-Signature inserted: {:?}\n{}",
                f.outcome.edits,
                m.log()
            )
        });
    assert_eq!(sig.0, 0);
    assert!(
        sig.1.contains("d=example.org;") && sig.1.contains("s=test;"),
        "{}",
        sig.1
    );
    assert_eq!(f.verdict.kind, VerdictKind::Sieve);
    let s = script(&f);
    assert!(
        s.starts_with("require [\"editheader\"];\r\naddheader \"DKIM-Signature\" \""),
        "{s}"
    );
    assert!(s.contains("d=example.org;") && s.contains("s=test;"), "{s}");
}

// ---------------------------------------------------------------------------------------------
// The C loader, as an MTA loads the library.

/// Runs the C loader against `m` on `message` from alice@example.org to bob@example.net, with
/// `args` besides; returns its stdout.
fn load(m: &Server, args: &[&str], message: &[u8]) -> String {
    let opt = m.dir().join("milter.opt");
    std::fs::write(&opt, format!("HOST=127.0.0.1\nPORT={}\n", m.port)).expect("writing milter.opt");
    let eml = m.dir().join("message.eml");
    std::fs::write(&eml, message).expect("writing message.eml");
    let out = Command::new(made("build/spamfilter-load"))
        .args(["--from", "alice@example.org", "--rcpt", "bob@example.net"])
        .args(args)
        .arg(library())
        .arg(&opt)
        .arg(&eml)
        .output()
        .expect("running build/spamfilter-load");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "spamfilter-load failed ({}):\n{stdout}\n{}\nthe Milter's stderr:\n{}",
        out.status,
        text(&out.stderr),
        m.log()
    );
    stdout
}

#[test]
fn c_loader_prints_the_opendkim_signature() {
    let m = opendkim();
    let out = load(
        &m,
        &[
            "--client-addr",
            "127.0.0.1",
            "--client-name",
            "localhost",
            "--helo",
            "localhost",
            "--queue-id",
            "CDKIM1",
        ],
        SIGNED,
    );
    assert!(
        out.starts_with(
            "status: ok\nkind: verdict\ndisposition: accept\nrejected_recipients: 0\nverdict:\n\
             require [\"editheader\"];\r\naddheader \"DKIM-Signature\" \""
        ),
        "{out}"
    );
    assert!(
        out.contains("d=example.org;") && out.contains("s=test;"),
        "{out}"
    );
}

#[test]
fn c_loader_prints_the_reject_of_a_rejecting_milter() {
    let m = any_reply(r#"{"replies": {"eom": "554 5.7.1 rejected by any_reply"}}"#);
    let out = load(
        &m,
        &[
            "--client-addr",
            "192.0.2.10",
            "--helo",
            "client.example",
            "--queue-id",
            "CREJ1",
        ],
        MESSAGE,
    );
    assert_eq!(
        out,
        "status: ok\nkind: verdict\ndisposition: reject\nreply: 554 5.7.1 rejected by any_reply\n\
         rejected_recipients: 0\nverdict:\n\
         require [\"ereject\"];\r\nereject \"554 5.7.1 rejected by any_reply\";\r\n"
    );
    let r = m.recorded("CREJ1");
    assert_eq!(
        r.first("envfrom").get("args").texts(),
        ["<alice@example.org>"]
    );
}
