//! A real MTA that nobody on this project wrote calls the library through the Brightmail client
//! API (issue 17, item 4): Exim 4.96 built with EXPERIMENTAL_BRIGHTMAIL against
//! include/bmi_api.h, our library as its libbmiclient_single.so (tests/support/exim.rs,
//! scripts/exim-build.sh). Each test sends real SMTP through that Exim, which pushes the
//! message through the library to a real Milter (pymilter's tests/milters/any_reply.py, opendkim,
//! clamav-milter, spamass-milter, rspamd), and then checks where Exim delivered each recipient's
//! copy by its routers `bmi_dont_deliver`, `bmi_deliver_alternate` and `bmi_deliver_default`,
//! and the Sieve verdict it carried in `$bmi_alt_location` (applied with Pigeonhole).

#[path = "support/daemons.rs"]
mod daemons;
#[path = "support/date.rs"]
mod date;
#[path = "support/exim.rs"]
mod exim;
// milters.rs has a copy of process.rs of its own, as daemons.rs and exim.rs have.
#[allow(clippy::duplicate_mod)]
#[path = "support/milters.rs"]
mod milters;
#[path = "support/sieve.rs"]
mod sieve;

use exim::{Delivery, Exim, Folder};
use std::path::Path;

const SENDER: &str = "alice@example.org";
const BOB: &str = "bob@example.net";

/// The library's option file for a Milter on 127.0.0.1:`port`; generous timeouts, since spamd
/// and clamd take seconds on a loaded machine.
fn options(port: u16) -> String {
    format!("HOST=127.0.0.1\nPORT={port}\nTIMEOUT=3000\nMESSAGE_TIMEOUT=9000\nDEBUG=1\n")
}

/// A short message with `marker` in its Subject and body.
fn message(marker: &str) -> Vec<u8> {
    format!(
        "From: Alice <{SENDER}>\nTo: bob@example.net\nSubject: {marker}\n\
         Date: {}\nMessage-ID: <{marker}@example.org>\n\nHello Bob,\n\n{marker}\n",
        date::rfc5322_now()
    )
    .into_bytes()
}

/// A fixture of tests/daemons/ (dated now), with `marker` added as a header field.
fn fixture(name: &str, marker: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/daemons")
        .join(name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = format!("X-Test-Marker: {marker}\n").into_bytes();
    out.extend_from_slice(&date::dated(&text));
    out
}

/// The one copy delivered to `recipient`.
fn copy_for<'a>(copies: &'a [Delivery], recipient: &str, exim: &Exim) -> &'a Delivery {
    let mine: Vec<&Delivery> = copies.iter().filter(|d| d.recipient == recipient).collect();
    assert_eq!(
        mine.len(),
        1,
        "one copy for {recipient}: {copies:#?}\n{}",
        exim.logs()
    );
    mine[0]
}

/// The Sieve verdict an alternate delivery carried.
fn verdict_of(d: &Delivery) -> &[u8] {
    d.alt_location
        .as_deref()
        .unwrap_or_else(|| panic!("no X-BMI-Alt-Location in {d:#?}"))
}

/// The verdict applied by Pigeonhole to the message as Exim received it, for `recipient`: what
/// Messaging Server does with `spamfilterN_string_action=data:,$U`. Returns the one message it
/// stored.
fn applied(d: &Delivery) -> Vec<u8> {
    let script = sieve::for_pigeonhole(verdict_of(d));
    let run = sieve::pigeonhole().apply(&script, &d.received(), &d.recipient);
    assert_eq!(run.stored.len(), 1, "{}\n{}", run.compile_log, run.log);
    run.stored[0].message.clone()
}

