//! Milter macros: the names sent at each stage (the Milter's lists, or the defaults), and their
//! values: the MTA's own, or derived from the envelope (`{client_addr}`, `{rcpt_host}`, ...).
//! Nothing is allocated per message: composed values are handed out as parts.

use crate::message::{bare_macro_name, Envelope};
use crate::protocol::{self, consts::STAGE_CMD, Negotiation};

/// Macros sent at each stage when the Milter asks for no list of its own: sendmail's and Postfix's
/// defaults together. A macro the MTA has no value for is left out.
pub const DEFAULT_MACROS: [&[&[u8]]; 7] = [
    // CONNECT
    &[
        b"j",
        b"_",
        b"{daemon_name}",
        b"{daemon_addr}",
        b"{if_name}",
        b"{if_addr}",
        b"{client_addr}",
        b"{client_name}",
        b"{client_port}",
        b"{client_ptr}",
        b"v",
    ],
    // HELO
    &[
        b"{tls_version}",
        b"{cipher}",
        b"{cipher_bits}",
        b"{cert_subject}",
        b"{cert_issuer}",
    ],
    // ENVFROM
    &[
        b"i",
        b"{auth_type}",
        b"{auth_authen}",
        b"{auth_ssf}",
        b"{auth_author}",
        b"{mail_mailer}",
        b"{mail_host}",
        b"{mail_addr}",
    ],
    // ENVRCPT
    &[b"i", b"{rcpt_mailer}", b"{rcpt_host}", b"{rcpt_addr}"],
    // DATA
    &[b"i"],
    // EOM
    &[b"i", b"{msg_id}"],
    // EOH
    &[b"i"],
];

/// A macro the library can derive from the envelope when the MTA gives no value of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    No,
    RcptAddr,
    RcptHost,
    RcptMailer,
    ClientAddr,
    ClientPort,
    ClientName,
    ClientPtr,
    /// `_`: "name [addr]", as sendmail writes the client's identity.
    Ident,
    MailAddr,
    MailHost,
    MailMailer,
}

impl Derived {
    /// The kind of a macro by its name without braces.
    fn of(bare: &[u8]) -> Derived {
        match bare {
            b"rcpt_addr" => Derived::RcptAddr,
            b"rcpt_host" => Derived::RcptHost,
            b"rcpt_mailer" => Derived::RcptMailer,
            b"client_addr" => Derived::ClientAddr,
            b"client_port" => Derived::ClientPort,
            b"client_name" => Derived::ClientName,
            b"client_ptr" => Derived::ClientPtr,
            b"_" => Derived::Ident,
            b"mail_addr" => Derived::MailAddr,
            b"mail_host" => Derived::MailHost,
            b"mail_mailer" => Derived::MailMailer,
            _ => Derived::No,
        }
    }
}

/// One macro of the default lists, with its bare name and kind worked out once.
struct Planned {
    name: &'static [u8],
    bare: &'static [u8],
    kind: Derived,
    /// `name_bit` of the bare name.
    bit: u64,
}

/// `DEFAULT_MACROS` with each name's bare form and kind, built once per process.
fn default_plan() -> &'static [Vec<Planned>; 7] {
    static PLAN: std::sync::OnceLock<[Vec<Planned>; 7]> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        DEFAULT_MACROS.map(|names| {
            names
                .iter()
                .map(|&name| {
                    let bare = bare_macro_name(name);
                    Planned {
                        name,
                        bare,
                        kind: Derived::of(bare),
                        bit: name_bit(bare),
                    }
                })
                .collect()
        })
    })
}

/// A macro value as up to four pieces written one after the other (`[`, address, `]`), so
/// that composed values need no buffer of their own.
struct Parts<'v> {
    parts: [&'v [u8]; 4],
    n: usize,
}

