//! Byte scans over message text that run once per byte of every message, vectorised: the body's
//! line ends are checked here, and on a large message this is most of the library's own work.

/// The position of the first LF in `s`.
pub fn find_lf(s: &[u8]) -> Option<usize> {
    find_byte(s, b'\n')
}

/// The position of the first `byte` in `s`: the C library's memchr (vectorised).
pub fn find_byte(s: &[u8], byte: u8) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    // SAFETY: memchr reads at most s.len() bytes from s.as_ptr(), all within the slice, and
    // returns NULL or a pointer into it.
    let p = unsafe { libc::memchr(s.as_ptr().cast(), libc::c_int::from(byte), s.len()) };
    if p.is_null() {
        None
    } else {
        Some(p as usize - s.as_ptr() as usize)
    }
}

/// The position of the first LF in `s` that has no CR before it (a bare LF, which the Milter
/// protocol's CRLF text must not contain). `cr_before`: the byte before `s[0]` was a CR.
///
/// CRLF text has a LF on most lines, so finding each LF with memchr and looking behind it costs
/// a call per line; this looks at 64 (AVX2) or 32 (SSE2) bytes a step for both bytes at once.
pub fn find_bare_lf(s: &[u8], cr_before: bool) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just now; std caches the answer).
            return unsafe { x86::bare_lf_avx2(s, cr_before) };
        }
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { x86::bare_lf_sse2(s, cr_before) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bare_lf_by_memchr(s, cr_before)
    }
}

