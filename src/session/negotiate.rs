//! OPTNEG: what we offer, what the Milter's reply makes of it, the negotiation each thread
//! remembers per Milter (so that the next message is encoded while the Milter answers OPTNEG),
//! and the proof that a kept connection is in step (`crate::resume`).

use super::{Conversation, Timeouts};
use crate::error::{escape, Result};
use crate::protocol::{self, consts::*, Negotiation};
use log::{debug, warn};
use std::sync::Arc;

/// The actions we offer: all of them, as sendmail and Postfix do. libmilter drops a Milter that
/// registered an action the MTA did not offer ("does not fulfill action requirements"), and
/// real ones register what they might use (spamass-milter CHGBODY, mimedefang everything). What
/// a verdict cannot carry (CHGFROM, the new body of REPLBODY) is logged and left out.
pub const OFFERED_ACTIONS: u32 = SMFIF_ADDHDRS
    | SMFIF_CHGBODY
    | SMFIF_ADDRCPT
    | SMFIF_DELRCPT
    | SMFIF_CHGHDRS
    | SMFIF_QUARANTINE
    | SMFIF_CHGFROM
    | SMFIF_ADDRCPT_PAR
    | SMFIF_SETSYMLIST;

/// The actions that let a Milter send packets before its final reply to end of message: all we
/// offer but SETSYMLIST, which is used at negotiation.
pub const EDIT_ACTIONS: u32 = OFFERED_ACTIONS & !SMFIF_SETSYMLIST;

/// The actions a protocol version defines: version 2 (and 3, 4) know the first six.
pub fn offered_actions(version: u32) -> u32 {
    if version >= 6 {
        OFFERED_ACTIONS
    } else {
        OFFERED_ACTIONS & 0x3F
    }
}

/// The protocol bits we can honour, per offered version (as Postfix's table: 2, 3, 4, 6).
pub fn offered_protocol(version: u32) -> u32 {
    let v2 = SMFIP_NOCONNECT
        | SMFIP_NOHELO
        | SMFIP_NOMAIL
        | SMFIP_NORCPT
        | SMFIP_NOBODY
        | SMFIP_NOHDRS
        | SMFIP_NOEOH;
    match version {
        2 => v2,
        3 => v2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN,
        4 | 5 => v2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA,
        _ => {
            v2 | SMFIP_NR_HDR
                | SMFIP_NOUNKNOWN
                | SMFIP_NODATA
                | SMFIP_SKIP
                | SMFIP_NR_CONN
                | SMFIP_NR_HELO
                | SMFIP_NR_MAIL
                | SMFIP_NR_RCPT
                | SMFIP_NR_DATA
                | SMFIP_NR_UNKN
                | SMFIP_NR_EOH
                | SMFIP_NR_BODY
                | SMFIP_HDR_LEADSPC
        }
    }
}

/// What the reply to OPTNEG said, once read after the message went ahead on an assumed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The same negotiation: what was encoded stands.
    Same,
    /// Another one, now in force: what was encoded on the assumed one is void and must be
    /// encoded again.
    Changed,
}

/// The last negotiation a thread had with a Milter: its reply to OPTNEG as sent, and what was
/// made of it.
struct Remembered {
    peer: Arc<str>,
    /// The protocol version offered (MILTER_PROTOCOL): what is made of a reply depends on it.
    version: u32,
    reply: Arc<[u8]>,
    negotiation: Negotiation,
}

thread_local! {
    static LAST_NEGOTIATION: std::cell::RefCell<Option<Remembered>> =
        const { std::cell::RefCell::new(None) };
}

/// The negotiation to assume with `peer` (the one this thread had with it last), and the reply
/// that made it.
#[inline(always)] // its one caller, once a message: one function fewer entered
fn remembered(peer: &str, version: u32) -> Option<(Negotiation, Arc<[u8]>)> {
    LAST_NEGOTIATION
        .try_with(|l| {
            l.borrow()
                .as_ref()
                .filter(|r| r.version == version && *r.peer == *peer)
                .map(|r| (r.negotiation.clone(), Arc::clone(&r.reply)))
        })
        .ok()
        .flatten()
}

