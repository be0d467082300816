//! What a Milter may send for one message (`config::MilterLimits`), counted as it arrives. Past
//! a limit the conversation ends at once with an error that names the limit and what the Milter
//! sent, and everything kept for the verdict goes with the conversation: a flood of edits or
//! reply texts costs neither memory nor time, however long the Milter would go on.

use crate::config::MilterLimits;
use crate::error::escape;
use crate::outcome::Edit;

/// What one message has used of the limits so far.
#[derive(Debug)]
pub(super) struct Budget {
    limits: MilterLimits,
    edits: usize,
    added_recipients: usize,
    /// The bytes kept for the verdict: names, values, addresses, arguments, reply texts.
    bytes: usize,
}

impl Budget {
    pub fn new(limits: MilterLimits) -> Budget {
        Budget {
            limits,
            edits: 0,
            added_recipients: 0,
            bytes: 0,
        }
    }

    /// Counts an edit the Milter sent as `what` (ADDHEADER, ...); the complaint when it
    /// crosses a limit.
    pub fn edit(&mut self, edit: &Edit, what: &str) -> Result<(), String> {
        self.edits += 1;
        if self.edits > self.limits.max_edits {
            return Err(format!(
                "sent more than MAX_EDITS ({}) modifications: the next was {what}",
                self.limits.max_edits
            ));
        }
        let bytes = match edit {
            Edit::AddHeader { name, value }
            | Edit::InsHeader { name, value, .. }
            | Edit::ChgHeader { name, value, .. } => {
                if value.len() > self.limits.max_header_value {
                    return Err(format!(
                        "sent {what} \"{}\" with a value of {} bytes, more than \
                         MAX_HEADER_VALUE ({})",
                        escape(&name[..name.len().min(60)]),
                        value.len(),
                        self.limits.max_header_value
                    ));
                }
                name.len() + value.len()
            }
            Edit::AddRcpt { rcpt, args } => {
                self.added_recipients += 1;
                if self.added_recipients > self.limits.max_added_recipients {
                    return Err(format!(
                        "sent more than MAX_ADDED_RECIPIENTS ({}) recipients to add: the next \
                         was {what}",
                        self.limits.max_added_recipients
                    ));
                }
                rcpt.len() + args.as_ref().map_or(0, Vec::len)
            }
            Edit::DelRcpt { rcpt } => rcpt.len(),
            Edit::ReplaceBody => 0,
        };
        self.take(bytes, what)
    }

    /// Counts a REPLYCODE text of `len` bytes, sent in reply to `what`.
    pub fn reply_text(&mut self, len: usize, what: &str) -> Result<(), String> {
        if len > self.limits.max_reply_text {
            return Err(format!(
                "answered {what} with a reply text of {len} bytes, more than MAX_REPLY_TEXT ({})",
                self.limits.max_reply_text
            ));
        }
        self.take(len, &format!("the reply to {what}"))
    }

    fn take(&mut self, bytes: usize, what: &str) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.max_verdict_size {
            return Err(format!(
                "sent more than MAX_VERDICT_SIZE ({}) bytes for the verdict: {} with {what}",
                self.limits.max_verdict_size, self.bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MilterLimits {
        MilterLimits {
            max_edits: 3,
            max_verdict_size: 100,
            max_header_value: 20,
            max_added_recipients: 1,
            max_reply_text: 30,
        }
    }

    fn add(value: &[u8]) -> Edit {
        Edit::AddHeader {
            name: b"X-A".to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn each_limit_names_itself_and_what_was_sent() {
        let mut b = Budget::new(limits());
        assert_eq!(
            b.edit(&add(&[b'v'; 21]), "ADDHEADER"),
            Err(
                "sent ADDHEADER \"X-A\" with a value of 21 bytes, more than MAX_HEADER_VALUE \
                 (20)"
                    .to_string()
            )
        );
        let mut b = Budget::new(limits());
        for _ in 0..3 {
            assert_eq!(b.edit(&add(b"v"), "ADDHEADER"), Ok(()));
        }
        assert_eq!(
            b.edit(&add(b"v"), "INSHEADER"),
            Err("sent more than MAX_EDITS (3) modifications: the next was INSHEADER".to_string())
        );
        let mut b = Budget::new(limits());
        let rcpt = Edit::AddRcpt {
            rcpt: b"<a@b>".to_vec(),
            args: None,
        };
        assert_eq!(b.edit(&rcpt, "ADDRCPT"), Ok(()));
        assert_eq!(
            b.edit(&rcpt, "ADDRCPT"),
            Err(
                "sent more than MAX_ADDED_RECIPIENTS (1) recipients to add: the next was ADDRCPT"
                    .to_string()
            )
        );
        let mut b = Budget::new(limits());
        assert_eq!(
            b.reply_text(31, "RCPT"),
            Err(
                "answered RCPT with a reply text of 31 bytes, more than MAX_REPLY_TEXT (30)"
                    .to_string()
            )
        );
        for _ in 0..3 {
            assert_eq!(b.reply_text(30, "RCPT"), Ok(()));
        }
        assert_eq!(
            b.reply_text(30, "RCPT"),
            Err(
                "sent more than MAX_VERDICT_SIZE (100) bytes for the verdict: 120 with the reply \
                 to RCPT"
                    .to_string()
            )
        );
    }
}
