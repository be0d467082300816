//! BmiError: a 32-bit value that packs where an error arose (bits 24..31) and what it was (bits
//! 0..22), with bit 23 marking an error that is not fatal; 0 is success. The packing and every
//! number are our choice (include/bmi_api.h says so): one public error text, `[0x3000006]
//! client: The API received an invalid argument`, fixes location 3 as "client" and type 6 as
//! "invalid argument"; the rest follow the library's own error kinds.

use crate::error::{Error, ErrorKind};
use std::ffi::c_uint;

/// A packed error, as C sees it (`typedef uint32_t BmiError`).
pub type Code = u32;

/// Success.
pub const OK: Code = 0;
/// Set on an error that is only a warning (not fatal).
pub const WARNING: Code = 0x0080_0000;

/// Where an error arose (`BmiErrorLocation`).
pub mod location {
    use std::ffi::c_uint;
    pub const NONE: c_uint = 0;
    pub const SERVER: c_uint = 1;
    pub const NETWORK: c_uint = 2;
    pub const CLIENT: c_uint = 3;
    pub const CONFIG: c_uint = 4;
}

/// What went wrong (`BmiErrorType`).
pub mod kind {
    use std::ffi::c_uint;
    pub const NONE: c_uint = 0;
    pub const MEMORY: c_uint = 1;
    pub const CONFIG: c_uint = 2;
    pub const CONNECT: c_uint = 3;
    pub const TIMEOUT: c_uint = 4;
    pub const IO: c_uint = 5;
    pub const INVALID_ARG: c_uint = 6;
    pub const PROTOCOL: c_uint = 7;
    pub const TEMPFAIL: c_uint = 8;
    pub const STATE: c_uint = 9;
    pub const BAD_VERDICT: c_uint = 10;
    pub const INTERNAL: c_uint = 11;
}

/// A fatal error at `location` of type `kind`.
pub const fn fatal(location: c_uint, kind: c_uint) -> Code {
    ((location & 0xFF) << 24) | (kind & 0x007F_FFFF)
}

/// Fatal errors the API itself returns.
pub const INVALID_ARG: Code = fatal(location::CLIENT, kind::INVALID_ARG);
pub const STATE: Code = fatal(location::CLIENT, kind::STATE);
pub const INTERNAL: Code = fatal(location::CLIENT, kind::INTERNAL);
pub const BAD_VERDICT: Code = fatal(location::CLIENT, kind::BAD_VERDICT);
pub const TEMPFAIL: Code = fatal(location::SERVER, kind::TEMPFAIL);
pub const CONFIG: Code = fatal(location::CONFIG, kind::CONFIG);

pub fn is_fatal(code: Code) -> bool {
    code != OK && code & WARNING == 0
}

pub fn location_of(code: Code) -> c_uint {
    code >> 24
}

pub fn kind_of(code: Code) -> c_uint {
    code & 0x007F_FFFF
}

/// The BmiError for one of the library's errors: where it arose and what it was, so that the
/// MTA's log (which prints only the two numbers) already says which side failed.
pub fn code_of(e: &Error) -> Code {
    match e.kind {
        ErrorKind::Config => CONFIG,
        ErrorKind::Connect | ErrorKind::Socks => fatal(location::NETWORK, kind::CONNECT),
        ErrorKind::Timeout => fatal(location::NETWORK, kind::TIMEOUT),
        ErrorKind::Io => fatal(location::NETWORK, kind::IO),
        ErrorKind::Protocol => fatal(location::SERVER, kind::PROTOCOL),
        ErrorKind::Message => INVALID_ARG,
    }
}

/// Words for a code, for the last-error text: `"client/state"`.
pub fn describe(code: Code) -> String {
    let loc = match location_of(code) {
        location::NONE => "none",
        location::SERVER => "server",
        location::NETWORK => "network",
        location::CLIENT => "client",
        location::CONFIG => "config",
        _ => "unknown location",
    };
    let what = match kind_of(code) {
        kind::NONE => "none",
        kind::MEMORY => "memory",
        kind::CONFIG => "config",
        kind::CONNECT => "connect",
        kind::TIMEOUT => "timeout",
        kind::IO => "io",
        kind::INVALID_ARG => "invalid argument",
        kind::PROTOCOL => "protocol",
        kind::TEMPFAIL => "tempfail",
        kind::STATE => "state",
        kind::BAD_VERDICT => "bad verdict",
        kind::INTERNAL => "internal",
        _ => "unknown type",
    };
    format!("{loc}/{what}")
}

/// A failed BMI call: its code, and the text spamfilter_last_error() then returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(code_of(&e), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_public_error_text_packs_as_ours_does() {
        // Momentum's "[0x3000006] client: The API received an invalid argument".
        assert_eq!(INVALID_ARG, 0x0300_0006);
        assert_eq!(location_of(INVALID_ARG), location::CLIENT);
        assert_eq!(kind_of(INVALID_ARG), kind::INVALID_ARG);
    }

    #[test]
    fn success_and_warnings_are_not_fatal() {
        assert!(!is_fatal(OK));
        assert!(!is_fatal(TEMPFAIL | WARNING));
        assert!(is_fatal(TEMPFAIL));
        assert_eq!(kind_of(TEMPFAIL | WARNING), kind::TEMPFAIL);
    }

    #[test]
    fn every_library_error_says_which_side_failed() {
        let cases = [
            (ErrorKind::Config, location::CONFIG, kind::CONFIG),
            (ErrorKind::Connect, location::NETWORK, kind::CONNECT),
            (ErrorKind::Socks, location::NETWORK, kind::CONNECT),
            (ErrorKind::Timeout, location::NETWORK, kind::TIMEOUT),
            (ErrorKind::Io, location::NETWORK, kind::IO),
            (ErrorKind::Protocol, location::SERVER, kind::PROTOCOL),
            (ErrorKind::Message, location::CLIENT, kind::INVALID_ARG),
        ];
        for (k, loc, what) in cases {
            let code = code_of(&Error::new(k, "x"));
            assert!(is_fatal(code), "{k:?}");
            assert_eq!((location_of(code), kind_of(code)), (loc, what), "{k:?}");
        }
    }
}
