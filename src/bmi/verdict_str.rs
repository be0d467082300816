//! A verdict as a printable string and back (bmiCreateStrFromVerdict / bmiCreateVerdictFromStr).
//!
//! Exim keeps every verdict string of a message on one spool line, joined by ':', and parses
//! them again and again at delivery (about i + 3 times per router for the i-th recipient), so
//! the string holds no ':', no white space and no line break, and parsing is one pass over it.
//!
//! Form: `MSF1` (the version tag) and the unpadded base64 (RFC 4648 alphabet) of
//!
//! ```text
//! u8        destination: 0 default, 1 discard, 2 Sieve
//! u32 LE    the verdict's error (a BmiError)
//! [Sieve]   varint length, the script
//! varint    number of recipients; each: varint length, the address
//! u32 LE    CRC-32 of everything before it
//! ```
//!
//! Varints are LEB128, at most 5 bytes, shortest form only; no text holds a NUL. The parser
//! accepts exactly what the encoder makes (shortest varints, zero padding bits in the last
//! base64 character, nothing left over), so a string and its verdict correspond one to one,
//! and the CRC catches any burst of damage up to 32 bits (a character changed, bits flipped
//! next to each other). A count or a length is checked against the bytes that are left before
//! anything is allocated, so no string, however damaged, asks for more memory than its own
//! length.

use super::error::{self, Failure};
use super::verdict::{Destination, Recipient, Verdict};
use std::ffi::CString;

/// The version tag every verdict string starts with.
pub const TAG: &str = "MSF1";

const DEFAULT: u8 = 0;
const DISCARD: u8 = 1;
const SIEVE: u8 = 2;

/// The verdict as a string.
pub fn encode(v: &Verdict) -> String {
    // The tag and base64 are ASCII: the bytes are valid UTF-8 as they are.
    String::from_utf8(encode_c(v).into_bytes()).unwrap_or_default()
}

