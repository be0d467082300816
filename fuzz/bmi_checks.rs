//! What the bmi_verdict_str fuzz target checks (fuzz_targets/bmi_verdict_str.rs); tests/bmi.rs
//! replays the committed corpus through the same function on every `cargo test`.
//!
//! bmiCreateVerdictFromStr parses strings from the MTA's spool, over and over: whatever the
//! bytes, it must end in a verdict or a BAD_VERDICT error, never a panic or a huge allocation,
//! and a string it accepts is exactly the one the verdict makes again. And any verdict survives
//! the round trip, and a string with one character changed is refused.

use milter_spamfilter::bmi::error;
use milter_spamfilter::bmi::verdict::{Destination, Recipient, Verdict};
use milter_spamfilter::bmi::verdict_str::{decode, encode};
use std::ffi::CString;

/// A verdict made of `data`: destination from the first byte, error from the next four, then
/// the script (for a Sieve destination) and the recipients, split at NUL bytes.
fn verdict_of(data: &[u8]) -> Verdict {
    let tag = data.first().copied().unwrap_or(0) % 3;
    let mut code = [0u8; 4];
    for (i, b) in data.iter().skip(1).take(4).enumerate() {
        code[i] = *b;
    }
    let mut parts = data.get(5..).unwrap_or_default().split(|&b| b == 0);
    let destination = match tag {
        0 => Destination::Default,
        1 => Destination::Discard,
        _ => Destination::Sieve(
            CString::new(parts.next().unwrap_or_default()).expect("split at NUL"),
        ),
    };
    Verdict {
        error: u32::from_le_bytes(code),
        destination,
        recipients: parts.map(Recipient::new).collect(),
    }
}

pub fn check_bmi_verdict_str(data: &[u8]) {
    // Any bytes as a verdict string.
    match decode(data) {
        Ok(v) => assert_eq!(encode(&v).as_bytes(), data, "accepted, but not canonical"),
        Err(f) => assert_eq!(f.code, error::BAD_VERDICT, "{}", f.message),
    }
    // Any verdict: its string is printable, holds no ':', and parses back to it.
    let v = verdict_of(data);
    let s = encode(&v);
    assert!(s.bytes().all(|b| b.is_ascii_graphic() && b != b':'), "{s}");
    let back = decode(s.as_bytes()).unwrap_or_else(|f| panic!("{}: {s}", f.message));
    assert_eq!(back, v);
    // One character changed (at a place and to a value the input picks): refused.
    if let (Some(&at), Some(&to)) = (data.get(1), data.get(2)) {
        let mut damaged = s.into_bytes();
        let i = usize::from(at) * 7 % damaged.len();
        if damaged[i] != to {
            damaged[i] = to;
            let e = decode(&damaged).expect_err("a changed character was not noticed");
            assert_eq!(e.code, error::BAD_VERDICT);
        }
    }
}
