//! Verdicts proven by an independent Sieve engine (issue 4, contract §5): every verdict these
//! tests make is parsed by the project's own Sieve parser (exact require, exact bytes of every
//! written value), compiled by Pigeonhole's `sievec -x +editheader` and applied by `sieve-test
//! -e` to the original message as an unprivileged user; the header Pigeonhole stores must be the
//! one the reference model (tests/support/sieve.rs) makes of the Milter's edits. `ereject`,
//! which Pigeonhole lacks, is checked as `reject`; the legacy one-argument `addheader` only by
//! the parser. Missing Pigeonhole fails the tests (apt-get install dovecot-sieve).

#[path = "support/sieve.rs"]
mod sieve;

use milter_spamfilter::config::{SieveDialect, SieveLimits};
use milter_spamfilter::verdict::{
    build, Disposition, Edit, Header, Outcome, RecipientReject, Stage, Verdict, VerdictKind,
    VerdictOptions, DEFAULT_REJECT, DEFAULT_TEMPFAIL,
};
use sieve::{
    expected_header, for_pigeonhole, message, parse_header, parse_verdict, pigeonhole, readable,
    written_value, Field, Op, Source, QUARANTINE_FOLDER,
};

/// The envelope recipient of every application; never one the Milter refused.
const RECIPIENT: &str = "rcpt@example.org";

// ---------------------------------------------------------------------------------------------
// Building outcomes.

/// The engine limits of these checks' Pigeonhole settings (support/sieve.rs, DOVECOT_CONF),
/// raised so that what is checked is the mapping; the default limits have tests of their own.
fn roomy() -> SieveLimits {
    SieveLimits {
        max_header_size: 1 << 20,
        max_redirects: 64,
        max_script_size: 1 << 30,
    }
}

fn options(context_edits: bool) -> VerdictOptions {
    VerdictOptions {
        context_edits,
        dialect: SieveDialect::Rfc5293,
        quarantine_folder: QUARANTINE_FOLDER.to_string(),
        limits: roomy(),
    }
}

fn legacy() -> VerdictOptions {
    VerdictOptions {
        dialect: SieveDialect::Legacy,
        ..options(true)
    }
}

fn h(name: &str, value: &[u8]) -> Header {
    Header {
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    }
}

fn add(name: &str, value: &[u8]) -> Edit {
    Edit::AddHeader {
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    }
}

fn ins(index: u32, name: &str, value: &[u8]) -> Edit {
    Edit::InsHeader {
        index,
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    }
}

fn chg(index: u32, name: &str, value: &[u8]) -> Edit {
    Edit::ChgHeader {
        index,
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    }
}

fn rcpt(address: &str) -> Edit {
    Edit::AddRcpt {
        rcpt: address.as_bytes().to_vec(),
        args: None,
    }
}

fn edited(headers: Vec<Header>, edits: Vec<Edit>) -> Outcome {
    Outcome {
        headers,
        edits,
        ..Outcome::new(Disposition::Continue, Stage::Eom)
    }
}

/// A plain message's header.
fn plain() -> Vec<Header> {
    vec![
        h("Received", b" from mx.example.net by mta.example.org"),
        h("From", b" Alice <alice@example.net>"),
        h("To", b" rcpt@example.org"),
        h("Subject", b" hello"),
        h("Date", b" Tue, 25 Nov 2025 10:00:00 +0000"),
        h("Message-ID", b" <1@example.net>"),
    ]
}

// ---------------------------------------------------------------------------------------------
// The check.