fn remember(peer: &Arc<str>, version: u32, reply: &[u8], negotiation: &Negotiation) {
    let _ = LAST_NEGOTIATION.try_with(|l| {
        let mut l = l.borrow_mut();
        match l.as_mut() {
            Some(r) if *r.peer == **peer && r.version == version && *r.reply == *reply => {}
            _ => {
                *l = Some(Remembered {
                    peer: Arc::clone(peer),
                    version,
                    reply: reply.into(),
                    negotiation: negotiation.clone(),
                })
            }
        }
    });
}

impl<S: Timeouts> Conversation<'_, S> {
    /// A new connection: OPTNEG. A Milter answers OPTNEG the same way every time: the message is
    /// encoded on the negotiation this thread had with it last while it answers, instead of
    /// after (not when packets are traced: the trace would show them before the reply).
    pub(super) fn negotiate(&mut self) -> Result<()> {
        self.send_optneg()?;
        let last = match self.wire.trace_packets || self.wire.transcript.is_some() {
            true => None,
            false => remembered(&self.wire.peer, self.offered_version),
        };
        match last {
            Some((neg, reply)) => {
                self.apply(neg);
                self.assumed = Some(reply);
                Ok(())
            }
            None => self.read_optneg(),
        }
    }

    pub(super) fn send_optneg(&mut self) -> Result<()> {
        let version = self.offered_version;
        let start = self.wire.bufs.out.len();
        protocol::encode_optneg(
            &mut self.wire.bufs.out,
            version,
            offered_actions(version),
            offered_protocol(version),
        );
        self.wire.trace_out(start);
        self.wire.write_out()
    }

    /// On a kept connection, after QUIT_NC and OPTNEG: the first packet must be the OPTNEG
    /// reply. OPTNEG is the one command whose reply no other reply can pass for, and the Milter
    /// sends it after every packet it sent before it read our OPTNEG, so reading it proves that
    /// nothing from an earlier message is left unread. A packet before it is one an earlier
    /// message left (a late or extra reply): the connection is out of step, and the error
    /// (before anything of the message was sent) has the handle send the message anew on a
    /// new connection. The reply may negotiate differently from the last time; it is taken.
    pub(super) fn prove_in_step(&mut self) -> Result<()> {
        let (cmd, at) = self.wire.read_packet("OPTNEG")?;
        if cmd != SMFIC_OPTNEG {
            return Err(self.wire.protocol_error(&format!(
                "the kept connection is out of step: {} ('{}') came before the reply to OPTNEG; \
                 it belongs to an earlier message",
                reply_name(cmd),
                escape(&[cmd])
            )));
        }
        let neg = self.negotiated(cmd, at)?;
        self.apply(neg);
        Ok(())
    }

    /// Reads the reply to OPTNEG and takes what it negotiates.
    fn read_optneg(&mut self) -> Result<()> {
        let (cmd, at) = self.wire.read_packet("OPTNEG")?;
        let neg = self.negotiated(cmd, at)?;
        self.apply(neg);
        Ok(())
    }

    /// Reads the reply to OPTNEG when the message went ahead on the negotiation assumed, and
    /// says whether it stands; a changed one is taken.
    pub(super) fn settle(&mut self) -> Result<Settled> {
        let Some(assumed) = self.assumed.take() else {
            return Ok(Settled::Same);
        };
        let (cmd, at) = self.wire.read_packet("OPTNEG")?;
        if cmd == SMFIC_OPTNEG && *assumed == *self.wire.data(at.clone()) {
            return Ok(Settled::Same);
        }
        let neg = self.negotiated(cmd, at)?;
        debug!(
            "milter {}: negotiated differently than on this thread's last connection to it; \
             the message is encoded again",
            self.wire.peer
        );
        self.apply(neg);
        Ok(Settled::Changed)
    }

    /// What a reply to OPTNEG negotiates, checked against what was offered; remembered for
    /// this thread's next conversation with the same Milter.
    fn negotiated(&mut self, cmd: u8, at: std::ops::Range<usize>) -> Result<Negotiation> {
        let version = self.offered_version;
        let actions = offered_actions(version);
        let offered = offered_protocol(version);
        let peer = &self.wire.peer;
        if cmd != SMFIC_OPTNEG {
            return Err(self.wire.protocol_error(&format!(
                "answered OPTNEG with {} ('{}') instead of OPTNEG",
                reply_name(cmd),
                escape(&[cmd])
            )));
        }
        let mut neg = protocol::decode_optneg(self.wire.data(at.clone()))
            .map_err(|e| self.wire.protocol_error(&format!("bad OPTNEG reply: {e}")))?;
        if neg.version < 2 || neg.version > version {
            return Err(self.wire.protocol_error(&format!(
                "answered with protocol version {}, but version {version} was offered \
                 (versions 2 to {version} are accepted)",
                neg.version
            )));
        }
        if neg.actions & !actions != 0 {
            // rspamd asks for every action whatever was offered; what it then sends and we
            // cannot express is ignored at end of message.
            debug!(
                "milter {peer}: asks for actions that were not offered: {}",
                action_names(neg.actions & !actions)
            );
        }
        if neg.protocol & !offered != 0 {
            warn!(
                "milter {peer}: asks for protocol steps that were not offered, ignored: {}",
                protocol_names(neg.protocol & !offered)
            );
            neg.protocol &= offered;
        }
        // Steps and replies an older version does not define are neither honoured nor expected.
        neg.protocol &= offered_protocol(neg.version);
        // What an older version lacks is never sent.
        if neg.version <= 2 {
            neg.protocol |= SMFIP_NOUNKNOWN;
        }
        if neg.version <= 3 {
            neg.protocol |= SMFIP_NODATA;
        }
        // log! evaluates its arguments whenever the global level allows, which the per-handle
        // dispatcher sets to everything: the names are built only when this handle logs them.
        if self.wire.trace_packets {
            debug!(
                "milter {peer}: negotiated version {}, actions {}, protocol {}",
                neg.version,
                action_names(neg.actions),
                protocol_names(neg.protocol)
            );
        }
        remember(peer, version, self.wire.data(at), &neg);
        Ok(neg)
    }

    /// Takes the negotiated values: what to send and expect, and the macros per stage.
    pub(super) fn apply(&mut self, neg: Negotiation) {
        if self.wire.transcript.is_some() {
            let lines = describe(&neg);
            self.wire.note(|| lines[0].clone());
            for line in &lines[1..] {
                self.wire.note(|| line.clone());
            }
        }
        self.neg = neg;
    }
}

/// The transcript's lines for a negotiation: its values, then the macros at each stage.
fn describe(neg: &Negotiation) -> Vec<String> {
    let mut lines = vec![format!(
        "negotiated: version {}, actions {}, protocol {}",
        neg.version,
        action_names(neg.actions),
        protocol_names(neg.protocol)
    )];
    const STAGE_NAMES: [&str; 7] = ["connect", "helo", "mail", "rcpt", "data", "eom", "eoh"];
    // In the order of the conversation (EOH comes before EOM).
    for stage in [0, 1, 2, 3, 4, 6, 5] {
        let names: Vec<String> = match &neg.macros[stage] {
            Some(names) => names.iter().map(|n| escape(n)).collect(),
            None => super::macros::DEFAULT_MACROS[stage]
                .iter()
                .map(|n| escape(n))
                .collect(),
        };
        lines.push(format!(
            "macros at {}: {} ({})",
            STAGE_NAMES[stage],
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(" ")
            },
            if neg.macros[stage].is_some() {
                "asked for by the Milter"
            } else {
                "default"
            }
        ));
    }
    lines
}
