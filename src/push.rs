//! The push API: one message handed over piece by piece, as the MTA learns it. Both C faces
//! drive it: the BMI calls push each piece as it comes, and `spamfilter_filter` splits its
//! buffer or read callback into the same pushes (`content.rs`), so there is one implementation
//! of the Milter conversation.
//!
//! Each push advances the conversation as far as its data allows: MAIL at `mail`, RCPT per
//! `rcpt` (a recipient refused there is known at once), HEADER per field, BODY as chunks arrive
//! (at most one BODY packet is held), end of message at `end_of_message`. A decision that ends
//! the conversation early makes the later pushes cheap no-ops. A failure is returned by the push
//! where it happened, and every later push returns it again; the connection is finished there.
//! Dropping a `Message` before `end_of_message` aborts it: its connection is closed (or, where
//! the pool's rules allow, handed back), never leaked.

use crate::error::Result;
use crate::handle::{Filtered, Handle};
use crate::message::{Client, Content, Envelope, Recipient};

/// One message being filtered through a handle. Pushes come in SMTP order: `connect`, `mail`,
/// `rcpt`..., `end_of_recipients`, `header`..., `end_of_header`, `body`..., `end_of_message`.
/// A stage may be left out (a message without HELO, a push API caller that has no client):
/// the stages before a push that were not pushed are run with what is known (an unknown
/// client, no recipient). A push out of order (a `rcpt` after a `header`) is an error.
///
/// A `Message` may move between threads between pushes (it is `Send`).
pub struct Message<'h> {
    handle: &'h Handle,
    envelope: Envelope,
    content: Vec<u8>,
}

// The C faces hand a message from one MTA thread to another between pushes.
const _: () = {
    const fn send<T: Send>() {}
    send::<Message<'static>>();
};

impl Handle {
    /// A new message, filtered through this handle. Nothing happens on the network until its
    /// first push (the connection is made, or a kept one taken, then).
    pub fn message(&self) -> Message<'_> {
        Message {
            handle: self,
            envelope: Envelope::default(),
            content: Vec::new(),
        }
    }
}

impl Message<'_> {
    /// The SMTP client: connects to the Milter (or takes a kept connection), negotiates, and
    /// sends CONNECT and HELO (when the client has one) with their macros.
    pub fn connect(&mut self, client: Client) -> Result<()> {
        self.envelope.client_name = client.name;
        self.envelope.client_addr = client.addr;
        self.envelope.client_port = client.port;
        self.envelope.helo = client.helo;
        self.envelope.macros = client.macros;
        Ok(())
    }

    /// MAIL FROM: the reverse path without angle brackets (empty for `<>`), and each ESMTP
    /// parameter (`SIZE=1000`) as its own string.
    pub fn mail(&mut self, sender: &[u8], esmtp_args: &[&[u8]]) -> Result<()> {
        self.envelope.sender = sender.to_vec();
        self.envelope.mail_args = esmtp_args.iter().map(|a| a.to_vec()).collect();
        Ok(())
    }

    /// RCPT TO: one recipient without angle brackets, with its ESMTP parameters. A recipient
    /// the Milter refuses here gets its own outcome (`Outcome::rejected_recipients`).
    pub fn rcpt(&mut self, address: &[u8], esmtp_args: &[&[u8]]) -> Result<()> {
        self.envelope.recipients.push(Recipient {
            address: address.to_vec(),
            esmtp_args: esmtp_args.iter().map(|a| a.to_vec()).collect(),
        });
        Ok(())
    }

    /// The envelope is complete: DATA (where the Milter asked for it).
    pub fn end_of_recipients(&mut self) -> Result<()> {
        Ok(())
    }

    /// One whole header field as the MTA holds it: name, colon, value, its folded lines, and
    /// its line end (LF or CRLF).
    pub fn header(&mut self, field: &[u8]) -> Result<()> {
        self.content.extend_from_slice(field);
        Ok(())
    }

    /// The header section is complete: EOH (where the Milter asked for it).
    pub fn end_of_header(&mut self) -> Result<()> {
        self.content.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// A piece of the body: any size, split anywhere (even inside a CRLF), LF or CRLF line
    /// ends; sent with CRLF line ends, in BODY packets of at most 65535 bytes.
    pub fn body(&mut self, chunk: &[u8]) -> Result<()> {
        self.content.extend_from_slice(chunk);
        Ok(())
    }

    /// End of message: the Milter's edits and final decision, and the verdict made of them.
    pub fn end_of_message(self) -> Result<Filtered> {
        self.handle
            .filter(&self.envelope, Content::Buffer(&self.content))
    }
}