/// What one check saw, for tests that look further.
struct Checked {
    verdict: Verdict,
    script: String,
    ops: Vec<Op>,
    /// The header Pigeonhole stored (none for the legacy dialect, rejects and discards).
    stored: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Which ADDRCPT addresses the verdict must redirect to: the caller says, since which strings
/// are addresses is what is being tested.
fn verify(o: &Outcome, opts: &VerdictOptions, redirects: &[&str]) -> Checked {
    let v = build(o, opts);
    let shown = String::from_utf8_lossy(&v.script).replace('\r', "");
    let context = format!("outcome {o:?}\noptions {opts:?}\nverdict:\n{shown}");
    // The invariants of fuzz/checks.rs.
    assert!(!v.script.contains(&0), "a NUL in the script\n{context}");
    let script = String::from_utf8(v.script.clone())
        .unwrap_or_else(|_| panic!("the script is not UTF-8\n{context}"));
    if v.kind != VerdictKind::Sieve {
        assert!(
            script.is_empty(),
            "a script on a {:?} verdict\n{context}",
            v.kind
        );
    }

    // The kind, and each recipient refused at RCPT with its own outcome.
    let own = own_outcomes(o);
    assert_eq!(v.recipients, own, "the recipients' own outcomes\n{context}");
    if o.disposition == Disposition::Tempfail {
        assert_eq!(v.kind, VerdictKind::Defer, "{context}");
        return Checked {
            verdict: v,
            script,
            ops: Vec::new(),
            stored: None,
        };
    }
    let legacy = opts.dialect == SieveDialect::Legacy;
    let expected = expected_header(o, legacy);
    let mut want_redirects: Vec<&str> = Vec::new();
    for r in redirects {
        if !want_redirects.contains(r) {
            want_redirects.push(r);
        }
    }
    let changes_header = expected.kept.len() != o.headers.len()
        || !expected.top.is_empty()
        || !expected.end.is_empty();
    let nothing = matches!(o.disposition, Disposition::Accept | Disposition::Continue)
        && o.rejected_recipients.iter().all(|r| r.tempfail)
        && redirects.is_empty()
        && o.quarantine.is_none()
        && !changes_header;
    if nothing {
        assert_eq!(v.kind, VerdictKind::None, "{context}");
        return Checked {
            verdict: v,
            script,
            ops: Vec::new(),
            stored: None,
        };
    }
    assert_eq!(v.kind, VerdictKind::Sieve, "{context}");

    // The project's parser: syntax, require, and what each action says.
    let ops = parse_verdict(script.as_bytes())
        .unwrap_or_else(|e| panic!("the verdict is not valid Sieve: {e}\n{context}"));
    let reply = |r: &Option<Vec<u8>>| {
        without_nul(
            r.as_deref()
                .filter(|r| !r.is_empty())
                .unwrap_or(DEFAULT_REJECT),
        )
    };
    let guards = guard_ops(o);
    match o.disposition {
        Disposition::Reject => {
            let want = [guards, vec![Op::Ereject(reply(&o.reply))]].concat();
            assert_eq!(ops, want, "{context}");
        }
        Disposition::Discard => {
            assert_eq!(ops, [guards, vec![Op::Discard]].concat(), "{context}");
        }
        _ => check_ops(o, opts, &ops, &expected, &want_redirects, &context),
    }
    if legacy {
        return Checked {
            verdict: v,
            script,
            ops,
            stored: None,
        };
    }

    // Pigeonhole.
    let p = pigeonhole();
    let pig = for_pigeonhole(script.as_bytes());
    let msg = message(&o.headers);
    let applied = p.apply(&pig, &msg, RECIPIENT);
    let odd_bytes = ops.iter().any(|op| match op {
        Op::Add { name, value, .. } => {
            std::str::from_utf8(name).is_err() || std::str::from_utf8(value).is_err()
        }
        _ => false,
    });
    if !odd_bytes {
        assert!(
            !applied.compile_log.contains("warning"),
            "sievec warned:\n{}\n{context}",
            applied.compile_log
        );
    }
    // The refused recipients: each run for one rejected at RCPT is a reject, with nothing
    // stored; for one deferred at RCPT neither a reject nor a discard (the MTA defers it).
    for r in &o.rejected_recipients {
        let address = String::from_utf8(r.address.clone()).expect("test addresses are text");
        let run = p.apply(&pig, &msg, &address);
        if r.tempfail {
            assert!(
                !run.rejected() && !run.discarded() && run.stored.len() == 1,
                "rejected or discarded for {address}, deferred at RCPT:\n{}\n{context}",
                run.log
            );
        } else {
            assert!(
                run.rejected() && run.stored.is_empty(),
                "not rejected for {address}:\n{}\n{context}",
                run.log
            );
        }
    }
    match o.disposition {
        Disposition::Reject => {
            assert!(
                applied.rejected(),
                "not rejected:\n{}\n{context}",
                applied.log
            );
            assert!(
                applied.stored.is_empty(),
                "stored after a reject\n{context}"
            );
            return Checked {
                verdict: v,
                script,
                ops,
                stored: None,
            };
        }
        Disposition::Discard => {
            assert!(
                applied.discarded(),
                "not discarded:\n{}\n{context}",
                applied.log
            );
            assert!(
                applied.stored.is_empty(),
                "stored after a discard\n{context}"
            );
            return Checked {
                verdict: v,
                script,
                ops,
                stored: None,
            };
        }
        _ => {}
    }
    assert!(
        !applied.rejected(),
        "rejected for {RECIPIENT}:\n{}\n{context}",
        applied.log
    );
    let folder = if o.quarantine.is_some() {
        QUARANTINE_FOLDER
    } else {
        "INBOX"
    };
    assert_eq!(
        applied
            .stored
            .iter()
            .map(|s| s.folder.as_str())
            .collect::<Vec<_>>(),
        vec![folder],
        "where the message went:\n{}\n{context}",
        applied.log
    );
    assert_eq!(
        applied.redirected_to(),
        want_redirects
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        "redirected copies:\n{}\n{context}",
        applied.log
    );
    let stored = parse_header(&applied.stored[0].message);
    let context = format!("{context}(files in {})", applied.dir().display());
    compare_header(&stored, &expected.all(), o.leadspc, &context);
    Checked {
        verdict: v,
        script,
        ops,
        stored: Some(stored),
    }
}

fn without_nul(b: &[u8]) -> Vec<u8> {
    b.iter().copied().filter(|&c| c != 0).collect()
}

/// The recipients refused at RCPT as the verdict must list them: default reply for an empty one.
fn own_outcomes(o: &Outcome) -> Vec<RecipientReject> {
    o.rejected_recipients
        .iter()
        .map(|r| {
            let default = if r.tempfail {
                DEFAULT_TEMPFAIL
            } else {
                DEFAULT_REJECT
            };
            let reply = without_nul(&r.reply);
            RecipientReject {
                reply: if reply.is_empty() {
                    default.to_vec()
                } else {
                    reply
                },
                ..r.clone()
            }
        })
        .collect()
}

/// The guards the script must start with: one per recipient refused at RCPT, in order.
fn guard_ops(o: &Outcome) -> Vec<Op> {
    own_outcomes(o)
        .into_iter()
        .map(|r| {
            if r.tempfail {
                Op::HoldRecipient { address: r.address }
            } else {
                Op::RejectRecipient {
                    address: r.address,
                    reply: r.reply,
                }
            }
        })
        .collect()
}

/// The actions of an accepted message against the model: recipients refused first, then what
/// the additions put at the top and at the end (exact bytes), the redirects, the quarantine.
fn check_ops(
    o: &Outcome,
    opts: &VerdictOptions,
    ops: &[Op],
    expected: &sieve::Expected,
    redirects: &[&str],
    context: &str,
) {
    let refused = guard_ops(o);
    assert_eq!(
        &ops[..refused.len().min(ops.len())],
        &refused[..],
        "refused recipients\n{context}"
    );
    // Additions as the engine performs them: without :last at the top, with it at the end.
    let mut top: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut end: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut seen_add = false;
    for op in ops {
        match op {
            Op::Add {
                last: false,
                name,
                value,
            } => {
                top.insert(0, (name.clone(), value.clone()));
                seen_add = true;
            }
            Op::Add {
                last: true,
                name,
                value,
            } => {
                end.push((name.clone(), value.clone()));
                seen_add = true;
            }
            Op::Delete { .. } => assert!(!seen_add, "a deletion after an addition\n{context}"),
            _ => {}
        }
    }
    let written = |fields: &[Field]| -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|f| {
                assert_eq!(f.source, Source::Added);
                let leadspc = o.leadspc && f.name != b"X-Milter-Quarantine";
                let text = opts.dialect == SieveDialect::Rfc5293;
                (f.name.clone(), written_value(&f.value, leadspc, text))
            })
            .collect()
    };
    let same = |a: &[(Vec<u8>, Vec<u8>)], b: &[(Vec<u8>, Vec<u8>)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0.eq_ignore_ascii_case(&y.0) && x.1 == y.1)
    };
    let (mut want_top, mut want_end) = (written(&expected.top), written(&expected.end));
    if o.headers.is_empty() && opts.dialect == SieveDialect::Rfc5293 {
        // On an empty header everything goes to the top (docs/verdicts.md).
        want_end.splice(0..0, want_top.drain(..));
        std::mem::swap(&mut want_top, &mut want_end);
    }
    assert!(
        same(&top, &want_top) && same(&end, &want_end),
        "the additions differ from the model:\n top {:?}\n want {:?}\n end {:?}\n want {:?}\n{context}",
        lossy(&top),
        lossy(&want_top),
        lossy(&end),
        lossy(&want_end)
    );
    let got_redirects: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Redirect(a) => Some(String::from_utf8_lossy(a).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        got_redirects, redirects,
        "redirects (each address once)\n{context}"
    );
    let fileinto: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op, Op::Fileinto(_)))
        .collect();
    if o.quarantine.is_some() {
        assert_eq!(
            fileinto,
            vec![&Op::Fileinto(opts.quarantine_folder.as_bytes().to_vec())],
            "{context}"
        );
        assert!(
            matches!(ops.last(), Some(Op::Fileinto(_))),
            "fileinto last\n{context}"
        );
    } else {
        assert!(fileinto.is_empty(), "{context}");
    }
}

