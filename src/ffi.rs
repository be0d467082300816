//! The C ABI (work in progress).
