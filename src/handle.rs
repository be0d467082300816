//! A loaded option file and what filtering a message needs (work in progress).
use crate::verdict::{Outcome, Verdict};
/// The result of filtering one message.
pub struct Filtered {
    pub verdict: Verdict,
    pub outcome: Outcome,
}
/// An opened option file.
pub struct Handle {}