fn lossy(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// The stored header against the model: same names (case aside, Pigeonhole capitalises the
/// names it adds) in the same order, same values as a reader sees them (RFC 2047 decoded,
/// unfolded; white space compared as one space, since Pigeonhole refolds).
fn compare_header(stored: &[(Vec<u8>, Vec<u8>)], want: &[Field], leadspc: bool, context: &str) {
    let got: Vec<(String, String)> = stored
        .iter()
        .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), readable(v)))
        .collect();
    let want: Vec<(String, String)> = want
        .iter()
        .map(|f| {
            let value = match f.source {
                Source::Original => f.value.clone(),
                Source::Added => {
                    written_value(&f.value, leadspc && f.name != b"X-Milter-Quarantine", true)
                }
            };
            (
                String::from_utf8_lossy(&f.name).to_ascii_lowercase(),
                readable(&value),
            )
        })
        .collect();
    if got != want {
        let mut diff = String::new();
        for i in 0..got.len().max(want.len()) {
            let g = got
                .get(i)
                .map(|(n, v)| format!("{n}: {v}"))
                .unwrap_or_default();
            let w = want
                .get(i)
                .map(|(n, v)| format!("{n}: {v}"))
                .unwrap_or_default();
            diff.push_str(&format!(
                "{} stored {g:?}\n  model  {w:?}\n",
                if g == w { " " } else { "!" }
            ));
        }
        panic!("the stored header is not the model's:\n{diff}{context}");
    }
}

/// Both CONTEXT_EDITS settings.
fn verify_both(o: &Outcome, redirects: &[&str]) -> [Checked; 2] {
    [
        verify(o, &options(true), redirects),
        verify(o, &options(false), redirects),
    ]
}

fn stored_names(c: &Checked) -> Vec<String> {
    c.stored
        .as_ref()
        .expect("a stored message")
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
        .collect()
}

fn stored_value(c: &Checked, name: &str, nth: usize) -> String {
    let fields: Vec<&(Vec<u8>, Vec<u8>)> = c
        .stored
        .as_ref()
        .expect("a stored message")
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .collect();
    readable(
        &fields
            .get(nth)
            .unwrap_or_else(|| panic!("no {name} #{nth}"))
            .1,
    )
}

// ---------------------------------------------------------------------------------------------
// ADDHEADER and INSHEADER.

#[test]
fn addheader_appends() {
    let o = edited(
        plain(),
        vec![add("X-Spam-Score", b"5.2"), add("X-Spam-Flag", b"YES")],
    );
    for c in verify_both(&o, &[]) {
        let names = stored_names(&c);
        assert_eq!(&names[names.len() - 2..], ["x-spam-score", "x-spam-flag"]);
    }
}