/// Every value of header field `name` in `message` (LF or CRLF line ends), unfolded.
fn values(message: &[u8], name: &str) -> Vec<String> {
    sieve::parse_header(message)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(&v).trim().to_string())
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that no copy of message `id` was delivered and that Exim routed each recipient to
/// `:blackhole:` by a BMI router: `bmi_dont_deliver` (a NULL verdict) or `bmi_milter_reject`
/// (a destination that rejects).
fn assert_not_delivered(exim: &Exim, id: &str, copies: &[Delivery], recipients: &[&str]) {
    assert!(copies.is_empty(), "delivered: {copies:#?}\n{}", exim.logs());
    for r in recipients {
        assert!(
            exim.blackholed(id, r, "bmi_milter_reject")
                || exim.blackholed(id, r, "bmi_dont_deliver"),
            "{r} of {id} was not routed to :blackhole: by a BMI router\n{}",
            exim.logs()
        );
    }
}

/// A Milter that answers RCPT with `replies` (`"address": "reply"` pairs, JSON) and continues
/// for anyone else, and adds `X-Checked: yes` to the message.
fn rcpt_replies_and_checked(replies: &str) -> milters::Server {
    milters::any_reply(&format!(
        r#"{{"replies": {{"envrcpt": {{{replies}, "*": "continue"}}}},
            "edits": [["addheader", "X-Checked", "yes"]]}}"#
    ))
}

/// Asserts that `recipient`'s one copy went to the alternate folder with a verdict that adds
/// `X-Checked: yes`.
fn assert_checked_copy(copies: &[Delivery], recipient: &str, exim: &Exim) {
    let copy = copy_for(copies, recipient, exim);
    assert_eq!(copy.folder, Folder::Alternate, "{}", exim.logs());
    assert_eq!(values(&applied(copy), "X-Checked"), ["yes"]);
}

/// The recipients (RCPT's first argument) the Milter saw for the message with `marker`.
fn recipients_seen(milter: &milters::Server, marker: &str) -> Vec<String> {
    milter
        .recorded(marker)
        .all("envrcpt")
        .iter()
        .map(|e| e.get("args").texts()[0].clone())
        .collect()
}

/// Sends `message` (with `marker`) from SENDER to bob alone and asserts that no copy was
/// delivered, routed to `:blackhole:` by a BMI router.
fn assert_bob_gets_none(exim: &Exim, message: &[u8], marker: &str) {
    let (id, copies) = exim.deliver(SENDER, &[BOB], message, marker);
    assert_not_delivered(exim, &id, &copies, &[BOB]);
}

/// Sends `message` (with `marker`) from SENDER to bob alone and asserts that his one copy was
/// delivered to `folder`; returns it.
fn bobs_copy(exim: &Exim, message: &[u8], marker: &str, folder: Folder) -> Delivery {
    let (_, copies) = exim.deliver(SENDER, &[BOB], message, marker);
    let copy = copy_for(&copies, BOB, exim);
    assert_eq!(copy.folder, folder, "{}", exim.logs());
    copy.clone()
}

