//! Generates include/milter_spamfilter.h from the C ABI in src/ffi.rs with cbindgen. The header is
//! committed; tests/header.rs fails when it differs from a fresh one.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/bmi.rs");
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
    bmi_declarations(&dir, &out);
}

/// The declarations of the BMI functions in src/bmi.rs, for tests/bmi.rs, which compiles them
/// with include/bmi_api.h: a Rust signature that differs from the header's is a conflicting
/// types error there. The header's own types are left out (they are the header's to define);
/// the two that are plain typedefs are kept, as a redefinition must then be the same type.
fn bmi_declarations(dir: &std::path::Path, out: &std::path::Path) {
    let mut config = cbindgen::Config {
        language: cbindgen::Language::C,
        no_includes: true,
        sys_includes: vec!["stdint.h".to_string()],
        ..Default::default()
    };
    config.export.exclude = [
        "BmiErrorLocation",
        "BmiErrorType",
        "BmiSystem",
        "BmiMessage",
        "BmiOptin",
        "BmiVerdict",
        "BmiRecipient",
        "BMI_TRUE",
        "BMI_FALSE",
        "MAX_HEADER_FIELD",
    ]
    .map(String::from)
    .to_vec();
    match cbindgen::Builder::new()
        .with_src(dir.join("src/bmi.rs"))
        .with_config(config)
        .generate()
    {
        Ok(b) => {
            b.write_to_file(out.join("bmi_declarations.h"));
        }
        Err(e) => println!("cargo:warning=cbindgen (BMI declarations) failed: {e}"),
    }
}