/// The verdict as a C string (bmiCreateStrFromVerdict). Exim asks for the string of every
/// verdict of every message, the default one too, so this is on every BMI message's path:
/// the payload is laid out once at its exact size and the string made in one allocation of its
/// final size, the NUL included (no growing, no copy into a CString).
pub fn encode_c(v: &Verdict) -> CString {
    let script: &[u8] = match &v.destination {
        Destination::Sieve(script) => script.as_bytes(),
        _ => &[],
    };
    let mut raw_len = 1 + 4 + varint_len(v.recipients.len() as u64) + 4;
    if matches!(v.destination, Destination::Sieve(_)) {
        raw_len += varint_len(script.len() as u64) + script.len();
    }
    for r in &v.recipients {
        raw_len += varint_len(r.address().len() as u64) + r.address().len();
    }
    let mut raw = Vec::with_capacity(raw_len);
    match &v.destination {
        Destination::Default => raw.push(DEFAULT),
        Destination::Discard => raw.push(DISCARD),
        Destination::Sieve(_) => raw.push(SIEVE),
    }
    raw.extend_from_slice(&v.error.to_le_bytes());
    if let Destination::Sieve(_) = &v.destination {
        put_bytes(&mut raw, script);
    }
    put_varint(&mut raw, v.recipients.len() as u64);
    for r in &v.recipients {
        put_bytes(&mut raw, r.address());
    }
    let crc = crc32(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let mut out = Vec::with_capacity(TAG.len() + base64_len(raw.len()) + 1);
    out.extend_from_slice(TAG.as_bytes());
    base64_encode(&raw, &mut out);
    out.push(0);
    debug_assert!(!out[..out.len() - 1].contains(&0));
    // SAFETY: one NUL, the last byte: the tag and the base64 alphabet have none. (Checked, the
    // string would be scanned for NULs on every message for nothing.)
    unsafe { CString::from_vec_with_nul_unchecked(out) }
}

/// The bytes a LEB128 varint of `n` takes.
fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// The length of the unpadded base64 of `n` bytes.
fn base64_len(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

/// The verdict a string made by `encode` stands for; anything else is a fatal BAD_VERDICT
/// error whose text says what is wrong.
pub fn decode(text: &[u8]) -> Result<Verdict, Failure> {
    let bad = |why: &str| {
        Failure::new(
            error::BAD_VERDICT,
            format!(
                "bmiCreateVerdictFromStr: \"{}\" is not a verdict string of this library: {why}",
                crate::error::escape(&text[..text.len().min(80)])
            ),
        )
    };
    let Some(body) = text.strip_prefix(TAG.as_bytes()) else {
        return Err(bad(&format!(
            "it does not start with the version tag {TAG}"
        )));
    };
    let raw = base64_decode(body).map_err(&bad)?;
    if raw.len() < 1 + 4 + 1 + 4 {
        return Err(bad("too short"));
    }
    let (payload, crc) = raw.split_at(raw.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(payload) != crc {
        return Err(bad("its checksum does not match (damaged)"));
    }
    let mut r = Reader { rest: payload };
    let tag = r.byte().ok_or_else(|| bad("no destination"))?;
    let code = r.u32().ok_or_else(|| bad("no error code"))?;
    let destination = match tag {
        DEFAULT => Destination::Default,
        DISCARD => Destination::Discard,
        SIEVE => {
            let script = r.bytes().map_err(|e| bad(&format!("the script: {e}")))?;
            Destination::Sieve(CString::new(script).map_err(|_| bad("a NUL in the script"))?)
        }
        other => return Err(bad(&format!("unknown destination {other}"))),
    };
    let count = r
        .varint()
        .map_err(|e| bad(&format!("the recipient count: {e}")))?;
    // Every recipient takes at least its length byte.
    if count > r.rest.len() as u64 {
        return Err(bad(&format!(
            "{count} recipients announced, at most {} can follow",
            r.rest.len()
        )));
    }
    let mut recipients = Vec::with_capacity(count as usize);
    for i in 0..count {
        let address = r.bytes().map_err(|e| bad(&format!("recipient {i}: {e}")))?;
        if address.contains(&0) {
            return Err(bad(&format!("a NUL in recipient {i}")));
        }
        recipients.push(Recipient::new(address));
    }
    if !r.rest.is_empty() {
        return Err(bad(&format!("{} bytes left over", r.rest.len())));
    }
    Ok(Verdict {
        error: code,
        destination,
        recipients,
    })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        if self.rest.len() < 4 {
            return None;
        }
        let (b, rest) = self.rest.split_at(4);
        self.rest = rest;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A LEB128 varint of at most 5 bytes (32 bits), in its shortest form.
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut n: u64 = 0;
        for i in 0..5 {
            let b = self.byte().ok_or("cut short")?;
            n |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err("a number not in its shortest form");
                }
                return Ok(n);
            }
        }
        Err("a number longer than 32 bits")
    }

    /// A length and that many bytes, the length checked against what is left first.
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        if len > self.rest.len() as u64 {
            return Err(format!(
                "length {len}, but only {} bytes follow",
                self.rest.len()
            ));
        }
        let (b, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(b)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Unpadded base64: whole groups of three bytes four characters at a time, then the tail.
fn base64_encode(raw: &[u8], out: &mut Vec<u8>) {
    let sextet = |n: u32, k: u32| ALPHABET[(n >> (18 - 6 * k) & 63) as usize];
    let groups = raw.chunks_exact(3);
    let tail = groups.remainder();
    for g in groups {
        let n = u32::from(g[0]) << 16 | u32::from(g[1]) << 8 | u32::from(g[2]);
        out.extend_from_slice(&[sextet(n, 0), sextet(n, 1), sextet(n, 2), sextet(n, 3)]);
    }
    if let Some(&first) = tail.first() {
        let second = tail.get(1).copied().unwrap_or(0);
        let n = u32::from(first) << 16 | u32::from(second) << 8;
        for k in 0..tail.len() as u32 + 1 {
            out.push(sextet(n, k));
        }
    }
}

/// The value of a base64 character, 255 for anything else.
const DECODE: [u8; 256] = {
    let mut t = [255u8; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Unpadded base64 in its one canonical form: no padding, no stray characters, and the unused
/// low bits of the last character zero.
fn base64_decode(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    if text.len() % 4 == 1 {
        return Err("its base64 has a length no encoding makes");
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut n: u32 = 0;
        for (k, &c) in chunk.iter().enumerate() {
            let v = DECODE[c as usize];
            if v == 255 {
                return Err("a character that is not base64");
            }
            n |= u32::from(v) << (18 - 6 * k);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let len = chunk.len() - 1;
        if bytes[len..].iter().any(|&b| b != 0) {
            return Err("its base64 does not end as an encoding does");
        }
        out.extend_from_slice(&bytes[..len]);
    }
    Ok(out)
}

/// CRC-32 (IEEE 802.3, reflected), by table.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::xorshift;

    fn random_bytes(next: &mut impl FnMut() -> u64, max: usize, nul: bool) -> Vec<u8> {
        let len = (next() as usize) % (max + 1);
        (0..len)
            .map(|_| {
                let b = next() as u8;
                if b == 0 && !nul {
                    b'x'
                } else {
                    b
                }
            })
            .collect()
    }

    fn random_verdict(next: &mut impl FnMut() -> u64) -> Verdict {
        let destination = match next() % 3 {
            0 => Destination::Default,
            1 => Destination::Discard,
            _ => {
                let max = if next() % 8 == 0 { 5000 } else { 200 };
                Destination::Sieve(CString::new(random_bytes(next, max, false)).unwrap())
            }
        };
        let count = (next() % 6) as usize + if next() % 10 == 0 { 300 } else { 0 };
        Verdict {
            error: match next() % 4 {
                0 => next() as u32,
                1 => error::TEMPFAIL,
                _ => error::OK,
            },
            destination,
            recipients: (0..count)
                .map(|_| Recipient::new(&random_bytes(next, 70, false)))
                .collect(),
        }
    }

    fn is_printable_without_colon(s: &str) -> bool {
        s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    }

    #[test]
    fn random_verdicts_round_trip_exactly() {
        let mut next = xorshift(0x5eed_0001);
        for _ in 0..3000 {
            let v = random_verdict(&mut next);
            let s = encode(&v);
            assert!(is_printable_without_colon(&s), "{s}");
            let back = decode(s.as_bytes()).unwrap_or_else(|e| panic!("{}: {s}", e.message));
            assert_eq!(back, v);
            assert_eq!(encode(&back), s);
        }
    }

    #[test]
    fn a_known_verdict_has_a_known_string() {
        // The form is fixed: a string in an MTA's spool must still parse after an upgrade.
        let v = Verdict {
            error: error::OK,
            destination: Destination::Default,
            recipients: vec![Recipient::new(b"a@b")],
        };
        let s = encode(&v);
        assert!(s.starts_with("MSF1"));
        let raw = base64_decode(&s.as_bytes()[4..]).unwrap();
        assert_eq!(
            &raw[..raw.len() - 4],
            &[0, 0, 0, 0, 0, 1, 3, b'a', b'@', b'b']
        );
        assert_eq!(
            crc32(b"123456789"),
            0xCBF4_3926,
            "the standard CRC-32 check value"
        );
    }

    fn assert_bad(s: &[u8]) {
        match decode(s) {
            Ok(v) => panic!("{:?} parsed as {v:?}", String::from_utf8_lossy(s)),
            Err(e) => {
                assert_eq!(e.code, error::BAD_VERDICT, "{}", e.message);
                assert!(error::is_fatal(e.code));
            }
        }
    }

    #[test]
    fn truncated_strings_are_bad_verdicts() {
        let mut next = xorshift(0x5eed_0002);
        for _ in 0..300 {
            let s = encode(&random_verdict(&mut next));
            // Every cut of a short string, 300 random cuts of a long one.
            let cuts: Vec<usize> = if s.len() <= 300 {
                (0..s.len()).collect()
            } else {
                (0..300).map(|_| (next() as usize) % s.len()).collect()
            };
            for cut in cuts {
                assert_bad(&s.as_bytes()[..cut]);
            }
        }
    }

    #[test]
    fn flipped_bits_are_bad_verdicts() {
        let mut next = xorshift(0x5eed_0003);
        for _ in 0..300 {
            let s = encode(&random_verdict(&mut next)).into_bytes();
            for _ in 0..40 {
                let mut d = s.clone();
                let i = (next() as usize) % d.len();
                // One bit, or a whole character changed (a burst within 6 bits of the data).
                if next() % 2 == 0 {
                    d[i] ^= 1 << (next() % 8);
                } else {
                    d[i] = ALPHABET[(next() % 64) as usize];
                }
                if d != s {
                    assert_bad(&d);
                }
            }
        }
    }

    #[test]
    fn wrong_versions_and_random_strings_are_bad_verdicts() {
        let v = Verdict {
            error: error::OK,
            destination: Destination::Discard,
            recipients: vec![Recipient::new(b"x@y")],
        };
        let s = encode(&v);
        for tag in ["MSF2", "MSF0", "msf1", "", "BMI1"] {
            assert_bad(format!("{tag}{}", &s[4..]).as_bytes());
        }
        let mut next = xorshift(0x5eed_0004);
        for _ in 0..20_000 {
            let mut junk = random_bytes(&mut next, 120, true);
            if next() % 2 == 0 {
                let mut t = TAG.as_bytes().to_vec();
                t.extend(junk.iter().map(|&b| ALPHABET[(b % 64) as usize]));
                junk = t;
            }
            // Random strings that happen to be well formed with a matching CRC do not occur in
            // practice (one in 2^32); anything else must fail cleanly.
            if let Ok(v) = decode(&junk) {
                assert_eq!(encode(&v).as_bytes(), &junk[..]);
            }
        }
    }

    /// A well-formed payload (its CRC right) that announces more than it holds.
    fn with_crc(mut payload: Vec<u8>) -> Vec<u8> {
        let crc = crc32(&payload);
        payload.extend_from_slice(&crc.to_le_bytes());
        let mut s = TAG.as_bytes().to_vec();
        base64_encode(&payload, &mut s);
        s
    }

    #[test]
    fn huge_counts_and_lengths_are_bad_verdicts_not_allocations() {
        // 2^32 - 1 recipients; a script of 2^32 - 1 bytes; a 10-byte varint; an overlong one.
        assert_bad(&with_crc(vec![0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]));
        assert_bad(&with_crc(vec![
            2, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0,
        ]));
        assert_bad(&with_crc(vec![
            0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
        ]));
        assert_bad(&with_crc(vec![0, 0, 0, 0, 0, 0x81, 0x00, 1, b'a']));
        assert_bad(&with_crc(vec![9, 0, 0, 0, 0, 0]));
        assert_bad(&with_crc(vec![0, 0, 0, 0, 0, 1, 1, 0]));
        assert_bad(&with_crc(vec![0, 0, 0, 0, 0, 0, 7]));
        // And the same shape done right parses.
        assert!(decode(&with_crc(vec![0, 0, 0, 0, 0, 1, 1, b'a'])).is_ok());
    }
}
