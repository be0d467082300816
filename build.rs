//! Generates include/milter_spamfilter.h from the C ABI in src/ffi.rs with cbindgen. The header is
//! committed; tests/header.rs fails when it differs from a fresh one.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let out = std::env::var("OUT_DIR")
        .map(PathBuf::from)
        .expect("OUT_DIR");
    // Only src/ffi.rs: the C ABI is all there, and the rest of the crate's public constants
    // (protocol codes, limits) are no part of the interface.
    match cbindgen::Builder::new()
        .with_src(dir.join("src/ffi.rs"))
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            // The fresh header goes to OUT_DIR, where tests/header.rs compares it with the
            // committed one; `make header` (MILTER_SPAMFILTER_WRITE_HEADER=1) updates include/.
            bindings.write_to_file(out.join("milter_spamfilter.h"));
            println!("cargo:rerun-if-env-changed=MILTER_SPAMFILTER_WRITE_HEADER");
            if std::env::var_os("MILTER_SPAMFILTER_WRITE_HEADER").is_some() {
                bindings.write_to_file(dir.join("include/milter_spamfilter.h"));
            }
        }
        Err(e) => {
            println!("cargo:warning=cbindgen failed: {e}");
        }
    }
}
