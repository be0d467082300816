//! Can a kept connection prove it is in step before the next message rides on it?
//!
//! A Milter may send a reply after its final one (a bug: rspamd#1764 sent two). On a kept
//! connection that reply waits, or is still on its way, when the next message starts, and is
//! read as the answer to that message's first command: the message is decided by another's
//! reply, and every later one by its neighbour's. A look for unread bytes when the connection
//! is taken (`session::peek`) sees only what has already arrived, so it cannot rule that out.
//! Only a reply that no other can pass for proves where the Milter's replies to this message
//! begin: the reply to OPTNEG. So a kept connection starts with QUIT_NC and OPTNEG and reads up
//! to the OPTNEG reply (`session::Conversation::prove_in_step`) — one more round trip per
//! reused message — when the Milter answers OPTNEG after QUIT_NC.
//!
//! libmilter does not: after QUIT_NC its engine (engine.c) accepts only CONNECT or UNKNOWN
//! (`NX_Q_NC`); any other command is ignored without a reply and leaves it in its HELO state,
//! where the next CONNECT is ignored too. No other reply is distinctive either, and under the
//! NR_* bits nothing before end of message is answered at all, so a kept libmilter connection
//! cannot prove it is in step by any exchange. What stands for it there is libmilter's engine:
//! one reply per command, and the edits and PROGRESS a filter may send only while its
//! end-of-message callback runs (`mi_sendok`), so a libmilter Milter cannot send a reply after
//! its final one. A kept libmilter connection is therefore used as before, without the proof.
//!
//! Which kind a Milter is, is asked once per handle (`answers_optneg_after_quit_nc`), on a
//! connection of its own that is closed afterwards, so that a libmilter Milter is never left
//! out of step by the question.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{self, consts::*};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Asks the Milter whether it answers OPTNEG after QUIT_NC: on a new connection, OPTNEG (its
/// reply read), then QUIT_NC and OPTNEG, and our half of the connection closed. A Milter that
/// answers sends an OPTNEG reply; libmilter ignores both commands, reads the end of the stream
/// and closes. So the answer is whether a second OPTNEG reply comes before the end of the
/// stream: no waiting for something that may not come, except up to TIMEOUT for a Milter that
/// neither answers nor closes (taken as "no").
pub fn answers_optneg_after_quit_nc(config: &Config, deadline: Instant) -> Result<bool> {
    let conn = crate::net::connect(config, deadline)?;
    let mut stream = conn.stream;
    let limit = config
        .timeout
        .min(deadline.saturating_duration_since(Instant::now()))
        .max(Duration::from_millis(1));
    let io = |e: std::io::Error| {
        Error::io(format!(
            "milter {}: asking whether it answers OPTNEG after QUIT_NC: {e}",
            conn.peer
        ))
    };
    stream.set_read_timeout(Some(limit)).map_err(io)?;
    stream.set_write_timeout(Some(limit)).map_err(io)?;
    let version = config.milter_protocol;
    let mut optneg = Vec::new();
    protocol::encode_optneg(
        &mut optneg,
        version,
        crate::session::offered_actions(version),
        crate::session::offered_protocol(version),
    );
    stream.write_all(&optneg).map_err(io)?;
    if read_command(&mut stream).map_err(io)? != Some(SMFIC_OPTNEG) {
        return Ok(false);
    }
    let mut again = Vec::new();
    protocol::encode_packet(&mut again, SMFIC_QUIT_NC, &[]);
    again.extend_from_slice(&optneg);
    stream.write_all(&again).map_err(io)?;
    stream.shutdown(Shutdown::Write).map_err(io)?;
    loop {
        match read_command(&mut stream) {
            Ok(Some(SMFIC_OPTNEG)) => return Ok(true),
            Ok(Some(_)) => {}
            // The end of the stream, or a Milter that neither answers nor closes.
            Ok(None) | Err(_) => return Ok(false),
        }
    }
}

/// The command byte of the next packet (its data skipped), or None at the end of the stream.
fn read_command(stream: &mut TcpStream) -> std::io::Result<Option<u8>> {
    let mut prefix = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut prefix) {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(e),
        };
    }
    let len = protocol::decode_len(prefix)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let mut cmd = [0u8; 1];
    stream.read_exact(&mut cmd)?;
    // The rest is not needed: skip it.
    let rest = (len - 1) as u64;
    let skipped = std::io::copy(&mut (&*stream).take(rest), &mut std::io::sink())?;
    if skipped < rest {
        return Ok(None);
    }
    Ok(Some(cmd[0]))
}
