//! `spamfilter-check --compare-exports VENDOR_LIBRARY` (issue 17, item 6; tools/exports.c): the
//! dynamic symbols a vendor's library exports that ours does not, and the reverse, read from the
//! ELF .dynsym in C. Checked against real libraries (sendmail's libmilter, package
//! libmilter1.0.1, and ours), against binutils' `nm -D --defined-only` for the same files, against
//! a big-endian 32-bit ELF file made here (a SPARC Solaris library's shape), and for clear errors
//! on a missing, non-ELF or truncated file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support {
    pub mod built;
    pub mod tempdir;
}
use support::built::{library, made};
use support::tempdir::TempDir;

fn check_tool() -> PathBuf {
    made("build/spamfilter-check")
}

/// Sendmail's libmilter.so: a real library with another interface (package libmilter1.0.1,
/// which python3-milter pulls in).
fn sendmail_libmilter() -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib",
        "/lib/x86_64-linux-gnu",
    ]
    .iter()
    .map(|d| Path::new(d).join("libmilter.so.1.0.1"))
    .find(|p| p.exists())
    .expect("libmilter.so.1.0.1 not found: apt-get install libmilter1.0.1")
}

struct Compared {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Compared {
    /// The names listed under the heading that starts with `title`.
    fn section(&self, title: &str) -> BTreeSet<String> {
        let mut lines = self.stdout.lines().skip_while(|l| !l.starts_with(title));
        assert!(
            lines.next().is_some(),
            "no {title:?} section in:\n{}",
            self.stdout
        );
        lines
            .take_while(|l| l.starts_with("    "))
            .map(|l| l.trim().to_string())
            .collect()
    }
}

fn compare(vendor: &Path) -> Compared {
    let o = Command::new(check_tool())
        .arg("--library")
        .arg(library())
        .arg("--compare-exports")
        .arg(vendor)
        .output()
        .expect("run spamfilter-check");
    Compared {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// binutils' view of the same file: the defined dynamic symbols, without the linker's own.
fn nm_defined(path: &Path) -> BTreeSet<String> {
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(path)
        .output()
        .expect("nm not found: apt-get install binutils");
    assert!(o.status.success(), "nm -D {}", path.display());
    let linker = ["_init", "_fini", "_edata", "_end", "__bss_start"];
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| !linker.contains(&n.as_str()))
        .collect()
}

/// Against sendmail's libmilter: its smfi_* names are missing from ours (exit 1), our
/// spamfilter_* names are only in ours, and the lists are exactly what nm reads from each file.
#[test]
fn a_real_vendor_library_lists_what_ours_lacks_and_the_reverse() {
    let vendor = sendmail_libmilter();
    let c = compare(&vendor);
    assert_eq!(c.code, Some(1), "{}{}", c.stdout, c.stderr);
    let theirs_only = c.section("only in theirs");
    let ours_only = c.section("only in ours");
    let both = c.section("in both");
    assert!(theirs_only.contains("smfi_main"), "{}", c.stdout);
    assert!(ours_only.contains("spamfilter_init"), "{}", c.stdout);
    let theirs: BTreeSet<String> = theirs_only.union(&both).cloned().collect();
    let ours: BTreeSet<String> = ours_only.union(&both).cloned().collect();
    assert_eq!(theirs, nm_defined(&vendor), "theirs differs from nm -D");
    assert_eq!(ours, nm_defined(&library()), "ours differs from nm -D");
    assert!(
        c.stdout.lines().any(|l| l.starts_with("DIFFER: ")
            && l.contains(&format!(
                " symbol(s) of {} are not in ours",
                vendor.display()
            ))),
        "{}",
        c.stdout
    );
}

/// Our library against itself: nothing missing, exit 0, the names of both interfaces in both.
#[test]
fn ours_against_itself_misses_nothing() {
    let c = compare(&library());
    assert_eq!(c.code, Some(0), "{}{}", c.stdout, c.stderr);
    assert!(c.section("only in theirs").is_empty(), "{}", c.stdout);
    assert!(c.section("only in ours").is_empty(), "{}", c.stdout);
    let both = c.section("in both");
    for name in [
        "spamfilter_init",
        "spamfilter_filter",
        "spamfilter_close",
        "bmiInitSystem",
        "bmiEndMessage",
        "bmiAccessFirstVerdict",
    ] {
        assert!(both.contains(name), "{name}: {}", c.stdout);
    }
    assert!(
        c.stdout.contains("PASS: ours exports every symbol"),
        "{}",
        c.stdout
    );
}

/// A minimal big-endian 32-bit ELF shared object (as a SPARC Solaris library is): one defined
/// global function, one local, one undefined reference and a linker symbol; only the first is an
/// export.
fn big_endian_elf32(names: &[(&str, u8, u16)]) -> Vec<u8> {
    let mut strtab = vec![0u8];
    let mut syms = vec![0u8; 16]; // the null symbol
    for (name, info, shndx) in names {
        let at = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        syms.extend_from_slice(&at.to_be_bytes()); // st_name
        syms.extend_from_slice(&0x1000u32.to_be_bytes()); // st_value
        syms.extend_from_slice(&4u32.to_be_bytes()); // st_size
        syms.push(*info);
        syms.push(0); // st_other
        syms.extend_from_slice(&shndx.to_be_bytes());
    }
    let ehsize = 52u32;
    let sym_off = ehsize;
    let str_off = sym_off + syms.len() as u32;
    let sh_off = str_off + strtab.len() as u32;
    let mut f = vec![0x7f, b'E', b'L', b'F', 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let h16 = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_be_bytes());
    let h32 = |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_be_bytes());
    h16(&mut f, 3); // e_type ET_DYN
    h16(&mut f, 2); // e_machine EM_SPARC
    h32(&mut f, 1); // e_version
    h32(&mut f, 0); // e_entry
    h32(&mut f, 0); // e_phoff
    h32(&mut f, sh_off);
    h32(&mut f, 0); // e_flags
    h16(&mut f, ehsize as u16);
    h16(&mut f, 0); // e_phentsize
    h16(&mut f, 0); // e_phnum
    h16(&mut f, 40); // e_shentsize
    h16(&mut f, 3); // e_shnum
    h16(&mut f, 0); // e_shstrndx
    f.extend_from_slice(&syms);
    f.extend_from_slice(&strtab);
    let section = |f: &mut Vec<u8>, kind: u32, off: u32, size: u32, link: u32, ent: u32| {
        for v in [0, kind, 0, 0, off, size, link, 0, 1, ent] {
            f.extend_from_slice(&v.to_be_bytes());
        }
    };
    section(&mut f, 0, 0, 0, 0, 0);
    section(&mut f, 11, sym_off, syms.len() as u32, 2, 16); // SHT_DYNSYM, strings in 2
    section(&mut f, 3, str_off, strtab.len() as u32, 0, 0); // SHT_STRTAB
    f
}

#[test]
fn a_big_endian_32_bit_library_is_read() {
    let dir = TempDir::new("exports");
    let path = dir.path("libsparc.so");
    let global_func = (1 << 4) | 2; // STB_GLOBAL, STT_FUNC
    let local_func = 2; // STB_LOCAL
    let elf = big_endian_elf32(&[
        ("bmiInitSystem", global_func, 1),
        ("vendor_internal_helper", local_func, 1),
        ("strcmp", global_func, 0),
        ("_init", global_func, 1),
    ]);
    std::fs::write(&path, elf).expect("write the ELF file");
    let c = compare(&path);
    let theirs: BTreeSet<String> = c
        .section("only in theirs")
        .union(&c.section("in both"))
        .cloned()
        .collect();
    assert_eq!(
        theirs,
        BTreeSet::from(["bmiInitSystem".to_string()]),
        "{}{}",
        c.stdout,
        c.stderr
    );
    assert!(c.stdout.contains("(1 exported symbols)"), "{}", c.stdout);
}

/// A missing file, a file that is not ELF, a truncated ELF file and a directory: exit 2 and a
/// message naming the file and what is wrong with it.
#[test]
fn unusable_files_are_clear_errors() {
    let scratch = TempDir::new("exports-bad");
    let dir = scratch.dir().to_path_buf();
    let text = scratch.write("notes.txt", "not a library\n");
    let real = std::fs::read(sendmail_libmilter()).expect("read libmilter");
    let truncated = scratch.write("truncated.so", &real[..30]);
    let missing = scratch.path("no-such-libmilter.so");
    let cases = [
        (missing.clone(), "cannot open: No such file or directory"),
        (text.clone(), "not an ELF file"),
        (truncated.clone(), "truncated ELF file (30 bytes"),
        (dir.clone(), "not a regular file"),
    ];
    for (path, wanted) in cases {
        let c = compare(&path);
        assert_eq!(
            c.code,
            Some(2),
            "{}: {}{}",
            path.display(),
            c.stdout,
            c.stderr
        );
        let line = format!(
            "spamfilter-check: --compare-exports: {}: {wanted}",
            path.display()
        );
        assert!(
            c.stderr.contains(&line),
            "wanted {line:?}, got {}",
            c.stderr
        );
    }
}