impl<'v> Parts<'v> {
    fn one(s: &'v [u8]) -> Parts<'v> {
        Parts {
            parts: [s, &[], &[], &[]],
            n: 1,
        }
    }

    fn of(parts: [&'v [u8]; 4], n: usize) -> Parts<'v> {
        Parts { parts, n }
    }

    fn parts(&self) -> &[&'v [u8]] {
        &self.parts[..self.n]
    }

    fn is_empty(&self) -> bool {
        self.parts().iter().all(|p| p.is_empty())
    }
}

/// Macro values for the current stage: the MTA's own, and those derived from the envelope.
/// Nothing is allocated per message: composed values are handed out as parts.
pub struct MacroValues<'e> {
    env: &'e Envelope,
    /// The client's host name, when known and not empty.
    pub name: Option<&'e [u8]>,
    /// The client's address and port as text.
    text: &'e ClientText,
    /// The recipient of the last RCPT, once there is one.
    rcpt: Option<&'e [u8]>,
    /// `ClientText::mta_names`.
    mta_names: u64,
}

/// One of 64 bits for a macro's bare name, from its length and its first and last bytes.
fn name_bit(bare: &[u8]) -> u64 {
    let (first, last) = match bare {
        [] => (0, 0),
        [f, .., l] => (*f, *l),
        [f] => (*f, *f),
    };
    1 << ((bare.len() as u64 * 7 + u64::from(first) * 3 + u64::from(last)) % 64)
}

/// With more MTA macros than this, every name is taken as possibly the MTA's (all bits set).
const MTA_MACROS: usize = 16;

/// What every stage's macros need of the client and the MTA's macros, worked out once per
/// message (at CONNECT).
pub struct ClientText {
    /// The MTA gave a client host name, not empty. Worked out here, once, rather than by each
    /// stage's MacroValues: there, inlined, the compiler tested the length of an absent name
    /// before its presence, which valgrind reports as a jump on an uninitialised value.
    pub name: bool,
    /// The client's address and port as text.
    pub addr: Option<protocol::InlineText>,
    pub port: protocol::InlineText,
    /// A bit per MTA macro name (`name_bit`): most names looked up are none of the MTA's, and
    /// a clear bit says so without comparing names.
    pub mta_names: u64,
}

impl ClientText {
    /// What `of` makes of an empty envelope, made directly (each conversation starts with it,
    /// before its CONNECT).
    pub fn none() -> ClientText {
        ClientText {
            name: false,
            addr: None,
            port: protocol::InlineText::decimal(0),
            mta_names: 0,
        }
    }

    #[inline(always)] // at CONNECT, once a message: one function fewer entered
    pub fn of(env: &Envelope) -> ClientText {
        let mta_names = match env.macros.len() <= MTA_MACROS {
            true => env
                .macros
                .iter()
                .fold(0, |bits, (name, _)| bits | name_bit(bare_macro_name(name))),
            false => u64::MAX,
        };
        ClientText {
            name: env.client_name.as_ref().is_some_and(|n| !n.is_empty()),
            addr: env.client_addr.as_ref().map(protocol::InlineText::new),
            port: protocol::InlineText::decimal(u32::from(env.client_port)),
            mta_names,
        }
    }
}

impl<'e> MacroValues<'e> {
    pub fn new(env: &'e Envelope, text: &'e ClientText) -> MacroValues<'e> {
        MacroValues {
            env,
            mta_names: text.mta_names,
            name: text
                .name
                .then(|| env.client_name.as_deref().unwrap_or_default()),
            text,
            rcpt: None,
        }
    }

    /// The MTA's value of the macro whose bare name is `bare` (the last of that name wins).
    fn mta_value(&self, bare: &[u8]) -> Option<&'e [u8]> {
        if self.mta_names & name_bit(bare) == 0 {
            return None;
        }
        self.env.macro_value(bare)
    }

    pub fn set_rcpt(&mut self, address: &'e [u8]) {
        self.rcpt = Some(address);
    }

