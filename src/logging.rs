//! DEBUG output (work in progress).
