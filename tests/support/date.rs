//! Fixtures dated when the test runs. A spam filter scores a message by the age of its Date
//! (rspamd's DATE_IN_PAST, SpamAssassin's DATE_IN_PAST_*), so a fixture with a fixed Date turns
//! from clean to suspect as the calendar moves, and a suite that passed one week fails the next.
//!
//! Included as a child module (`#[path = "date.rs"] mod date;`) where a test needs it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The clock's current time as RFC 5322 writes it, in UTC: "Mon, 07 Dec 2026 01:34:19 +0000".
/// It reads the same clock as the daemons (libfaketime moves both).
pub fn rfc5322_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    rfc5322(secs)
}

/// `secs` since the epoch as an RFC 5322 date in UTC.
pub fn rfc5322(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let rest = secs % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Year, month (1-12) and day of the month of a count of days since 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `message` with the value of each top-level `Date:` field of its header replaced by the time
/// now. The header ends at the first empty line; the body is left as it is.
pub fn dated(message: &[u8]) -> Vec<u8> {
    let now = rfc5322_now();
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut rest = message;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        if line == b"\n" || line == b"\r\n" {
            out.extend_from_slice(rest);
            break;
        }
        if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"Date:") {
            let eol: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else if line.ends_with(b"\n") {
                b"\n"
            } else {
                b""
            };
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(now.as_bytes());
            out.extend_from_slice(eol);
        } else {
            out.extend_from_slice(line);
        }
        rest = tail;
    }
    out
}

#[test]
fn rfc5322_dates_known_instants() {
    assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_eq!(rfc5322(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    assert_eq!(rfc5322(1_796_607_259), "Mon, 07 Dec 2026 01:34:19 +0000");
}

#[test]
fn dated_replaces_only_the_header_date() {
    let msg =
        b"From: a\r\nDate: Wed, 25 Nov 2026 09:00:00 +0000\r\nSubject: s\r\n\r\nDate: body\r\n";
    let out = String::from_utf8(dated(msg)).expect("ASCII");
    assert!(!out.contains("25 Nov 2026"), "{out}");
    assert!(out.starts_with("From: a\r\nDate: "), "{out}");
    assert!(
        out.ends_with("\r\nSubject: s\r\n\r\nDate: body\r\n"),
        "{out}"
    );
}
