//! milter-spamfilter: a Milter client, loaded by an MTA as a spam-filter plug-in.
//!
//! The data flow, one way:
//! 1. `ffi` receives the MTA's calls and turns C structs into `message::Envelope`/`Content`;
//! 2. `config` has read the option file once, at `spamfilter_init`;
//! 3. `push::Message` takes the message piece by piece (a whole one is cut into those pieces by
//!    `content`), and `session` runs one Milter conversation per message over a stream from
//!    `net`, one method per stage, using the sans-I/O codec in `protocol`;
//! 4. `verdict` turns the Milter's decisions (`outcome`) into a Sieve scriptlet, a deferral or
//!    nothing;
//! 5. `ffi` hands that back to the MTA.

pub mod bmi;
pub mod config;
pub mod content;
pub mod error;
pub mod ffi;
pub mod handle;
pub mod logging;
pub mod message;
pub mod net;
pub mod outcome;
pub mod protocol;
pub mod push;
pub mod resolve;
pub mod resume;
pub mod scan;
pub mod session;
pub mod verdict;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
pub use handle::{Filtered, Handle};
pub use message::{Client, Content, Envelope, Recipient};
pub use push::Message;
pub use verdict::{Verdict, VerdictKind};

/// What the unit tests of several modules share.
#[cfg(test)]
mod test_support {
    /// A reproducible stream of pseudo-random numbers (xorshift64), for randomized tests that
    /// must fail the same way twice.
    pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }
}