    /// The value of the macro whose bare name is `bare` (of kind `kind`), or None when it has
    /// none. The MTA's value wins over a derived one; an empty value counts as none, except the
    /// null sender's empty `mail_addr`.
    fn value(&self, bare: &[u8], kind: Derived) -> Option<Parts<'_>> {
        if let Some(v) = self.mta_value(bare) {
            return (!v.is_empty()).then(|| Parts::one(v));
        }
        let env = self.env;
        let addr = self.text.addr.as_ref().map(|a| a.as_bytes());
        let at_host = |a: &'e [u8]| a.iter().rposition(|&b| b == b'@').map(|at| &a[at + 1..]);
        let v = match kind {
            Derived::No => return None,
            Derived::RcptAddr => Parts::one(self.rcpt?),
            Derived::RcptHost => Parts::one(at_host(self.rcpt?)?),
            Derived::RcptMailer => Parts::one(match at_host(self.rcpt?) {
                Some(_) => b"smtp",
                None => b"local",
            }),
            Derived::ClientAddr => Parts::one(addr?),
            Derived::ClientPort => {
                addr?;
                Parts::one(self.text.port.as_bytes())
            }
            Derived::ClientPtr => Parts::one(self.name?),
            Derived::ClientName => match (self.name, addr) {
                (Some(n), _) => Parts::one(n),
                (None, Some(a)) => Parts::of([b"[", a, b"]", &[]], 3),
                (None, None) => return None,
            },
            Derived::Ident => match (self.name, addr) {
                (Some(n), Some(a)) => Parts::of([n, b" [", a, b"]"], 4),
                (None, Some(a)) => Parts::of([b"[", a, b"]", &[]], 3),
                (Some(n), None) => Parts::one(n),
                (None, None) => return None,
            },
            Derived::MailAddr => return Some(Parts::one(&env.sender)),
            Derived::MailHost => Parts::one(at_host(&env.sender)?),
            Derived::MailMailer => Parts::one(if addr.is_some() { b"smtp" } else { b"local" }),
        };
        (!v.is_empty()).then_some(v)
    }
}