#[test]
fn insheader_at_zero_goes_on_top() {
    let o = edited(
        plain(),
        vec![
            ins(0, "DKIM-Signature", b"v=1; a=rsa-sha256; d=example.net"),
            ins(0, "ARC-Seal", b"i=1"),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(
            stored_names(&c)[..3],
            ["arc-seal", "dkim-signature", "received"]
        );
    }
}

#[test]
fn insheader_past_the_end_goes_to_the_end() {
    let o = edited(
        plain(),
        vec![ins(6, "X-At-End", b"6"), ins(1000, "X-Past-End", b"1000")],
    );
    for c in verify_both(&o, &[]) {
        let names = stored_names(&c);
        assert_eq!(&names[names.len() - 2..], ["x-at-end", "x-past-end"]);
    }
}

/// Sieve adds only at the top or at the end: an insert before the last field goes to the top
/// (docs/verdicts.md), in sendmail's order.
#[test]
fn insheader_in_between_goes_to_the_top() {
    let o = edited(
        plain(),
        vec![
            ins(3, "X-Third", b"3"),
            ins(1, "X-First", b"1"),
            ins(5, "X-Last-But-One", b"5"),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(
            stored_names(&c)[..4],
            ["x-first", "x-third", "x-last-but-one", "received"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CHGHEADER.

#[test]
fn chgheader_changes() {
    let o = edited(plain(), vec![chg(1, "Subject", b"[SPAM] hello")]);
    let [by_value, by_position] = verify_both(&o, &[]);
    assert!(by_value
        .script
        .contains("deleteheader :comparator \"i;octet\" :is \"Subject\" \"hello\";"));
    assert!(by_position
        .script
        .contains("deleteheader :index 1 \"Subject\";"));
    for c in [by_value, by_position] {
        assert_eq!(stored_value(&c, "Subject", 0), "[SPAM] hello");
        assert_eq!(
            stored_names(&c).iter().filter(|n| *n == "subject").count(),
            1
        );
    }
}

#[test]
fn chgheader_deletes() {
    let o = edited(
        plain(),
        vec![chg(1, "Message-ID", b""), chg(1, "date", b"")],
    );
    for c in verify_both(&o, &[]) {
        assert!(!stored_names(&c)
            .iter()
            .any(|n| n == "message-id" || n == "date"));
    }
}

#[test]
fn chgheader_index_zero_is_the_first() {
    let headers = vec![h("X-A", b" one"), h("Subject", b" s"), h("X-A", b" two")];
    let o = edited(headers, vec![chg(0, "X-A", b"ONE")]);
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "X-A", 0), "two");
        assert_eq!(stored_value(&c, "X-A", 1), "ONE");
    }
}

#[test]
fn chgheader_past_the_last_occurrence() {
    // A change adds the field (sendmail); a deletion does nothing.
    let o = edited(
        plain(),
        vec![chg(2, "Subject", b"second subject"), chg(3, "X-None", b"")],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "Subject", 0), "hello");
        assert_eq!(stored_value(&c, "Subject", 1), "second subject");
    }
}

#[test]
fn several_edits_of_one_field_in_one_message() {
    let headers = vec![
        h("X-A", b" one"),
        h("X-A", b" two"),
        h("X-A", b" three"),
        h("Subject", b" s"),
    ];
    let o = edited(
        headers,
        vec![
            chg(2, "X-A", b"TWO"),
            chg(2, "X-A", b"Two again"),
            chg(1, "X-A", b""),
            add("X-A", b"four"),
            chg(4, "X-A", b"FOUR"),
            chg(1, "X-A", b"one back"),
            chg(3, "x-a", b""),
        ],
    );
    for c in verify_both(&o, &[]) {
        let values: Vec<String> = (0..3).map(|k| stored_value(&c, "X-A", k)).collect();
        assert_eq!(values, ["one back", "Two again", "FOUR"]);
    }
}

#[test]
fn a_field_whose_value_occurs_twice() {
    let headers = vec![
        h("X-Tag", b" same"),
        h("X-Tag", b" other"),
        h("X-Tag", b" same"),
        h("X-Tag", b" SAME"),
    ];
    // The third goes: its value alone would take the first (and, with the default comparator,
    // the fourth) with it.
    let o = edited(headers.clone(), vec![chg(3, "X-Tag", b"")]);
    let [by_value, _] = verify_both(&o, &[]);
    assert!(by_value
        .script
        .contains(":index 3 :comparator \"i;octet\" :is \"X-Tag\" \"same\""));
    let values: Vec<String> = (0..3)
        .map(|k| stored_value(&by_value, "X-Tag", k))
        .collect();
    assert_eq!(values, ["same", "other", "SAME"]);
    // Both go: the value alone is enough.
    let o = edited(headers, vec![chg(1, "X-Tag", b"new"), chg(3, "X-Tag", b"")]);
    let [by_value, _] = verify_both(&o, &[]);
    assert!(by_value
        .script
        .contains("deleteheader :comparator \"i;octet\" :is \"X-Tag\" \"same\";"));
    assert!(!by_value.script.contains(":index"));
}

#[test]
fn received_and_auto_submitted_are_not_deleted() {
    let mut headers = plain();
    headers.push(h("Auto-Submitted", b" auto-generated"));
    let o = edited(
        headers,
        vec![
            chg(1, "Received", b"forged"),
            chg(1, "Auto-Submitted", b""),
            add("Received", b"by milter"),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(
            stored_value(&c, "Received", 0),
            "from mx.example.net by mta.example.org"
        );
        assert_eq!(stored_value(&c, "Auto-Submitted", 0), "auto-generated");
    }
}

// ---------------------------------------------------------------------------------------------
// Values.

#[test]
fn folded_values() {
    let headers = vec![
        h("Subject", b" hello"),
        h(
            "X-Spam-Status",
            b" No, score=1.2 required=5.0\n\ttests=ALL_TRUSTED,\n\tBAYES_00 autolearn=ham",
        ),
        h("X-Folded-First", b"\n\tstarts on the second line"),
    ];
    let o = edited(
        headers,
        vec![
            chg(1, "X-Spam-Status", b"Yes, score=9.9\r\n\ttests=GTUBE"),
            chg(1, "X-Folded-First", b""),
            add("X-Bare-Breaks", b"one\ntwo\rthree\r\n"),
            add("X-Fold-Runs", b"a \n\n\t b"),
        ],
    );
    let [by_value, _] = verify_both(&o, &[]);
    assert!(by_value.script.contains(":matches \"X-Spam-Status\" \"No, score=1.2 required=5.0*tests=ALL_TRUSTED,*BAYES_00 autolearn=ham\""));
    assert_eq!(
        stored_value(&by_value, "X-Spam-Status", 0),
        "Yes, score=9.9 tests=GTUBE"
    );
    assert_eq!(stored_value(&by_value, "X-Bare-Breaks", 0), "one two three");
}

#[test]
fn empty_values() {
    let headers = vec![h("X-Empty", b""), h("X-Blank", b"   "), h("Subject", b" s")];
    let o = edited(
        headers,
        vec![
            chg(1, "X-Empty", b"now set"),
            chg(1, "X-Blank", b""),
            add("X-New-Empty", b""),
            ins(0, "X-Top-Empty", b""),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(
            stored_names(&c),
            ["x-top-empty", "subject", "x-empty", "x-new-empty"]
        );
        assert_eq!(stored_value(&c, "X-New-Empty", 0), "");
    }
}

#[test]
fn leading_and_trailing_white_space() {
    let headers = vec![h("X-Pad", b"  \t padded \t "), h("Subject", b" s")];
    let mut o = edited(
        headers,
        vec![chg(1, "X-Pad", b"  new  "), add("X-Lead", b"\tx")],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "X-Pad", 0), "new");
    }
    o.leadspc = true;
    verify_both(&o, &[]);
}

#[test]
fn a_very_long_value() {
    let words: Vec<u8> = b"word ".repeat(1000);
    let solid = vec![b'x'; 5000];
    let headers = vec![
        h("X-Long", &[b" ", &words[..]].concat()),
        h("Subject", b" s"),
    ];
    let o = edited(
        headers,
        vec![chg(1, "X-Long", &solid), add("X-Words", &words)],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "X-Long", 0), "x".repeat(5000));
        assert_eq!(
            stored_value(&c, "X-Words", 0),
            String::from_utf8_lossy(words.trim_ascii())
        );
    }
}

#[test]
fn quotes_and_backslashes() {
    let headers = vec![
        h("X-Q", b" say \"hi\" \\ back\\slash"),
        h("X-P", b" a*b?c\\*"),
    ];
    let o = edited(
        headers,
        vec![
            chg(1, "X-Q", b"\"quoted\" \\\\ two"),
            chg(1, "X-P", b""),
            add("X-End", b"\\"),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "X-Q", 0), "\"quoted\" \\\\ two");
        assert_eq!(stored_value(&c, "X-End", 0), "\\");
        assert!(!stored_names(&c).contains(&"x-p".to_string()));
    }
}

#[test]
fn dollar_and_encoded_character_text() {
    let headers = vec![h("X-Price", b" $5 ${hex:41} ${unicode:42}")];
    let edits = vec![
        chg(1, "X-Price", b"$6 ${hex:41}"),
        add("X-Literal", b"${hex:41}${unicode:263A}"),
    ];
    // Without bytes that need encoded-character, `${` is plain text.
    let o = edited(headers.clone(), edits.clone());
    for c in verify_both(&o, &[]) {
        assert!(!c.script.contains("encoded-character"));
        assert_eq!(stored_value(&c, "X-Price", 0), "$6 ${hex:41}");
        assert_eq!(stored_value(&c, "X-Literal", 0), "${hex:41}${unicode:263A}");
    }
    // With them, `$` is encoded so that `${hex:41}` stays text.
    let mut edits = edits;
    edits.push(add("X-Latin1", b"caf\xe9"));
    let o = edited(headers, edits);
    for c in verify_both(&o, &[]) {
        assert!(c.script.contains("encoded-character"));
        assert_eq!(stored_value(&c, "X-Price", 0), "$6 ${hex:41}");
        assert_eq!(stored_value(&c, "X-Literal", 0), "${hex:41}${unicode:263A}");
    }
}

