//! The conversation fuzz target's corpus, replayed on every `cargo test`: each committed input
//! (fuzz/corpus/conversation/, and crashers kept in fuzz/regressions/conversation/) runs through
//! the same check the target runs (fuzz/conversation.rs): whole Milter conversations over an
//! in-memory stream of fuzzed replies, read sizes and I/O errors, every packet we wrote checked,
//! every verdict parsed by the project's Sieve parser. The hand-made seeds (seed-*, written by
//! fuzz/seed_conversation.py) are valid conversations and must also end without an error.

#[path = "../fuzz/checks.rs"]
mod checks;
#[path = "../fuzz/conversation.rs"]
mod conversation;
#[path = "support/sieve.rs"]
mod sieve;

use std::path::{Path, PathBuf};

/// Every input of the target, sorted by path (so that a failure list is stable).
fn inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut paths: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir).join("conversation")).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .collect();
    paths.sort();
    paths
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn fuzz_corpus_conversation() {
    let paths = inputs();
    assert!(
        !paths.is_empty(),
        "no inputs in fuzz/corpus/conversation (run fuzz/seed_conversation.py)"
    );
    let mut failed = Vec::new();
    for path in &paths {
        let data = read(path);
        if std::panic::catch_unwind(|| conversation::check_conversation(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "conversation: {} of {} inputs fail:\n{}",
        failed.len(),
        paths.len(),
        failed.join("\n")
    );
}

/// The seeds are what the fuzzer starts from: a seed that ends in an error (a miscounted reply)
/// would leave the stages after it to chance.
#[test]
fn conversation_seeds_are_whole_conversations() {
    let seeds: Vec<PathBuf> = inputs()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    assert!(
        seeds.len() >= 20,
        "only {} seed-* inputs in fuzz/corpus/conversation (run fuzz/seed_conversation.py)",
        seeds.len()
    );
    let mut wrong = Vec::new();
    for path in &seeds {
        let ends = conversation::check_conversation(&read(path));
        println!("{}: {}", path.display(), ends.join("; "));
        if ends.iter().any(|e| !e.starts_with("ok")) {
            wrong.push(format!("{}: {}", path.display(), ends.join("; ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "seeds that do not end cleanly:\n{}",
        wrong.join("\n")
    );
}