/// Queues the macros of `stage` into `out` (returns where the packet starts, or None when no
/// macro had a value and nothing was queued): the requested (or default) names that have a
/// value, each value written straight into the packet.
pub fn queue(
    out: &mut Vec<u8>,
    neg: &Negotiation,
    stage: usize,
    values: &MacroValues<'_>,
) -> Option<usize> {
    let start = protocol::begin_macros(out, STAGE_CMD[stage]);
    let mut any = false;
    let mut add = |out: &mut Vec<u8>, name: &[u8], bare: &[u8], kind: Derived| {
        if let Some(v) = values.value(bare, kind) {
            any |= protocol::push_macro_named(out, start, name, v.parts());
        }
    };
    // Most names have no value: neither derived from the envelope nor among the MTA's macros
    // (a clear bit in `mta_names` says so without looking).
    match &neg.macros[stage] {
        Some(names) => {
            for name in names {
                let bare = bare_macro_name(name);
                let kind = Derived::of(bare);
                if kind != Derived::No || values.mta_names & name_bit(bare) != 0 {
                    add(out, name, bare, kind);
                }
            }
        }
        None => {
            for m in &default_plan()[stage] {
                if m.kind != Derived::No || values.mta_names & m.bit != 0 {
                    add(out, m.name, m.bare, m.kind);
                }
            }
        }
    }
    if !any {
        out.truncate(start);
        return None;
    }
    protocol::end_packet(out, start);
    Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_none_is_what_an_empty_envelope_gives() {
        let (none, of) = (ClientText::none(), ClientText::of(&Envelope::default()));
        assert_eq!(none.name, of.name);
        assert_eq!(
            none.addr.map(|a| a.as_bytes().to_vec()),
            of.addr.map(|a| a.as_bytes().to_vec())
        );
        assert_eq!(none.port.as_bytes(), of.port.as_bytes());
        assert_eq!(none.mta_names, of.mta_names);
    }

    #[test]
    fn macro_values_from_the_envelope() {
        fn value(v: &MacroValues<'_>, name: &str) -> Option<String> {
            let bare = bare_macro_name(name.as_bytes());
            let parts = v.value(bare, Derived::of(bare))?;
            Some(String::from_utf8(parts.parts().concat()).unwrap())
        }
        let mut env = Envelope {
            client_name: Some(b"mail.example.org".to_vec()),
            client_addr: Some("192.0.2.1".parse().unwrap()),
            client_port: 40000,
            sender: b"a@example.com".to_vec(),
            macros: vec![
                (b"j".to_vec(), b"mx".to_vec()),
                (b"{empty}".to_vec(), Vec::new()),
            ],
            ..Envelope::default()
        };
        let recipient = b"b@example.net".to_vec();
        let local = b"postmaster".to_vec();
        {
            let text = ClientText::of(&env);
            let mut v = MacroValues::new(&env, &text);
            let want = [
                ("j", Some("mx")),
                ("{j}", Some("mx")),
                ("empty", None),
                ("{client_addr}", Some("192.0.2.1")),
                ("{client_port}", Some("40000")),
                ("{client_name}", Some("mail.example.org")),
                ("{client_ptr}", Some("mail.example.org")),
                ("_", Some("mail.example.org [192.0.2.1]")),
                ("{mail_addr}", Some("a@example.com")),
                ("{mail_host}", Some("example.com")),
                ("{mail_mailer}", Some("smtp")),
                ("{rcpt_addr}", None),
                ("{rcpt_mailer}", None),
                ("{unknown}", None),
                ("", None),
            ];
            for (name, w) in want {
                assert_eq!(value(&v, name).as_deref(), w, "{name}");
            }
            v.set_rcpt(&recipient);
            assert_eq!(value(&v, "{rcpt_addr}").as_deref(), Some("b@example.net"));
            assert_eq!(value(&v, "{rcpt_host}").as_deref(), Some("example.net"));
            assert_eq!(value(&v, "{rcpt_mailer}").as_deref(), Some("smtp"));
            v.set_rcpt(&local);
            assert_eq!(value(&v, "{rcpt_host}").as_deref(), None);
            assert_eq!(value(&v, "{rcpt_mailer}").as_deref(), Some("local"));
        }
        env.client_name = Some(Vec::new());
        env.client_addr = Some("2001:db8::1".parse().unwrap());
        env.sender = Vec::new();
        {
            let text = ClientText::of(&env);
            let v = MacroValues::new(&env, &text);
            assert_eq!(value(&v, "{client_name}").as_deref(), Some("[2001:db8::1]"));
            assert_eq!(value(&v, "{client_ptr}").as_deref(), None);
            assert_eq!(value(&v, "_").as_deref(), Some("[2001:db8::1]"));
            assert_eq!(value(&v, "{mail_addr}").as_deref(), Some(""));
            assert_eq!(value(&v, "{mail_host}").as_deref(), None);
        }
        env.client_name = Some(b"host".to_vec());
        env.client_addr = None;
        {
            let text = ClientText::of(&env);
            let v = MacroValues::new(&env, &text);
            assert_eq!(value(&v, "{client_name}").as_deref(), Some("host"));
            assert_eq!(value(&v, "_").as_deref(), Some("host"));
            assert_eq!(value(&v, "{client_addr}").as_deref(), None);
            assert_eq!(value(&v, "{client_port}").as_deref(), None);
            assert_eq!(value(&v, "{mail_mailer}").as_deref(), Some("local"));
        }
        env.client_name = None;
        let text = ClientText::of(&env);
        let v = MacroValues::new(&env, &text);
        assert_eq!(value(&v, "{client_name}").as_deref(), None);
        assert_eq!(value(&v, "_").as_deref(), None);

        // The last of a name wins, braces or not, from the table and without it.
        for extra in [0usize, MTA_MACROS] {
            env.macros = (0..extra)
                .map(|i| (format!("m{i}").into_bytes(), b"v".to_vec()))
                .collect();
            env.macros.push((b"x".to_vec(), b"1".to_vec()));
            env.macros.push((b"{x}".to_vec(), b"2".to_vec()));
            let text = ClientText::of(&env);
            let v = MacroValues::new(&env, &text);
            assert_eq!(text.mta_names == u64::MAX, extra > 0);
            assert_eq!(value(&v, "x").as_deref(), Some("2"));
            assert_eq!(value(&v, "{x}").as_deref(), Some("2"));
            assert_eq!(value(&v, "{m0}").as_deref(), (extra > 0).then_some("v"));
        }
    }
}