#[test]
fn eight_bit_bytes() {
    let headers = vec![
        h("Subject", " café ☕".as_bytes()),
        h("X-Latin1", b" caf\xe9"),
        h("X-Encoded", b" =?utf-8?q?caf=C3=A9?= =?utf-8?b?4piV?= tail"),
        h("X-Encoded", b" =?iso-8859-1?q?caf=E9?="),
    ];
    let o = edited(
        headers,
        vec![
            chg(1, "Subject", "thé ☕ ünïcödé".as_bytes()),
            chg(1, "X-Latin1", b"r\xe9sum\xe9 \xff\xfe"),
            chg(1, "X-Encoded", b""),
            chg(2, "X-Encoded", b"plain"),
            add("X-Utf8", "日本語".as_bytes()),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "Subject", 0), "thé ☕ ünïcödé");
        assert_eq!(stored_value(&c, "X-Utf8", 0), "日本語");
        assert_eq!(stored_value(&c, "X-Encoded", 0), "plain");
        // Pigeonhole turns bytes that are not UTF-8 into U+FFFD; the parser saw them exact.
        assert_eq!(
            stored_value(&c, "X-Latin1", 0),
            "r\u{FFFD}sum\u{FFFD} \u{FFFD}"
        );
        assert!(c.ops.contains(&Op::Add {
            last: true,
            name: b"X-Latin1".to_vec(),
            value: b"r\xe9sum\xe9 \xff\xfe".to_vec()
        }));
    }
}

#[test]
fn control_characters_and_nul() {
    let headers = vec![h("X-Ctl", b" a\x01b\x7fc"), h("Subject", b" s")];
    let o = edited(
        headers,
        vec![chg(1, "X-Ctl", b"d\x02e\0f\x0bg"), add("X-Nul", b"\0")],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_value(&c, "X-Ctl", 0), "d ef g");
    }
}

#[test]
fn invalid_names_are_left_out() {
    let o = edited(
        plain(),
        vec![
            add("Bad Name", b"x"),
            add("", b"x"),
            add("X-Good", b"y"),
            ins(0, "Bad:Name", b"z"),
        ],
    );
    for c in verify_both(&o, &[]) {
        assert_eq!(stored_names(&c).last().map(String::as_str), Some("x-good"));
    }
}

// ---------------------------------------------------------------------------------------------
// Dispositions, recipients, quarantine, dialects.

#[test]
fn reject_is_ereject() {
    let mut o = Outcome::new(Disposition::Reject, Stage::Eom);
    o.headers = plain();
    o.reply = Some(b"554 5.7.1 Gtube pattern \"quoted\"".to_vec());
    let c = verify(&o, &options(true), &[]);
    assert_eq!(
        c.verdict.reply.as_deref(),
        Some(&b"554 5.7.1 Gtube pattern \"quoted\""[..])
    );
    o.reply = None;
    o.stage = Stage::Rcpt;
    verify(&o, &options(true), &[]);
}

#[test]
fn discard_is_discard() {
    let mut o = edited(plain(), vec![add("X-Ignored", b"1")]);
    o.disposition = Disposition::Discard;
    verify(&o, &options(true), &[]);
}

#[test]
fn tempfail_is_a_deferral() {
    let mut o = edited(plain(), vec![add("X-Ignored", b"1")]);
    o.disposition = Disposition::Tempfail;
    let c = verify(&o, &options(true), &[]);
    assert_eq!(c.verdict.kind, VerdictKind::Defer);
}

#[test]
fn recipient_rejects_apply_to_that_recipient_only() {
    let mut o = edited(
        plain(),
        vec![add("X-Spam", b"no"), rcpt("<archive@example.org>")],
    );
    o.quarantine = Some(b"held for review".to_vec());
    o.rejected_recipients = vec![
        RecipientReject {
            index: 1,
            address: b"bad@example.org".to_vec(),
            tempfail: false,
            reply: b"550 5.1.1 <bad@example.org>: no such user".to_vec(),
        },
        RecipientReject {
            index: 2,
            address: b"worse@example.org".to_vec(),
            tempfail: false,
            reply: Vec::new(),
        },
    ];
    // verify applies it for rcpt@example.org (delivered, edited, redirected, quarantined) and
    // for each refused recipient (rejected, nothing stored, no conflict with fileinto/redirect).
    let c = verify(&o, &options(true), &["archive@example.org"]);
    assert!(c.script.contains("  stop;\r\n"));
    // One refused temporarily: that one is deferred alone (its own outcome, and only a guard
    // with stop in the script); the others are still delivered, edited and redirected.
    o.rejected_recipients[1].tempfail = true;
    o.rejected_recipients[1].reply = b"450 4.2.1 Mailbox busy".to_vec();
    let c = verify(&o, &options(true), &["archive@example.org"]);
    assert_eq!(c.verdict.kind, VerdictKind::Sieve);
    assert_eq!(
        c.verdict.recipients[1].reply,
        b"450 4.2.1 Mailbox busy".to_vec()
    );
    // The same refusals before a whole-message reject, discard or deferral.
    for d in [
        Disposition::Reject,
        Disposition::Discard,
        Disposition::Tempfail,
    ] {
        o.disposition = d;
        verify(&o, &options(true), &[]);
    }
}

#[test]
fn addrcpt_is_redirect_copy() {
    let o = edited(
        plain(),
        vec![
            rcpt("<archive@example.org>"),
            rcpt("\"odd guy\"@example.org"),
            rcpt("x@[192.0.2.1]"),
            rcpt("not an address"),
            rcpt("<>"),
            Edit::AddRcpt {
                rcpt: b"<param@example.org>".to_vec(),
                args: Some(b"NOTIFY=NEVER".to_vec()),
            },
        ],
    );
    verify(
        &o,
        &options(true),
        &[
            "archive@example.org",
            "\"odd guy\"@example.org",
            "x@[192.0.2.1]",
            "param@example.org",
        ],
    );
}

#[test]
fn quarantine_files_into_the_folder() {
    let mut o = edited(plain(), vec![add("X-Spam", b"yes")]);
    o.quarantine = Some(b"virus \"EICAR\" found".to_vec());
    let c = verify(&o, &options(true), &[]);
    assert_eq!(stored_names(&c)[0], "x-milter-quarantine");
    assert_eq!(
        stored_value(&c, "X-Milter-Quarantine", 0),
        "virus \"EICAR\" found"
    );
    o.quarantine = Some(Vec::new());
    let c = verify(&o, &options(true), &[]);
    assert!(!stored_names(&c).contains(&"x-milter-quarantine".to_string()));
}

#[test]
fn legacy_dialect_is_well_formed() {
    let mut o = edited(
        plain(),
        vec![
            ins(0, "X-Top", b"t"),
            chg(1, "Subject", b"caf\xe9 \"q\" $ \\"),
            add("X-Folded", b"a\r\n\tb"),
        ],
    );
    o.quarantine = Some(b"held".to_vec());
    let c = verify(&o, &legacy(), &[]);
    assert!(c.script.starts_with(
        "require [\"addheader\", \"editheader\", \"fileinto\", \"encoded-character\"];\r\n"
    ));
    assert!(c
        .ops
        .iter()
        .all(|op| !matches!(op, Op::Add { last: false, .. })));
}

