//! The protocol trace for DEBUG≥2: each packet as direction, command name, decoded fields and a
//! hex dump, so that the log reads like the protocol.

use super::consts::*;
use crate::error::escape;
use std::fmt::Write;

/// Longest string shown in full in a trace line; the hex dump has the rest.
const SHOWN: usize = 200;

fn quoted(s: &[u8]) -> String {
    if s.len() > SHOWN {
        format!("\"{}\"...({} bytes)", escape(&s[..SHOWN]), s.len())
    } else {
        format!("\"{}\"", escape(s))
    }
}

/// Splits `data` into NUL-terminated strings; a tail without NUL is returned separately.
fn strings(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == 0) {
        out.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    (out, rest)
}

fn u32_at(data: &[u8]) -> Option<u32> {
    data.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One line describing a packet, e.g. `> HEADER name="Subject" value="hi" (14 bytes)`.
/// `outgoing` is MTA to Milter. Never fails, whatever the bytes.
pub fn describe(outgoing: bool, cmd: u8, data: &[u8]) -> String {
    let mut s = String::new();
    let name = if outgoing {
        command_name(cmd)
    } else {
        reply_name(cmd)
    };
    let _ = write!(
        s,
        "{} {}",
        if outgoing { ">" } else { "<" },
        if name == "?" {
            format!("'{}'", escape(&[cmd]))
        } else {
            name.to_string()
        }
    );
    let fields = if outgoing {
        outgoing_fields(cmd, data)
    } else {
        incoming_fields(cmd, data)
    };
    if !fields.is_empty() {
        s.push(' ');
        s.push_str(&fields);
    }
    let _ = write!(s, " ({} bytes)", data.len());
    s
}

fn named_strings(names: &[&str], data: &[u8]) -> String {
    let (strs, tail) = strings(data);
    let mut parts: Vec<String> = Vec::new();
    for (i, st) in strs.iter().enumerate() {
        match names.get(i) {
            Some(n) => parts.push(format!("{n}={}", quoted(st))),
            None => parts.push(quoted(st)),
        }
    }
    if !tail.is_empty() {
        parts.push(format!("unterminated={}", quoted(tail)));
    }
    parts.join(" ")
}

fn outgoing_fields(cmd: u8, data: &[u8]) -> String {
    match cmd {
        SMFIC_OPTNEG => optneg_fields(data),
        SMFIC_MACRO => match data.split_first() {
            Some((&stage, rest)) => {
                let (strs, tail) = strings(rest);
                let mut s = format!("for {}", command_name(stage));
                for pair in strs.chunks(2) {
                    let v = pair.get(1).map(|v| quoted(v)).unwrap_or_default();
                    let _ = write!(s, " {}={v}", escape(pair[0]));
                }
                if !tail.is_empty() {
                    let _ = write!(s, " unterminated={}", quoted(tail));
                }
                s
            }
            None => String::new(),
        },
        SMFIC_CONNECT => match data.iter().position(|&b| b == 0) {
            Some(i) => {
                let mut s = format!("host={}", quoted(&data[..i]));
                let rest = &data[i + 1..];
                if let Some((&family, rest)) = rest.split_first() {
                    let _ = write!(s, " family={}", escape(&[family]));
                    if rest.len() >= 2 {
                        let port = u16::from_be_bytes([rest[0], rest[1]]);
                        let (strs, _) = strings(&rest[2..]);
                        let _ = write!(s, " port={port}");
                        if let Some(a) = strs.first() {
                            let _ = write!(s, " address={}", quoted(a));
                        }
                    }
                }
                s
            }
            None => named_strings(&[], data),
        },
        SMFIC_HELO => named_strings(&["helo"], data),
        SMFIC_MAIL => named_strings(&["sender"], data),
        SMFIC_RCPT => named_strings(&["recipient"], data),
        SMFIC_HEADER => named_strings(&["name", "value"], data),
        SMFIC_UNKNOWN => named_strings(&["command"], data),
        SMFIC_BODY => {
            let shown = &data[..data.len().min(40)];
            format!("starts {}", quoted(shown))
        }
        _ => String::new(),
    }
}

fn optneg_fields(data: &[u8]) -> String {
    match (
        u32_at(data),
        data.get(4..).and_then(u32_at),
        data.get(8..).and_then(u32_at),
    ) {
        (Some(v), Some(a), Some(p)) => {
            let mut s = format!(
                "version={v} actions=0x{a:x} ({}) protocol=0x{p:x} ({})",
                action_names(a),
                protocol_names(p)
            );
            let mut rest = &data[12..];
            while let Some(stage) = u32_at(rest) {
                let (strs, tail) = strings(&rest[4..]);
                match strs.first() {
                    Some(list) => {
                        let _ = write!(s, " macros[{stage}]={}", quoted(list));
                        rest = &rest[4 + list.len() + 1..];
                    }
                    None => {
                        let _ = write!(s, " macros[{stage}] unterminated={}", quoted(tail));
                        break;
                    }
                }
            }
            s
        }
        _ => "truncated".to_string(),
    }
}

fn incoming_fields(cmd: u8, data: &[u8]) -> String {
    match cmd {
        SMFIC_OPTNEG => optneg_fields(data),
        SMFIR_REPLYCODE => named_strings(&["text"], data),
        SMFIR_QUARANTINE => named_strings(&["reason"], data),
        SMFIR_ADDHEADER => named_strings(&["name", "value"], data),
        SMFIR_INSHEADER | SMFIR_CHGHEADER => match u32_at(data) {
            Some(i) => format!(
                "index={i} {}",
                named_strings(&["name", "value"], &data[4..])
            ),
            None => "truncated".to_string(),
        },
        SMFIR_ADDRCPT | SMFIR_DELRCPT => named_strings(&["recipient"], data),
        SMFIR_ADDRCPT_PAR => named_strings(&["recipient", "args"], data),
        SMFIR_CHGFROM => named_strings(&["sender", "args"], data),
        _ => String::new(),
    }
}

/// A classic 16-bytes-per-line hex dump with an ASCII column, each line indented by two spaces.
pub fn hexdump(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 4 + 16);
    for (n, line) in data.chunks(16).enumerate() {
        if n > 0 {
            s.push('\n');
        }
        let _ = write!(s, "  {:06x}  ", n * 16);
        for i in 0..16 {
            match line.get(i) {
                Some(b) => {
                    let _ = write!(s, "{b:02x} ");
                }
                None => s.push_str("   "),
            }
            if i == 7 {
                s.push(' ');
            }
        }
        s.push(' ');
        for &b in line {
            s.push(if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            });
        }
    }
    s
}
