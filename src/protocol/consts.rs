//! Command, reply, action and protocol-bit values of the Milter protocol (sendmail's mfdef.h),
//! with names for the DEBUG trace.

// Commands, MTA to Milter.
pub const SMFIC_ABORT: u8 = b'A';
pub const SMFIC_BODY: u8 = b'B';
pub const SMFIC_CONNECT: u8 = b'C';
pub const SMFIC_MACRO: u8 = b'D';
pub const SMFIC_BODYEOB: u8 = b'E';
pub const SMFIC_HELO: u8 = b'H';
pub const SMFIC_QUIT_NC: u8 = b'K';
pub const SMFIC_HEADER: u8 = b'L';
pub const SMFIC_MAIL: u8 = b'M';
pub const SMFIC_EOH: u8 = b'N';
pub const SMFIC_OPTNEG: u8 = b'O';
pub const SMFIC_QUIT: u8 = b'Q';
pub const SMFIC_RCPT: u8 = b'R';
pub const SMFIC_DATA: u8 = b'T';
pub const SMFIC_UNKNOWN: u8 = b'U';

// Replies, Milter to MTA.
pub const SMFIR_ADDRCPT: u8 = b'+';
pub const SMFIR_DELRCPT: u8 = b'-';
pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
pub const SMFIR_SHUTDOWN: u8 = b'4';
pub const SMFIR_ACCEPT: u8 = b'a';
pub const SMFIR_REPLBODY: u8 = b'b';
pub const SMFIR_CONTINUE: u8 = b'c';
pub const SMFIR_DISCARD: u8 = b'd';
pub const SMFIR_CHGFROM: u8 = b'e';
pub const SMFIR_CONN_FAIL: u8 = b'f';
pub const SMFIR_ADDHEADER: u8 = b'h';
pub const SMFIR_INSHEADER: u8 = b'i';
pub const SMFIR_SETSYMLIST: u8 = b'l';
pub const SMFIR_CHGHEADER: u8 = b'm';
pub const SMFIR_PROGRESS: u8 = b'p';
pub const SMFIR_QUARANTINE: u8 = b'q';
pub const SMFIR_REJECT: u8 = b'r';
pub const SMFIR_SKIP: u8 = b's';
pub const SMFIR_TEMPFAIL: u8 = b't';
pub const SMFIR_REPLYCODE: u8 = b'y';

// Actions (SMFIF_*).
pub const SMFIF_ADDHDRS: u32 = 0x01;
pub const SMFIF_CHGBODY: u32 = 0x02;
pub const SMFIF_ADDRCPT: u32 = 0x04;
pub const SMFIF_DELRCPT: u32 = 0x08;
pub const SMFIF_CHGHDRS: u32 = 0x10;
pub const SMFIF_QUARANTINE: u32 = 0x20;
pub const SMFIF_CHGFROM: u32 = 0x40;
pub const SMFIF_ADDRCPT_PAR: u32 = 0x80;
pub const SMFIF_SETSYMLIST: u32 = 0x100;

// Protocol bits (SMFIP_*).
pub const SMFIP_NOCONNECT: u32 = 0x1;
pub const SMFIP_NOHELO: u32 = 0x2;
pub const SMFIP_NOMAIL: u32 = 0x4;
pub const SMFIP_NORCPT: u32 = 0x8;
pub const SMFIP_NOBODY: u32 = 0x10;
pub const SMFIP_NOHDRS: u32 = 0x20;
pub const SMFIP_NOEOH: u32 = 0x40;
pub const SMFIP_NR_HDR: u32 = 0x80;
pub const SMFIP_NOUNKNOWN: u32 = 0x100;
pub const SMFIP_NODATA: u32 = 0x200;
pub const SMFIP_SKIP: u32 = 0x400;
pub const SMFIP_RCPT_REJ: u32 = 0x800;
pub const SMFIP_NR_CONN: u32 = 0x1000;
pub const SMFIP_NR_HELO: u32 = 0x2000;
pub const SMFIP_NR_MAIL: u32 = 0x4000;
pub const SMFIP_NR_RCPT: u32 = 0x8000;
pub const SMFIP_NR_DATA: u32 = 0x10000;
pub const SMFIP_NR_UNKN: u32 = 0x20000;
pub const SMFIP_NR_EOH: u32 = 0x40000;
pub const SMFIP_NR_BODY: u32 = 0x80000;
pub const SMFIP_HDR_LEADSPC: u32 = 0x100000;
pub const SMFIP_MDS_256K: u32 = 0x10000000;
pub const SMFIP_MDS_1M: u32 = 0x20000000;

// Macro stages for symbol lists (SMFIM_*). Note EOM (5) comes before EOH (6).
pub const SMFIM_CONNECT: usize = 0;
pub const SMFIM_HELO: usize = 1;
pub const SMFIM_ENVFROM: usize = 2;
pub const SMFIM_ENVRCPT: usize = 3;
pub const SMFIM_DATA: usize = 4;
pub const SMFIM_EOM: usize = 5;
pub const SMFIM_EOH: usize = 6;

/// The command a macro stage belongs to.
pub const STAGE_CMD: [u8; 7] = [
    SMFIC_CONNECT,
    SMFIC_HELO,
    SMFIC_MAIL,
    SMFIC_RCPT,
    SMFIC_DATA,
    SMFIC_BODYEOB,
    SMFIC_EOH,
];