#[test]
fn nothing_to_do_is_no_verdict() {
    let o = edited(
        plain(),
        vec![chg(2, "Subject", b""), add("Bad Name", b"x"), rcpt("<>")],
    );
    let c = verify(&o, &options(true), &[]);
    assert_eq!(c.verdict.kind, VerdictKind::None);
}

// ---------------------------------------------------------------------------------------------
// The property test: random edit sequences on random headers.

/// xorshift64*: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, items: &[&'static [u8]]) -> &'static [u8] {
        items[self.below(items.len())]
    }
}

const NAMES: [&str; 10] = [
    "Subject",
    "X-A",
    "x-a",
    "X-B",
    "From",
    "To",
    "Received",
    "Auto-Submitted",
    "DKIM-Signature",
    "X-Spam-Status",
];
const BAD_NAMES: [&[u8]; 5] = [b"Bad Name", b"", b"Bad:Name", b"Tab\tName", b"X-\xc3\xa9"];

/// Words of values: text Sieve and mail treat specially.
const WORDS: [&[u8]; 24] = [
    b"hello",
    b"v",
    b"w",
    b"Same",
    b"same",
    b"a*b?c",
    b"p\\q",
    b"say \"hi\"",
    b"$5",
    b"${hex:41}",
    b"${unicode:42}",
    b"=?utf-8?q?caf=C3=A9?=",
    b"=?iso-8859-1?q?caf=E9?=",
    b"=?unclosed",
    "café".as_bytes(),
    "☕".as_bytes(),
    b"\xe9",
    b"\xff\xfe",
    b"\x01",
    b"\x7f",
    b"score=5.0",
    b"tests=NONE,BAYES_00",
    b"<id@example.net>",
    b"[SPAM]",
];

fn random_name(r: &mut Rng) -> Vec<u8> {
    if r.percent(8) {
        // Any valid name.
        (0..1 + r.below(12))
            .map(|_| 33 + r.below(94) as u8)
            .filter(|&b| b != b':')
            .chain(*b"Z")
            .collect()
    } else {
        r.pick(&NAMES).as_bytes().to_vec()
    }
}

/// An original field value as the library parses one: leading white space kept, folds as `\n`
/// and white space, never a CR or NUL.
fn random_original_value(r: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    if !pool.is_empty() && r.percent(30) {
        return r.pick(pool).clone();
    }
    let mut v: Vec<u8> = r
        .bytes(&[&b" "[..], b" ", b" ", b"", b"\t", b"\n ", b"  "])
        .to_vec();
    let words = r.below(5);
    for k in 0..words {
        if k > 0 {
            v.extend_from_slice(r.bytes(&[
                &b" "[..],
                b" ",
                b"  ",
                b"\t",
                b"\n ",
                b"\n\t",
                b" \n  ",
            ]));
        }
        v.extend_from_slice(r.bytes(&WORDS));
    }
    if v == b"\n " {
        v = b" ".to_vec(); // a fold with nothing after it is not a field
    }
    v
}

/// A value as a Milter may send one: anything but what the wire cannot carry, NUL aside.
fn random_edit_value(r: &mut Rng) -> Vec<u8> {
    if r.percent(3) {
        return b"long ".repeat(200 + r.below(800));
    }
    if r.percent(2) {
        return vec![b'y'; 3000 + r.below(2000)];
    }
    let mut v = Vec::new();
    if r.percent(20) {
        v.push(b' ');
    }
    for k in 0..r.below(5) {
        if k > 0 {
            v.extend_from_slice(r.bytes(&[
                &b" "[..],
                b" ",
                b"\t",
                b"\r\n\t",
                b"\n ",
                b"\n",
                b"\r",
                b"\r\n",
                b"  \n\n  ",
                b"\0",
                b"\x0b",
            ]));
        }
        v.extend_from_slice(r.bytes(&WORDS));
    }
    if r.percent(10) {
        v.extend_from_slice(r.bytes(&[&b" "[..], b"\r\n", b"\n\t", b"\t "]));
    }
    v
}

/// ADDRCPT arguments and whether they are addresses.
const RCPTS: [(&str, Option<&str>); 7] = [
    ("<archive@example.org>", Some("archive@example.org")),
    ("copy@example.net", Some("copy@example.net")),
    ("\"odd guy\"@example.org", Some("\"odd guy\"@example.org")),
    ("x@[192.0.2.1]", Some("x@[192.0.2.1]")),
    ("not an address", None),
    ("<>", None),
    ("caf\u{e9}@example.org", None),
];

fn random_case(seed: u64) -> (Outcome, VerdictOptions, Vec<&'static str>) {
    let mut r = Rng::new(seed);
    let mut headers = Vec::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for _ in 0..r.below(9) {
        let value = random_original_value(&mut r, &pool);
        pool.push(value.clone());
        headers.push(Header {
            name: random_name(&mut r),
            value,
        });
    }
    let mut edits = Vec::new();
    let mut redirects = Vec::new();
    for _ in 0..r.below(9) {
        let name = if r.percent(4) {
            r.bytes(&BAD_NAMES).to_vec()
        } else {
            random_name(&mut r)
        };
        let edit = match r.below(10) {
            0..=2 => Edit::AddHeader {
                name,
                value: random_edit_value(&mut r),
            },
            3..=4 => Edit::InsHeader {
                index: if r.percent(5) {
                    u32::MAX
                } else {
                    r.below(headers.len() + 4) as u32
                },
                name,
                value: random_edit_value(&mut r),
            },
            5..=8 => Edit::ChgHeader {
                index: if r.percent(5) {
                    1000
                } else if r.percent(80) {
                    r.below(3) as u32
                } else {
                    r.below(6) as u32
                },
                // Mostly a field the message has, so that changes meet fields.
                name: if !headers.is_empty() && r.percent(70) {
                    r.pick(&headers).name.clone()
                } else {
                    name
                },
                value: if r.percent(35) {
                    Vec::new()
                } else {
                    random_edit_value(&mut r)
                },
            },
            _ => {
                let (arg, address) = *r.pick(&RCPTS);
                redirects.extend(address);
                Edit::AddRcpt {
                    rcpt: arg.as_bytes().to_vec(),
                    args: None,
                }
            }
        };
        edits.push(edit);
    }
    let disposition = match r.below(100) {
        0..=7 => Disposition::Reject,
        8..=12 => Disposition::Discard,
        13..=17 => Disposition::Tempfail,
        18..=50 => Disposition::Accept,
        _ => Disposition::Continue,
    };
    let mut o = Outcome {
        headers,
        edits,
        leadspc: r.percent(30),
        ..Outcome::new(disposition, Stage::Eom)
    };
    if r.percent(40) {
        o.reply = Some(
            r.bytes(&[
                &b"550 5.7.1 Spam \"detected\""[..],
                b"554 caf\xe9 \\ $",
                b"",
                b"550-5.7.1 a\r\n550 5.7.1 b",
            ])
            .to_vec(),
        );
    }
    if r.percent(12) {
        for (index, address) in ["bad@example.org", "Worse@Example.org"]
            .iter()
            .take(1 + r.below(2))
            .enumerate()
        {
            o.rejected_recipients.push(RecipientReject {
                index,
                address: address.as_bytes().to_vec(),
                tempfail: r.percent(15),
                reply: r
                    .bytes(&[
                        &b"550 5.1.1 No such user"[..],
                        b"",
                        b"550 5.7.1 \"q\" \\ \xe9",
                    ])
                    .to_vec(),
            });
        }
    }
    if r.percent(15) {
        o.quarantine = Some(random_edit_value(&mut r));
    }
    let opts = VerdictOptions {
        context_edits: r.percent(50),
        dialect: if r.percent(15) {
            SieveDialect::Legacy
        } else {
            SieveDialect::Rfc5293
        },
        quarantine_folder: QUARANTINE_FOLDER.to_string(),
        limits: roomy(),
    };
    (o, opts, redirects)
}