/// The same search by memchr, LF after LF.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn bare_lf_by_memchr(s: &[u8], cr_before: bool) -> Option<usize> {
    let mut from = 0;
    while let Some(j) = find_lf(&s[from..]) {
        let i = from + j;
        let cr = if i > 0 { s[i - 1] == b'\r' } else { cr_before };
        if !cr {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// The bytes from `from` on, one at a time: the tail shorter than a vector.
fn bare_lf_from(s: &[u8], from: usize, cr_before: bool) -> Option<usize> {
    (from..s.len()).find(|&i| s[i] == b'\n' && !(if i > 0 { s[i - 1] == b'\r' } else { cr_before }))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    // Position j holds a bare LF when s[j] is a LF and s[j - 1] is not a CR. Each step compares
    // a block s[i..] with LF and the same block one byte earlier, s[i - 1..], with CR, so the
    // byte before every position is in the second vector: no carry between blocks, no branch
    // but the one that finds a bare LF. Position 0, whose byte before is not in `s`, is looked
    // at first, on its own.

    /// 64 bytes a step, as two 32-byte vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn bare_lf_avx2(s: &[u8], cr_before: bool) -> Option<usize> {
        match s.first() {
            None => return None,
            Some(b'\n') if !cr_before => return Some(0),
            _ => {}
        }
        let lf = _mm256_set1_epi8(b'\n' as i8);
        let cr = _mm256_set1_epi8(b'\r' as i8);
        let p = s.as_ptr();
        // Bare LFs among the 32 bytes at p + i (i >= 1), as a vector of 0xFF/0x00 bytes.
        let bare = |i: usize| {
            // SAFETY: the caller keeps i >= 1 and i + 32 <= s.len(): both loads, of the bytes
            // i..i + 32 and i - 1..i + 31, are within the slice; loadu needs no alignment.
            let (here, before) = unsafe {
                (
                    _mm256_loadu_si256(p.add(i).cast()),
                    _mm256_loadu_si256(p.add(i - 1).cast()),
                )
            };
            _mm256_andnot_si256(_mm256_cmpeq_epi8(before, cr), _mm256_cmpeq_epi8(here, lf))
        };
        let mut i = 1;
        while i + 64 <= s.len() {
            let (a, b) = (bare(i), bare(i + 32));
            let any = _mm256_or_si256(a, b);
            if _mm256_testz_si256(any, any) == 0 {
                let mask = u64::from(_mm256_movemask_epi8(a) as u32)
                    | u64::from(_mm256_movemask_epi8(b) as u32) << 32;
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 64;
        }
        if i + 32 <= s.len() {
            let mask = _mm256_movemask_epi8(bare(i)) as u32;
            if mask != 0 {
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 32;
        }
        super::bare_lf_from(s, i, cr_before)
    }

    /// 32 bytes a step, as two 16-byte vectors.
    ///
    /// # Safety
    /// The CPU must support SSE2, which every x86_64 CPU does.
    #[target_feature(enable = "sse2")]
    pub unsafe fn bare_lf_sse2(s: &[u8], cr_before: bool) -> Option<usize> {
        match s.first() {
            None => return None,
            Some(b'\n') if !cr_before => return Some(0),
            _ => {}
        }
        let lf = _mm_set1_epi8(b'\n' as i8);
        let cr = _mm_set1_epi8(b'\r' as i8);
        let p = s.as_ptr();
        let bare = |i: usize| {
            // SAFETY: the caller keeps i >= 1 and i + 16 <= s.len(): both loads are within the
            // slice; loadu needs no alignment.
            let (here, before) = unsafe {
                (
                    _mm_loadu_si128(p.add(i).cast()),
                    _mm_loadu_si128(p.add(i - 1).cast()),
                )
            };
            _mm_andnot_si128(_mm_cmpeq_epi8(before, cr), _mm_cmpeq_epi8(here, lf))
        };
        let mut i = 1;
        while i + 32 <= s.len() {
            let (a, b) = (bare(i), bare(i + 16));
            if _mm_movemask_epi8(_mm_or_si128(a, b)) != 0 {
                let mask = (_mm_movemask_epi8(a) as u32) | (_mm_movemask_epi8(b) as u32) << 16;
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 32;
        }
        super::bare_lf_from(s, i, cr_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &[u8], cr_before: bool) -> Option<usize> {
        bare_lf_from(s, 0, cr_before)
    }

    /// Every implementation against the plain loop, on text where CR, LF and CRLF fall at every
    /// position relative to the vector blocks, with either byte before the start.
    #[test]
    fn every_search_agrees_with_the_plain_loop() {
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1du64);
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\n".to_vec(),
            b"\r\n".to_vec(),
            b"a\r\nb\r\n".repeat(20),
        ];
        for len in [
            1usize, 2, 15, 16, 17, 31, 32, 33, 34, 63, 64, 65, 66, 95, 96, 97, 98, 100, 127, 128,
            129, 130, 161, 200,
        ] {
            for _ in 0..40 {
                let v: Vec<u8> = (0..len)
                    .map(|_| match next() % 8 {
                        0 => b'\n',
                        1 | 2 => b'\r',
                        _ => b'x',
                    })
                    .collect();
                cases.push(v);
            }
            // CRLF text with one bare LF at each position.
            for at in 0..len {
                let mut v: Vec<u8> = b"ab\r\n".iter().copied().cycle().take(len).collect();
                v[at] = b'\n';
                if at > 0 && v[at - 1] == b'\r' {
                    v[at - 1] = b'y';
                }
                cases.push(v);
            }
        }
        for s in &cases {
            for cr_before in [false, true] {
                for start in 0..s.len().min(3) {
                    let t = &s[start..];
                    let want = plain(t, cr_before);
                    assert_eq!(find_bare_lf(t, cr_before), want, "{t:?} {cr_before}");
                    assert_eq!(bare_lf_by_memchr(t, cr_before), want, "{t:?}");
                    #[cfg(target_arch = "x86_64")]
                    {
                        // SAFETY: SSE2 is part of the x86_64 baseline.
                        let got = unsafe { x86::bare_lf_sse2(t, cr_before) };
                        assert_eq!(got, want, "{t:?}");
                        if std::is_x86_feature_detected!("avx2") {
                            // SAFETY: checked just above.
                            let got = unsafe { x86::bare_lf_avx2(t, cr_before) };
                            assert_eq!(got, want, "{t:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn find_lf_agrees_with_a_plain_search() {
        let mut data: Vec<u8> = (0..=255u8).collect();
        data.extend_from_slice(&data.clone());
        for start in 0..40 {
            for end in start..data.len().min(start + 300) {
                let s = &data[start..end];
                assert_eq!(
                    find_lf(s),
                    s.iter().position(|&b| b == b'\n'),
                    "{start}..{end}"
                );
            }
        }
        assert_eq!(find_lf(b""), None);
        assert_eq!(find_lf(b"\n"), Some(0));
        assert_eq!(find_lf(b"0123456789\n"), Some(10));
    }
}