/// Name of a command code (MTA to Milter), e.g. `"HEADER"`.
pub fn command_name(cmd: u8) -> &'static str {
    match cmd {
        SMFIC_ABORT => "ABORT",
        SMFIC_BODY => "BODY",
        SMFIC_CONNECT => "CONNECT",
        SMFIC_MACRO => "MACRO",
        SMFIC_BODYEOB => "BODYEOB",
        SMFIC_HELO => "HELO",
        SMFIC_QUIT_NC => "QUIT_NC",
        SMFIC_HEADER => "HEADER",
        SMFIC_MAIL => "MAIL",
        SMFIC_EOH => "EOH",
        SMFIC_OPTNEG => "OPTNEG",
        SMFIC_QUIT => "QUIT",
        SMFIC_RCPT => "RCPT",
        SMFIC_DATA => "DATA",
        SMFIC_UNKNOWN => "UNKNOWN",
        _ => "?",
    }
}

/// Name of a reply code (Milter to MTA), e.g. `"REPLYCODE"`.
pub fn reply_name(code: u8) -> &'static str {
    match code {
        SMFIR_ADDRCPT => "ADDRCPT",
        SMFIR_DELRCPT => "DELRCPT",
        SMFIR_ADDRCPT_PAR => "ADDRCPT_PAR",
        SMFIR_SHUTDOWN => "SHUTDOWN",
        SMFIR_ACCEPT => "ACCEPT",
        SMFIR_REPLBODY => "REPLBODY",
        SMFIR_CONTINUE => "CONTINUE",
        SMFIR_DISCARD => "DISCARD",
        SMFIR_CHGFROM => "CHGFROM",
        SMFIR_CONN_FAIL => "CONN_FAIL",
        SMFIR_ADDHEADER => "ADDHEADER",
        SMFIR_INSHEADER => "INSHEADER",
        SMFIR_SETSYMLIST => "SETSYMLIST",
        SMFIR_CHGHEADER => "CHGHEADER",
        SMFIR_PROGRESS => "PROGRESS",
        SMFIR_QUARANTINE => "QUARANTINE",
        SMFIR_REJECT => "REJECT",
        SMFIR_SKIP => "SKIP",
        SMFIR_TEMPFAIL => "TEMPFAIL",
        SMFIR_REPLYCODE => "REPLYCODE",
        SMFIC_OPTNEG => "OPTNEG",
        _ => "?",
    }
}

const ACTION_NAMES: [(u32, &str); 9] = [
    (SMFIF_ADDHDRS, "ADDHDRS"),
    (SMFIF_CHGBODY, "CHGBODY"),
    (SMFIF_ADDRCPT, "ADDRCPT"),
    (SMFIF_DELRCPT, "DELRCPT"),
    (SMFIF_CHGHDRS, "CHGHDRS"),
    (SMFIF_QUARANTINE, "QUARANTINE"),
    (SMFIF_CHGFROM, "CHGFROM"),
    (SMFIF_ADDRCPT_PAR, "ADDRCPT_PAR"),
    (SMFIF_SETSYMLIST, "SETSYMLIST"),
];

const PROTOCOL_NAMES: [(u32, &str); 23] = [
    (SMFIP_NOCONNECT, "NOCONNECT"),
    (SMFIP_NOHELO, "NOHELO"),
    (SMFIP_NOMAIL, "NOMAIL"),
    (SMFIP_NORCPT, "NORCPT"),
    (SMFIP_NOBODY, "NOBODY"),
    (SMFIP_NOHDRS, "NOHDRS"),
    (SMFIP_NOEOH, "NOEOH"),
    (SMFIP_NR_HDR, "NR_HDR"),
    (SMFIP_NOUNKNOWN, "NOUNKNOWN"),
    (SMFIP_NODATA, "NODATA"),
    (SMFIP_SKIP, "SKIP"),
    (SMFIP_RCPT_REJ, "RCPT_REJ"),
    (SMFIP_NR_CONN, "NR_CONN"),
    (SMFIP_NR_HELO, "NR_HELO"),
    (SMFIP_NR_MAIL, "NR_MAIL"),
    (SMFIP_NR_RCPT, "NR_RCPT"),
    (SMFIP_NR_DATA, "NR_DATA"),
    (SMFIP_NR_UNKN, "NR_UNKN"),
    (SMFIP_NR_EOH, "NR_EOH"),
    (SMFIP_NR_BODY, "NR_BODY"),
    (SMFIP_HDR_LEADSPC, "HDR_LEADSPC"),
    (SMFIP_MDS_256K, "MDS_256K"),
    (SMFIP_MDS_1M, "MDS_1M"),
];

fn flag_names(bits: u32, table: &[(u32, &str)]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut rest = bits;
    for &(bit, name) in table {
        if bits & bit != 0 {
            out.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("0x{rest:x}"));
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(" ")
    }
}

/// `0x11` → `"ADDHDRS CHGHDRS"`.
pub fn action_names(bits: u32) -> String {
    flag_names(bits, &ACTION_NAMES)
}

/// `0x42` → `"NOHELO NOEOH"`.
pub fn protocol_names(bits: u32) -> String {
    flag_names(bits, &PROTOCOL_NAMES)
}