/// 200 random outcomes, each checked as every test above is. A failure names its case; rerun it
/// alone with SIEVE_CASE=n; SIEVE_CASES=a..b runs other seeds (a longer search).
#[test]
fn random_edit_sequences() {
    let cases: Vec<u64> = match (std::env::var("SIEVE_CASE"), std::env::var("SIEVE_CASES")) {
        (Ok(n), _) => vec![n.parse().expect("SIEVE_CASE is a number")],
        (_, Ok(range)) => {
            let (a, b) = range.split_once("..").expect("SIEVE_CASES is a range a..b");
            (a.parse().expect("a number")..b.parse().expect("a number")).collect()
        }
        _ => (0..200).collect(),
    };
    pigeonhole();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::new());
    // The cases' own panics are collected and reported together below, not printed each.
    let quiet = "sieve-case";
    let hook = std::sync::Arc::new(std::panic::take_hook());
    let previous = hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(quiet) {
            previous(info);
        }
    }));
    std::thread::scope(|s| {
        for _ in 0..workers {
            let work = || loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&case) = cases.get(k) else { break };
                let result = std::panic::catch_unwind(|| {
                    let (o, opts, redirects) = random_case(case);
                    let c = verify(&o, &opts, &redirects);
                    what_it_covered(&o, &opts, &redirects, &c)
                });
                match result {
                    Ok(covered) => {
                        let mut t = tally.lock().expect("lock");
                        for what in covered {
                            *t.entry(what).or_insert(0) += 1;
                        }
                    }
                    Err(e) => {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("case {case}: {msg}"));
                    }
                }
            };
            std::thread::Builder::new()
                .name(quiet.to_string())
                .spawn_scoped(s, work)
                .expect("spawning a worker");
        }
    });
    let failures = failures.into_inner().expect("lock");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed (SIEVE_CASE=n reruns one):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    // The generator must keep reaching every kind of verdict.
    let tally = tally.into_inner().expect("lock");
    eprintln!("random_edit_sequences covered: {tally:?}");
    if cases.len() == 200 {
        for (what, least) in [
            ("header applied by Pigeonhole", 80),
            ("by value (CONTEXT_EDITS=1)", 10),
            ("by position (CONTEXT_EDITS=0)", 10),
            ("legacy dialect", 10),
            ("reject", 5),
            ("discard", 5),
            ("deferral", 5),
            ("recipient refused", 5),
            ("quarantine", 5),
            ("redirect", 10),
            ("bytes that are not UTF-8", 10),
        ] {
            let got = tally.get(what).copied().unwrap_or(0);
            assert!(
                got >= least,
                "only {got} cases covered {what:?} (want {least}): {tally:?}"
            );
        }
    }
}

/// What a checked random case covered, for the tally.
fn what_it_covered(
    o: &Outcome,
    opts: &VerdictOptions,
    redirects: &[&str],
    c: &Checked,
) -> Vec<&'static str> {
    let mut covered = Vec::new();
    match c.verdict.kind {
        VerdictKind::None => covered.push("no verdict"),
        VerdictKind::Defer => covered.push("deferral"),
        VerdictKind::Sieve => {}
    }
    if c.verdict.kind != VerdictKind::Sieve {
        return covered;
    }
    if opts.dialect == SieveDialect::Legacy {
        covered.push("legacy dialect");
    }
    match o.disposition {
        Disposition::Reject => covered.push("reject"),
        Disposition::Discard => covered.push("discard"),
        _ => {}
    }
    if c.stored.is_some() {
        covered.push("header applied by Pigeonhole");
        if c.script.contains("deleteheader") {
            covered.push(if opts.context_edits {
                "by value (CONTEXT_EDITS=1)"
            } else {
                "by position (CONTEXT_EDITS=0)"
            });
        }
        if !o.rejected_recipients.is_empty() {
            covered.push("recipient refused");
        }
        if o.quarantine.is_some() {
            covered.push("quarantine");
        }
        if !redirects.is_empty() {
            covered.push("redirect");
        }
        if c.script.contains("${hex:") && c.script.contains("encoded-character") {
            covered.push("bytes that are not UTF-8");
        }
    }
    covered
}

/// DELRCPT: the deleted recipient gets nothing (its run discards and stops), every other
/// recipient gets the message with the edits; a redirect the Milter added still happens.
#[test]
fn delrcpt_discards_for_that_recipient_only() {
    let o = edited(
        plain(),
        vec![
            add("X-Spam", b"yes"),
            rcpt("<archive@example.org>"),
            Edit::DelRcpt {
                rcpt: b"<gone@example.org>".to_vec(),
            },
        ],
    );
    let v = build(&o, &options(true));
    assert_eq!(v.kind, VerdictKind::Sieve);
    let script = String::from_utf8(v.script.clone()).expect("UTF-8");
    assert!(
        script.ends_with(
            "if envelope :is \"to\" \"gone@example.org\" {\r\n  discard;\r\n  stop;\r\n}\r\n"
        ),
        "{script}"
    );
    let engine = pigeonhole();
    let msg = message(&o.headers);
    let kept = engine.apply(&for_pigeonhole(&v.script), &msg, RECIPIENT);
    assert_eq!(kept.stored.len(), 1, "{}", kept.log);
    let stored = parse_header(&kept.stored[0].message);
    assert!(
        stored
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"X-Spam") && v.trim_ascii() == b"yes"),
        "{}",
        kept.log
    );
    assert_eq!(kept.redirected_to(), ["archive@example.org"]);
    let gone = engine.apply(&for_pigeonhole(&v.script), &msg, "gone@example.org");
    assert!(
        gone.stored.is_empty(),
        "stored for the deleted recipient: {}",
        gone.log
    );
    assert!(gone.discarded(), "{}", gone.log);
    assert_eq!(gone.redirected_to(), ["archive@example.org"]);
}

