//! The committed C header must be exactly what cbindgen generates from src/ffi.rs today.

#[test]
fn committed_header_matches_a_fresh_one() {
    let fresh = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/milter_spamfilter.h"))
        .expect("build.rs writes a fresh header into OUT_DIR");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/milter_spamfilter.h"
    ))
    .expect("include/milter_spamfilter.h exists");
    assert!(
        fresh == committed,
        "include/milter_spamfilter.h is stale: run `make header` and commit it"
    );
}

#[test]
fn header_declares_every_entry_point() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/milter_spamfilter.h"
    ))
    .unwrap();
    for f in [
        "spamfilter_init(",
        "spamfilter_filter(",
        "spamfilter_result_free(",
        "spamfilter_close(",
        "spamfilter_version(",
        "spamfilter_last_error(",
        "spamfilter_status_text(",
    ] {
        assert!(committed.contains(f), "header lacks {f}");
    }
}