/// Sends a message with `marker` to bob and asserts that Exim, failing open, delivered it
/// unfiltered (the default maildir) and wrote `bmi error [loc L type T]` and then `then` to its
/// panic log, with L and T the numbers include/bmi_api.h gives the enumerators `error`.
fn assert_accepted_after_a_bmi_error(exim: &Exim, marker: &str, error: (&str, &str), then: &str) {
    bobs_copy(exim, &message(marker), marker, Folder::Default);
    let wanted = format!(
        "bmi error [loc {} type {}]{then}",
        header_value(error.0),
        header_value(error.1)
    );
    assert!(
        exim.paniclog().contains(&wanted),
        "no {wanted:?} in the panic log\n{}",
        exim.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// pymilter at each stage.

/// A Milter that asks for nothing: the verdict is default, and Exim delivers normally, to the
/// default maildir, the message as sent; the Milter saw the whole conversation Exim pushed,
/// from the SMTP client's address on.
#[test]
fn a_clean_message_is_delivered_normally() {
    let milter = milters::any_reply("{}");
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-clean-7f3a";
    let client = "192.0.2.25";
    let (_, copies) = exim.deliver_from(
        client,
        SENDER,
        &["bob@example.net"],
        &message(marker),
        marker,
    );

    let copy = copy_for(&copies, "bob@example.net", &exim);
    assert_eq!(copy.folder, Folder::Default, "{}", exim.logs());
    assert!(copy.alt_location.is_none());
    assert!(text(&copy.message).contains(&format!("\n{marker}\n")));

    let record = milter.recorded(marker);
    assert_eq!(
        record.first("connect").get("address").text().as_deref(),
        Some(client)
    );
    // BMI knows no host name and no HELO (docs/exim.md).
    assert_eq!(
        record.first("connect").get("hostname").text(),
        Some(format!("[{client}]"))
    );
    assert!(record.all("helo").is_empty(), "{:?}", record.names());
    assert_eq!(
        record.first("envfrom").get("args").texts()[0],
        format!("<{SENDER}>")
    );
    assert_eq!(
        record.first("envrcpt").get("args").texts()[0],
        "<bob@example.net>"
    );
    // Exim's own Received: comes first, then the fields as sent.
    let headers = record.headers();
    assert_eq!(headers[0].0, "Received", "{headers:?}");
    assert!(headers
        .iter()
        .any(|(n, v)| n == "Subject" && v == marker.as_bytes()));
    let body = record.first("eom").get("body").bytes().unwrap_or_default();
    assert!(text(&body).contains(marker), "{}", text(&body));
}

/// A Milter that rejects at end of message: no recipient gets a copy.
#[test]
fn a_rejected_message_is_not_delivered() {
    let milter = milters::any_reply(r#"{"replies": {"eom": "554 5.7.1 not wanted here"}}"#);
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-reject-19c2";
    let rcpts = ["bob@example.net", "carol@example.org"];
    let (id, copies) = exim.deliver(SENDER, &rcpts, &message(marker), marker);
    assert_not_delivered(&exim, &id, &copies, &rcpts);
    milter.recorded(marker);
}

/// A Milter that discards: a NULL verdict, routed by bmi_dont_deliver.
#[test]
fn a_discarded_message_is_not_delivered() {
    let milter = milters::any_reply(r#"{"replies": {"eom": "discard"}}"#);
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-discard-55d0";
    let (id, copies) = exim.deliver(SENDER, &["bob@example.net"], &message(marker), marker);
    assert!(copies.is_empty(), "{copies:#?}\n{}", exim.logs());
    assert!(
        exim.blackholed(&id, "bob@example.net", "bmi_dont_deliver"),
        "{}",
        exim.logs()
    );
}

/// A Milter that edits the header: the verdict is a destination, our Sieve scriptlet, which
/// Exim hands to its router in `$bmi_alt_location`; Pigeonhole compiles it and, applied to the
/// message Exim received, it makes the Milter's edits.
#[test]
fn an_edited_message_carries_the_sieve_verdict_in_bmi_alt_location() {
    let milter = milters::any_reply(
        r#"{"edits": [["addheader", "X-Spam-Score", "5.2"],
                      ["chgheader", "Subject", 1, "[SPAM] exim-edit-a41b"]]}"#,
    );
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-edit-a41b";
    let copy = bobs_copy(&exim, &message(marker), marker, Folder::Alternate);
    let verdict = text(verdict_of(&copy));
    assert!(verdict.contains("addheader"), "{verdict}");
    let edited = applied(&copy);
    assert_eq!(
        values(&edited, "X-Spam-Score"),
        ["5.2"],
        "{}",
        text(&edited)
    );
    assert_eq!(
        values(&edited, "Subject"),
        [format!("[SPAM] {marker}")],
        "{}",
        text(&edited)
    );
}

/// Two recipients, one refused by the Milter at RCPT, and an edit of the message: the refused
/// recipient gets a verdict of its own (not delivered), the other the message's (the edit).
#[test]
fn a_recipient_refused_at_rcpt_gets_its_own_verdict() {
    let bad = "bad@example.org";
    let good = "good@example.org";
    let milter = rcpt_replies_and_checked(&format!(r#""{bad}": "550 5.1.1 no such user""#));
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-rcpt-0e9d";
    let (id, copies) = exim.deliver(SENDER, &[bad, good], &message(marker), marker);

    assert_checked_copy(&copies, good, &exim);
    assert!(
        copies.iter().all(|d| d.recipient != bad),
        "{bad} was delivered: {copies:#?}"
    );
    assert!(
        exim.blackholed(&id, bad, "bmi_milter_reject")
            || exim.blackholed(&id, bad, "bmi_dont_deliver"),
        "{}",
        exim.logs()
    );
    // The Milter saw both recipients.
    assert_eq!(
        recipients_seen(&milter, marker),
        [format!("<{bad}>"), format!("<{good}>")]
    );
}

/// Forty recipients, every fourth refused by the Milter at RCPT: eleven verdicts (ten of one
/// recipient each, one shared), which Exim stores joined by ':' on one spool line and parses again
/// for every router of every recipient (writing a NUL over each '@' it compares): each refused
/// recipient is not delivered, each other one gets the message's edit.
#[test]
fn forty_recipients_are_each_routed_by_their_own_verdict() {
    let all: Vec<String> = (0..40).map(|i| format!("r{i:02}@example.org")).collect();
    let refused: Vec<&String> = all.iter().step_by(4).collect();
    let replies: Vec<String> = refused
        .iter()
        .map(|r| format!(r#""{r}": "550 5.1.1 no {r}""#))
        .collect();
    let dns = daemons::Resolver::start(&[]);
    let milter = rcpt_replies_and_checked(&replies.join(", "));
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-forty-71c3";
    let rcpts: Vec<&str> = all.iter().map(String::as_str).collect();
    let (id, copies) = exim.deliver(SENDER, &rcpts, &message(marker), marker);

    assert_eq!(copies.len(), 30, "{copies:#?}\n{}", exim.logs());
    // The shared verdict makes the edit; every delivered recipient has that same verdict.
    let shared = verdict_of(&copies[0]).to_vec();
    assert_eq!(values(&applied(&copies[0]), "X-Checked"), ["yes"]);
    for r in &all {
        if refused.contains(&r) {
            assert!(
                exim.blackholed(&id, r, "bmi_milter_reject"),
                "{r}\n{}",
                exim.logs()
            );
        } else {
            let copy = copy_for(&copies, r, &exim);
            assert_eq!(copy.folder, Folder::Alternate, "{r}");
            assert_eq!(verdict_of(copy), shared, "{r}");
        }
    }
}

/// A recipient the Milter defers at RCPT: BMI has no deferral, so the library gives it a verdict
/// of its own whose bmiVerdictError is fatal (SERVER, TEMPFAIL); Exim treats a verdict with an
/// error as "deliver normally" (bmi_get_delivery_status): that recipient is delivered
/// unfiltered, to the default maildir, while the other one gets the message's verdict.
#[test]
fn a_recipient_deferred_at_rcpt_is_delivered_unfiltered_by_exim() {
    let busy = "busy@example.org";
    let good = "good@example.org";
    let dns = daemons::Resolver::start(&[]);
    let milter = rcpt_replies_and_checked(&format!(r#""{busy}": "451 4.3.0 try later""#));
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-defer-4d21";
    let (_, copies) = exim.deliver(SENDER, &[busy, good], &message(marker), marker);

    let deferred = copy_for(&copies, busy, &exim);
    assert_eq!(deferred.folder, Folder::Default, "{}", exim.logs());
    assert_checked_copy(&copies, good, &exim);
}

/// Opt-in values set in Exim's RCPT ACL (`bmi_optin`, here from an lsearch file as Exim's
/// documentation shows) take Exim through bmiOptinInit, bmiOptinMset(values, ':') and
/// bmiOptinFree around that recipient's bmiAccumulateTO: the message is filtered and delivered
/// to both recipients, and the Milter saw both. (Whether the values reach the Milter is the
/// library's choice, docs/bmi.md; this test does not assume one.)
#[test]
fn a_recipient_with_optin_values_is_filtered_and_delivered() {
    let dns = daemons::Resolver::start(&[]);
    let milter = milters::any_reply(r#"{"edits": [["addheader", "X-Checked", "yes"]]}"#);
    let exim = Exim::start(&dns, &options(milter.port));
    exim.set_optin("carol@example.org: spam:virus\n");
    let marker = "exim-optin-b6f0";
    let rcpts = ["carol@example.org", "dave@example.org"];
    let (_, copies) = exim.deliver(SENDER, &rcpts, &message(marker), marker);
    for r in rcpts {
        assert_checked_copy(&copies, r, &exim);
    }
    assert_eq!(
        recipients_seen(&milter, marker),
        ["<carol@example.org>", "<dave@example.org>"]
    );
}

/// Nothing listens on the Milter's port: a fatal BMI error, which Exim writes to its panic log
/// as `bmi error [loc L type T]` with the location and type numbers of include/bmi_api.h
/// (NETWORK, CONNECT), and the message is accepted and delivered unfiltered (Exim fails open).
#[test]
fn an_unreachable_milter_is_a_bmi_fatal_error_and_the_message_is_accepted() {
    let port = exim::free_port();
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(port));
    assert_accepted_after_a_bmi_error(
        &exim,
        "exim-unreachable-c8e1",
        ("BMI_ERROR_LOCATION_NETWORK", "BMI_ERROR_TYPE_CONNECT"),
        "",
    );
}

/// A Milter that tempfails the message: BMI has no deferral, so bmiEndMessage returns a fatal
/// error (SERVER, TEMPFAIL); Exim logs it and, failing open, delivers the message unfiltered.
#[test]
fn a_milter_tempfail_is_a_bmi_fatal_error_and_the_message_is_accepted() {
    let dns = daemons::Resolver::start(&[]);
    let milter = milters::any_reply(r#"{"replies": {"eom": "tempfail"}}"#);
    let exim = Exim::start(&dns, &options(milter.port));
    assert_accepted_after_a_bmi_error(
        &exim,
        "exim-tempfail-93e5",
        ("BMI_ERROR_LOCATION_SERVER", "BMI_ERROR_TYPE_TEMPFAIL"),
        ": bmiEndMessage() failed.",
    );
}

/// Exim calls bmiInitSystem for every message and never bmiFreeSystem after a success: with
/// CONNECTION_REUSE, three messages in one SMTP session (one Exim process) go over one Milter
/// connection, so the option file's handle and its connection pool outlive each message's
/// system object, as issue 17 asks.
#[test]
fn messages_of_one_smtp_session_share_one_milter_connection() {
    let dns = daemons::Resolver::start(&[]);
    let milter = milters::any_reply("{}");
    let exim = Exim::start(
        &dns,
        &format!("{}CONNECTION_REUSE=2\n", options(milter.port)),
    );
    let markers = [
        "exim-reuse-1-5e0a",
        "exim-reuse-2-5e0a",
        "exim-reuse-3-5e0a",
    ];
    let bodies: Vec<Vec<u8>> = markers.iter().map(|m| message(m)).collect();
    let rcpts = ["bob@example.net"];
    let batch: Vec<(&str, &[&str], &[u8])> = bodies
        .iter()
        .map(|b| (SENDER, &rcpts[..], b.as_slice()))
        .collect();
    for id in exim.send_in_one_session(&batch) {
        exim.wait_completed(&id);
    }
    let delivered = exim.deliveries();
    for m in markers {
        assert!(
            delivered
                .iter()
                .any(|d| d.folder == Folder::Default
                    && String::from_utf8_lossy(&d.message).contains(m)),
            "{m} not delivered normally\n{}",
            exim.logs()
        );
    }
    // libmilter ends a logical connection at QUIT_NC (any_reply writes its record then) but
    // negotiates only once per TCP connection: only the first message's record has OPTNEG.
    let negotiated: Vec<usize> = markers
        .iter()
        .map(|m| milter.recorded(m).all("negotiate").len())
        .collect();
    assert_eq!(negotiated, [1, 0, 0], "{}", exim.logs());
}

/// The value of an enumerator in include/bmi_api.h (`NAME = N,`): the numbers a BMI caller
/// logs come from the header it was built with.
fn header_value(name: &str) -> u32 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/bmi_api.h");
    let header = std::fs::read_to_string(&path).expect("include/bmi_api.h");
    header
        .lines()
        .find_map(|l| {
            let (n, v) = l.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_end_matches(',').trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} = N in {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The real daemons.

/// opendkim signs for example.org through the library: its DKIM-Signature arrives in the
/// verdict, and applied it heads the message.
#[test]
fn opendkim_signature_arrives_in_the_verdict() {
    let signer = milters::opendkim();
    let dns = daemons::Resolver::start(&[]);
    let exim = Exim::start(&dns, &options(signer.port));
    let marker = "exim-dkim-3b77";
    let (_, copies) = exim.deliver(SENDER, &["bob@example.net"], &message(marker), marker);

    let copy = copy_for(&copies, "bob@example.net", &exim);
    assert_eq!(
        copy.folder,
        Folder::Alternate,
        "{}\n{}",
        exim.logs(),
        signer.log()
    );
    let signed = applied(copy);
    let sig = values(&signed, "DKIM-Signature");
    assert_eq!(sig.len(), 1, "{}", text(&signed));
    assert!(
        sig[0].contains("d=example.org") && sig[0].contains("s=test"),
        "{}",
        sig[0]
    );
}

/// clamav-milter rejects EICAR: not delivered.
#[test]
fn clamav_milter_eicar_is_not_delivered() {
    let dns = daemons::Resolver::start(&[]);
    let clamav = daemons::clamav(&dns);
    let exim = Exim::start(&dns, &options(clamav.port));
    let marker = "exim-eicar-d20f";
    let mut m = message(marker);
    m.extend_from_slice(format!("{}\n", daemons::eicar()).as_bytes());
    assert_bob_gets_none(&exim, &m, marker);
}

/// spamass-milter with `-r -1` rejects GTUBE: not delivered.
#[test]
fn spamass_milter_gtube_is_not_delivered() {
    let dns = daemons::Resolver::start(&[]);
    let spamd = daemons::spamd(&dns);
    let milter = daemons::spamass_milter(&dns, &spamd, &["-m", "-r", "-1"]);
    let exim = Exim::start(&dns, &options(milter.port));
    let marker = "exim-spamass-61a9";
    assert_bob_gets_none(&exim, &fixture("gtube.eml", marker), marker);
}

/// rspamd as a Milter: GTUBE is not delivered; a plain message from a client that is not on
/// loopback (rspamd adds no headers for local clients) is delivered with rspamd's result headers
/// added by the verdict.
#[test]
fn rspamd_gtube_is_not_delivered_and_plain_mail_gets_its_headers() {
    let dns = daemons::Resolver::start(&[]);
    let rspamd = daemons::rspamd(&dns);
    let exim = Exim::start(&dns, &options(rspamd.port));

    let marker = "exim-rspamd-gtube-2c4e";
    assert_bob_gets_none(&exim, &fixture("gtube.eml", marker), marker);

    let marker = "exim-rspamd-plain-90b1";
    let (_, copies) = exim.deliver_from(
        "192.0.2.10",
        SENDER,
        &["bob@example.net"],
        &fixture("plain.eml", marker),
        marker,
    );
    let copy = copy_for(&copies, "bob@example.net", &exim);
    assert_eq!(copy.folder, Folder::Alternate, "{}", exim.logs());
    let scanned = applied(copy);
    assert_eq!(
        values(&scanned, "X-Rspamd-Server"),
        [daemons::RSPAMD_HOSTNAME],
        "{}",
        text(&scanned)
    );
    // Its score is not asserted: BMI hands over no host name and no HELO, for which rspamd adds
    // points of its own (RDNS_NONE, HFILTER_HOSTNAME_UNKNOWN; docs/exim.md).
    let result = values(&scanned, "X-Spamd-Result");
    assert!(
        result.len() == 1 && result[0].starts_with("default: "),
        "{}",
        text(&scanned)
    );
}