// ---------------------------------------------------------------------------------------------
// The engine's default limits (issue 15, item 7): whatever the Milter sends, the verdict
// compiles and runs under Pigeonhole's defaults, and its decisions hold. Driven by a real
// Milter (tests/milters/any_reply.py, pymilter) through the library, as an MTA would be.

#[path = "support/milters.rs"]
mod milters;

/// A message for these tests, with CRLF line ends.
const LIMITS_MESSAGE: &[u8] = b"From: Alice <alice@example.net>\r\nTo: rcpt@example.org\r\n\
                                Subject: limits\r\nMessage-ID: <limits@example.net>\r\n\r\n\
                                The body.\r\n";

/// An X-Spam-Report of about 3 KB, folded as SpamAssassin folds one.
fn spam_report() -> String {
    let line = "*  0.1 SOME_RULE Some rule that matched, with its explanation";
    let mut r = String::from("Content analysis details:   (6.2 points, 5.0 required)");
    while r.len() < 3000 {
        r.push_str("\\n\\t");
        r.push_str(line);
    }
    r
}

/// The envelope of these tests: `rcpt@example.org` (RECIPIENT) and the others given.
fn limits_envelope(others: &[&str]) -> milter_spamfilter::Envelope {
    let mut recipients = vec![milter_spamfilter::Recipient::new(
        RECIPIENT.as_bytes().to_vec(),
    )];
    for o in others {
        recipients.push(milter_spamfilter::Recipient::new(o.as_bytes().to_vec()));
    }
    milter_spamfilter::Envelope {
        client_addr: Some("192.0.2.10".parse().expect("literal address")),
        helo: Some(b"client.example".to_vec()),
        sender: b"alice@example.net".to_vec(),
        recipients,
        ..milter_spamfilter::Envelope::default()
    }
}

/// The library's verdict for the message from a pymilter Milter with this spec, with every
/// option at its default.
fn verdict_from(spec: &str, env: &milter_spamfilter::Envelope) -> Verdict {
    let m = milters::any_reply(spec);
    match m
        .handle()
        .filter(env, milter_spamfilter::Content::Buffer(LIMITS_MESSAGE))
    {
        Ok(f) => f.verdict,
        Err(e) => panic!("{e}\nMilter log:\n{}", m.log()),
    }
}

fn stored_field(stored: &sieve::Stored, name: &str) -> Option<Vec<u8>> {
    parse_header(&stored.message)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// A 3 KB X-Spam-Report (Pigeonhole's default limit for a value is 2048 bytes: a verdict
/// holding it whole does not compile) beside a reject, a quarantine and a refused recipient:
/// the reject, the quarantine and the refusal happen, and the report is there, cut.
#[test]
fn a_3_kb_spam_report_beside_a_reject_a_quarantine_or_a_refusal() {
    let engine = pigeonhole();
    let report = format!(r#"["addheader", "X-Spam-Report", "{}"]"#, spam_report());

    let spec = format!(r#"{{"edits": [{report}], "replies": {{"eom": "550 5.7.1 spam"}}}}"#);
    let v = verdict_from(&spec, &limits_envelope(&[]));
    let applied = engine.apply_with_defaults(&for_pigeonhole(&v.script), LIMITS_MESSAGE, RECIPIENT);
    assert!(applied.rejected(), "{}", applied.log);
    assert!(applied.stored.is_empty(), "{}", applied.log);

    let spec = format!(r#"{{"edits": [{report}, ["quarantine", "held for review"]]}}"#);
    let v = verdict_from(&spec, &limits_envelope(&[]));
    let applied = engine.apply_with_defaults(&for_pigeonhole(&v.script), LIMITS_MESSAGE, RECIPIENT);
    assert_eq!(applied.stored.len(), 1, "{}", applied.log);
    assert_eq!(applied.stored[0].folder, QUARANTINE_FOLDER);
    let kept = stored_field(&applied.stored[0], "X-Spam-Report").expect("the report");
    assert!(readable(&kept).starts_with("Content analysis details:"));
    assert!(
        kept.len() < 2200 && kept.len() > 1900,
        "{} bytes",
        kept.len()
    );

    let bad = "bad@example.org";
    let spec = format!(
        r#"{{"edits": [{report}], "replies": {{"envrcpt": {{"{bad}": "550 5.1.1 no such user"}}}}}}"#
    );
    let v = verdict_from(&spec, &limits_envelope(&[bad]));
    let script = for_pigeonhole(&v.script);
    let refused = engine.apply_with_defaults(&script, LIMITS_MESSAGE, bad);
    assert!(refused.rejected(), "{}", refused.log);
    assert!(refused.stored.is_empty(), "{}", refused.log);
    let delivered = engine.apply_with_defaults(&script, LIMITS_MESSAGE, RECIPIENT);
    assert_eq!(delivered.stored.len(), 1, "{}", delivered.log);
    assert!(stored_field(&delivered.stored[0], "X-Spam-Report").is_some());
}

/// Five ADDRCPTs (Pigeonhole runs at most 4 redirects by default; a fifth failed the run into
/// an implicit keep) beside a quarantine and a DELRCPT: the run succeeds, the message is
/// quarantined with four copies redirected, and the deleted recipient gets nothing.
#[test]
fn five_addrcpts_beside_a_quarantine_and_a_delrcpt() {
    let gone = "gone@example.org";
    let spec = format!(
        r#"{{"edits": [["addrcpt", "<a1@example.org>"], ["addrcpt", "<a2@example.org>"],
            ["addrcpt", "<a3@example.org>"], ["addrcpt", "<a4@example.org>"],
            ["addrcpt", "<a5@example.org>"], ["delrcpt", "<{gone}>"],
            ["quarantine", "held"]]}}"#
    );
    let v = verdict_from(&spec, &limits_envelope(&[gone]));
    let script = for_pigeonhole(&v.script);
    let engine = pigeonhole();
    let kept = engine.apply_with_defaults(&script, LIMITS_MESSAGE, RECIPIENT);
    assert_eq!(kept.stored.len(), 1, "{}", kept.log);
    assert_eq!(kept.stored[0].folder, QUARANTINE_FOLDER, "{}", kept.log);
    let four = [
        "a1@example.org",
        "a2@example.org",
        "a3@example.org",
        "a4@example.org",
    ];
    assert_eq!(kept.redirected_to(), four, "{}", kept.log);
    let deleted = engine.apply_with_defaults(&script, LIMITS_MESSAGE, gone);
    assert!(deleted.stored.is_empty(), "{}", deleted.log);
    assert!(deleted.discarded(), "{}", deleted.log);
}
