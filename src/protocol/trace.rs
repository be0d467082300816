//! The protocol trace for DEBUG≥2: each packet as direction, command name, decoded fields and a
//! hex dump, so that the log reads like the protocol.

/// One line describing a packet, e.g. `> HEADER name="Subject" value="hi" (14 bytes)`.
/// `outgoing` is MTA to Milter. Never fails, whatever the bytes.
pub fn describe(outgoing: bool, cmd: u8, data: &[u8]) -> String {
    let _ = (outgoing, cmd, data);
    todo!()
}

/// A classic 16-bytes-per-line hex dump with an ASCII column, each line indented by two spaces.
pub fn hexdump(data: &[u8]) -> String {
    let _ = data;
    todo!()
}
