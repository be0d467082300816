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

/// Where the line loop of an LF-to-CRLF conversion is (`crlf_lines`).
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    /// The bytes of `src` converted so far: `src[used..]` starts a line.
    pub used: usize,
    /// The LF that ends that line (`src.len()` when there is none within the room left).
    pub lf: usize,
    /// Where the line goes in `dst`: everything before is written.
    pub w: usize,
    /// How many bytes of the line are in `dst` from `w` on already.
    pub copied: usize,
}

/// Converts `src` line by line into `dst` (up to `max` bytes in all), from `at` on: each line
/// copied with a CRLF for its LF (a LF with a CR before it stays as it is). Returns whether
/// `dst` is full (the next line and its line end do not fit); `at` then says where the
/// conversion stopped, and the line at `at.used` is not written.
///
/// An LF body (a BMI caller's spool) has a LF every line, and a call to memchr and one to
/// memcpy for each line cost more than its bytes: here each line is copied and searched in
/// the same pass, 32 (AVX2) or 16 (SSE2) bytes a step, in one loop.
///
/// # Safety
/// `dst` writable for `max` bytes and not overlapping `src`; `at.w <= max`; `src[at.used..
/// at.lf]` holds no LF, `at.copied` of its bytes are at `dst + at.w`, and `src[at.lf]` is a
/// LF (or `at.lf == src.len()`).
#[inline] // the dispatch goes in its caller: one function fewer entered a message
pub unsafe fn crlf_lines(
    src: &[u8],
    dst: *mut u8,
    max: usize,
    cr_before: bool,
    at: &mut Lines,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller's promise, passed on; AVX2 is checked (std caches the answer),
        // SSE2 is part of the x86_64 baseline.
        unsafe {
            match std::is_x86_feature_detected!("avx2") && !test_sse2::forced() {
                true => x86::crlf_lines_avx2(src, dst, max, cr_before, at),
                false => x86::crlf_lines_sse2(src, dst, max, cr_before, at),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's promise, passed on.
    unsafe {
        crlf_lines_with(src, dst, max, cr_before, at, |window, d| {
            let i = find_lf(window);
            let n = i.unwrap_or(window.len());
            std::ptr::copy_nonoverlapping(window.as_ptr(), d, n);
            i
        })
    }
}

/// Tests run the SSE2 line loop on a machine with AVX2 too (`force`, for the calling thread).
#[cfg(target_arch = "x86_64")]
pub mod test_sse2 {
    #[cfg(test)]
    thread_local! {
        static FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The SSE2 loop for this thread's conversions from now on (tests only).
    #[cfg(test)]
    pub fn force(on: bool) {
        FORCED.with(|f| f.set(on));
    }

    #[inline(always)]
    pub fn forced() -> bool {
        #[cfg(test)]
        return FORCED.with(|f| f.get());
        #[cfg(not(test))]
        false
    }
}

/// The loop of `crlf_lines`, with `copy` copying a window to `dst` up to its first LF (bytes
/// after that LF may be copied too: they are overwritten) and returning where the LF is.
///
/// # Safety
/// As `crlf_lines`; `copy` writes at most the window's length.
#[inline(always)]
unsafe fn crlf_lines_with(
    src: &[u8],
    dst: *mut u8,
    max: usize,
    cr_before: bool,
    at: &mut Lines,
    copy: impl Fn(&[u8], *mut u8) -> Option<usize>,
) -> bool {
    let Lines {
        mut used,
        mut lf,
        mut w,
        mut copied,
    } = *at;
    let full = loop {
        let bare = match lf {
            0 => !cr_before,
            _ => src[lf - 1] != b'\r',
        };
        let run = lf - used;
        if copied < run || w + run + 1 + usize::from(bare) > max {
            break true;
        }
        // SAFETY: w + run + 2 <= max when bare (+ 1 otherwise), within dst (caller's promise).
        unsafe {
            let d = dst.add(w);
            if bare {
                d.add(run).write(b'\r');
            }
            d.add(run + usize::from(bare)).write(b'\n');
        }
        w += run + 1 + usize::from(bare);
        used = lf + 1;
        // The next line, copied while its LF is looked for, as far as there is room.
        let window = &src[used..src.len().min(used + (max - w))];
        match copy(window, dst.wrapping_add(w)) {
            Some(i) => (lf, copied) = (used + i, i),
            // No LF within the room left: full.
            None if window.len() < src.len() - used => (lf, copied) = (src.len(), 0),
            None => break false,
        }
    };
    *at = Lines {
        used,
        lf,
        w,
        copied,
    };
    full
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
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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

    /// `copy` of `crlf_lines_with`, 16 bytes a step, then a byte at a time.
    ///
    /// # Safety
    /// `dst` writable for `window.len()` bytes.
    #[inline(always)]
    unsafe fn copy_sse2(window: &[u8], dst: *mut u8, mut k: usize) -> Option<usize> {
        // SAFETY: each block k..k + 16 is within `window` and within the room at `dst`;
        // unaligned loads and stores need no alignment.
        unsafe {
            let lf = _mm_set1_epi8(b'\n' as i8);
            while k + 16 <= window.len() {
                let v = _mm_loadu_si128(window.as_ptr().add(k).cast());
                _mm_storeu_si128(dst.add(k).cast(), v);
                let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, lf)) as u32;
                if m != 0 {
                    return Some(k + m.trailing_zeros() as usize);
                }
                k += 16;
            }
            while k < window.len() {
                let b = *window.get_unchecked(k);
                if b == b'\n' {
                    return Some(k);
                }
                dst.add(k).write(b);
                k += 1;
            }
        }
        None
    }

    /// `crlf_lines` on SSE2.
    ///
    /// # Safety
    /// As `crlf_lines`.
    pub unsafe fn crlf_lines_sse2(
        src: &[u8],
        dst: *mut u8,
        max: usize,
        cr_before: bool,
        at: &mut super::Lines,
    ) -> bool {
        // SAFETY: the caller's promise, passed on; copy_sse2 writes within the window.
        unsafe { super::crlf_lines_with(src, dst, max, cr_before, at, |w, d| copy_sse2(w, d, 0)) }
    }

    /// `crlf_lines` on AVX2: 32 bytes a step, then the SSE2 steps for the rest.
    ///
    /// # Safety
    /// As `crlf_lines`; the CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn crlf_lines_avx2(
        src: &[u8],
        dst: *mut u8,
        max: usize,
        cr_before: bool,
        at: &mut super::Lines,
    ) -> bool {
        let copy = |window: &[u8], dst: *mut u8| {
            // SAFETY: each block k..k + 32 is within `window` and within the room at `dst`.
            unsafe {
                let lf = _mm256_set1_epi8(b'\n' as i8);
                let mut k = 0;
                while k + 32 <= window.len() {
                    let v = _mm256_loadu_si256(window.as_ptr().add(k).cast());
                    _mm256_storeu_si256(dst.add(k).cast(), v);
                    let m = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, lf)) as u32;
                    if m != 0 {
                        return Some(k + m.trailing_zeros() as usize);
                    }
                    k += 32;
                }
                copy_sse2(window, dst, k)
            }
        };
        // SAFETY: the caller's promise, passed on; `copy` writes within the window.
        unsafe { super::crlf_lines_with(src, dst, max, cr_before, at, copy) }
    }

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
