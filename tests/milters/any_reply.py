#!/usr/bin/python3
"""A real libmilter-based Milter (pymilter) that gives ANY reply on demand and records what it saw.

The integration tests (tests/real_milters.rs, helpers in tests/support/milters.rs) start one per
behaviour they need, with a JSON spec, and then check two things: the verdict the library built
from this Milter's replies, and what the library sent, as this Milter recorded it.

usage: any_reply.py PORT SPEC.json [--until-stdin-closes]
    listens on 127.0.0.1:PORT; stops on SIGTERM or, with --until-stdin-closes, as soon as its
    standard input reaches end of file: the tests hold a pipe to it, so the Milter goes away
    with the test process however that ends, and at once (libmilter takes seconds to stop on
    SIGTERM after a connection, waiting for its listener's poll timeout).

The spec (every key optional except "record"):

  {
    "record": "/tmp/dir/record.jsonl",
        where to append one JSON line per Milter connection (see RECORDS below)
    "actions": ["ADDHDRS", "CHGHDRS", ...],
        the actions to ask for, each only if the MTA offered it; default: all it offered.
        Names: ADDHDRS CHGBODY ADDRCPT DELRCPT CHGHDRS QUARANTINE CHGFROM ADDRCPT_PAR SETSYMLIST
    "protocol": ["NOHELO", "NR_CONN", "SKIP", ...],
        the protocol bits to ask for (each only if offered); default: ["SKIP"], so that every
        command is sent and answered. Names: NOCONNECT NOHELO NOMAIL NORCPT NOBODY NOHDRS NOEOH
        NR_HDR NOUNKNOWN NODATA SKIP RCPT_REJ NR_CONN NR_HELO NR_MAIL NR_RCPT NR_DATA NR_UNKN
        NR_EOH NR_BODY HDR_LEADSPC
    "symlist": {"connect": ["j", "{client_addr}"], "envfrom": [...], ...},
        macro lists to request per stage (connect helo envfrom envrcpt data eoh eom), sent in
        the OPTNEG reply (smfi_setsymlist); SETSYMLIST is asked for when this is given
    "probe": ["{my_macro}"],
        macro names to look up besides the usual ones (see MACROS below)
    "replies": {STAGE: REPLY, ...},
        the reply per stage, default "continue". STAGE: connect helo envfrom envrcpt data header
        eoh body eom. For envrcpt the value may also be an object choosing by recipient address
        (without angle brackets), for header by field name (case-insensitive), "*" otherwise:
            "envrcpt": {"bob@example.net": "550 5.1.1 no such user", "*": "continue"}
    "edits": [[...], ...]
        modifications sent at end of message, in order, before the eom reply:
            ["addheader", NAME, VALUE]          smfi_addheader (appended)
            ["insheader", INDEX, NAME, VALUE]   smfi_insheader (0 = at the top)
            ["chgheader", NAME, INDEX, VALUE]   smfi_chgheader (INDEX from 1; VALUE "" deletes)
            ["addrcpt", "<ADDR>"]               smfi_addrcpt
            ["addrcpt", "<ADDR>", "ARGS"]       smfi_addrcpt_par
            ["delrcpt", "<ADDR>"]               smfi_delrcpt
            ["chgfrom", "<ADDR>"]               smfi_chgfrom
            ["replacebody", TEXT]               smfi_replacebody
            ["quarantine", REASON]              smfi_quarantine
            ["progress"]                        smfi_progress
    "rendezvous": {"arrive": PATH, "await": PATH, "seconds": N}
        at end of message, before anything else: create the file `arrive`, then wait up to N
        seconds for the file `await` (another Milter's `arrive`). If it does not come, the eom
        reply is "451 4.0.0 any_reply: rendezvous missed". Two Milters that await each other
        this way both answer normally only if their ends of message overlap in time: the proof
        that a client runs them in parallel, with no timing assertion.
  }

A REPLY is one of
  "continue" "accept" "reject" "tempfail" "discard"
  "skip"                          (envrcpt, header and body only; needs SKIP negotiated)
  "550 5.7.1 some text"           smfi_setreply, then reject (5xx) or tempfail (4xx); the enhanced
                                  code is optional; a "%" must be doubled, as libmilter wants
  ["550 5.7.1 line 1", "line 2"]  smfi_setmlreply: the same code on every line
  "quarantine REASON"             (eom only) smfi_quarantine, then continue
A stage whose NR_* bit was negotiated must have "continue": the Milter then sends no reply.

RECORDS: at the end of each connection one line {"events": [EVENT, ...]} is appended to the
record file, each EVENT an object with "event" and, for the callbacks, "reply" (what the script
answered) and "macros" (every macro of MACROS visible at that point, as libmilter's getsymval
sees them: the macros of this stage and of the earlier stages of the same message):
  {"event": "negotiate", "offered_actions": N, "offered_protocol": N, "actions": N, "protocol": N}
  {"event": "connect", "hostname": S, "family": "inet"|"inet6"|"unix"|"unknown",
                       "address": S|null, "port": N|null}
  {"event": "helo", "name": S}
  {"event": "envfrom", "args": [S, ...]}     the first is the address as sent, "<...>"
  {"event": "envrcpt", "args": [S, ...]}
  {"event": "data"}
  {"event": "header", "name": S, "value": S}  exactly as received
  {"event": "eoh"}
  {"event": "body", "bytes": N}               one per BODY chunk
  {"event": "eom", "body_bytes": N, "body": S, "edits": [...]}   body: all body chunks joined
  {"event": "abort"}
  {"event": "close"}
Strings that carry message bytes are written byte for byte as code points 0 to 255 (Latin-1), so
that bytes that are not UTF-8 survive JSON: a test reads each code point back as one byte.
A spec error is reported on stderr and the script exits with status 2 before listening.
"""

import json
import os
import re
import sys
import threading
import time

import Milter
import milter

STAGES = ("connect", "helo", "envfrom", "envrcpt", "data", "header", "eoh", "body", "eom")

ACTIONS = {
    name: getattr(Milter, name)
    for name in ("ADDHDRS", "CHGBODY", "ADDRCPT", "DELRCPT", "CHGHDRS", "QUARANTINE", "CHGFROM",
                 "ADDRCPT_PAR", "SETSYMLIST")
}

PROTOCOL = {
    name: getattr(Milter, "P_" + name)
    for name in ("NOCONNECT", "NOHELO", "NOMAIL", "NORCPT", "NOBODY", "NOHDRS", "NOEOH",
                 "NR_HDR", "NOUNKNOWN", "NODATA", "SKIP", "RCPT_REJ", "NR_CONN", "NR_HELO",
                 "NR_MAIL", "NR_RCPT", "NR_DATA", "NR_UNKN", "NR_EOH", "NR_BODY", "HDR_LEADSPC")
}

# The "no reply" bit of each stage that has one.
NR_BIT = {
    "connect": Milter.P_NR_CONN, "helo": Milter.P_NR_HELO, "envfrom": Milter.P_NR_MAIL,
    "envrcpt": Milter.P_NR_RCPT, "data": Milter.P_NR_DATA, "header": Milter.P_NR_HDR,
    "eoh": Milter.P_NR_EOH, "body": Milter.P_NR_BODY,
}

SYMLIST_STAGE = {
    "connect": Milter.M_CONNECT, "helo": Milter.M_HELO, "envfrom": Milter.M_ENVFROM,
    "envrcpt": Milter.M_ENVRCPT, "data": Milter.M_DATA, "eom": Milter.M_EOM, "eoh": Milter.M_EOH,
}

# Looked up at every stage: what sendmail and Postfix send by default, and what the tests pass.
MACROS = [
    "j", "_", "v", "{daemon_name}", "{daemon_addr}", "{if_name}", "{if_addr}", "{client_addr}",
    "{client_name}", "{client_port}", "{client_ptr}", "{tls_version}", "{cipher}",
    "{cipher_bits}", "{cert_subject}", "{cert_issuer}", "i", "{auth_type}", "{auth_authen}",
    "{auth_ssf}", "{auth_author}", "{mail_mailer}", "{mail_host}", "{mail_addr}",
    "{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}", "{msg_id}",
]

SIMPLE = {
    "continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
    "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD, "skip": Milter.SKIP,
}

REPLY_LINE = re.compile(r"^([45]\d\d)(?: (\d\.\d{1,3}\.\d{1,3}))?(?: (.*))?$", re.S)

SPEC = {}
RECORD_LOCK = threading.Lock()
RECORD_FILE = None


def fail(message):
    sys.stderr.write("any_reply.py: %s\n" % message)
    sys.exit(2)


def text(value):
    """Message bytes (or a str from pymilter) as a JSON-safe string of code points 0-255."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return bytes(value).decode("latin-1")


def check_reply(stage, reply):
    """Fails at start on a reply the stage cannot give."""
    if isinstance(reply, list):
        if not reply or not all(isinstance(line, str) for line in reply):
            fail("%s: a multi-line reply is a non-empty list of strings" % stage)
        if not REPLY_LINE.match(reply[0]):
            fail("%s: %r does not start with a 4xx or 5xx code" % (stage, reply[0]))
        return
    if not isinstance(reply, str):
        fail("%s: a reply is a string or a list of strings, not %r" % (stage, reply))
    if reply.startswith("quarantine "):
        if stage != "eom":
            fail("%s: libmilter allows quarantine only at end of message" % stage)
        return
    if reply == "skip" and stage not in ("envrcpt", "header", "body"):
        fail("%s: SKIP is allowed only for envrcpt, header and body" % stage)
    if reply not in SIMPLE and not REPLY_LINE.match(reply):
        fail("%s: unknown reply %r" % (stage, reply))


def load_spec(path):
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        fail("cannot read the spec %s: %s" % (path, e))
    if not isinstance(spec, dict) or not isinstance(spec.get("record"), str):
        fail("the spec must be an object with a \"record\" file name")
    unknown = set(spec) - {"record", "actions", "protocol", "symlist", "probe", "replies", "edits",
                           "rendezvous"}
    if unknown:
        fail("unknown spec keys: %s" % ", ".join(sorted(unknown)))
    for name in spec.get("actions", []):
        if name not in ACTIONS:
            fail("unknown action %r" % name)
    for name in spec.get("protocol", []):
        if name not in PROTOCOL:
            fail("unknown protocol bit %r" % name)
    for stage in spec.get("symlist", {}):
        if stage not in SYMLIST_STAGE:
            fail("no macro list for stage %r" % stage)
    for stage, reply in spec.get("replies", {}).items():
        if stage not in STAGES:
            fail("unknown stage %r" % stage)
        if isinstance(reply, dict):
            if stage not in ("envrcpt", "header"):
                fail("%s: only envrcpt and header replies can be chosen by key" % stage)
            for r in reply.values():
                check_reply(stage, r)
        else:
            check_reply(stage, reply)
        nr = NR_BIT.get(stage)
        wanted = [PROTOCOL[n] for n in spec.get("protocol", [])]
        if nr in wanted and reply != "continue":
            fail("%s: NR_* negotiated, so the only reply is continue" % stage)
    meet = spec.get("rendezvous")
    if meet is not None and (not isinstance(meet, dict) or set(meet) != {"arrive", "await", "seconds"}):
        fail("rendezvous: an object with arrive, await and seconds")
    for edit in spec.get("edits", []):
        if not isinstance(edit, list) or not edit or edit[0] not in (
                "addheader", "insheader", "chgheader", "addrcpt", "delrcpt", "chgfrom",
                "replacebody", "quarantine", "progress"):
            fail("unknown edit %r" % (edit,))
    return spec


class AnyReply(Milter.Base):
    """One Milter connection: answers as the spec says and records what it saw."""

    def __init__(self):
        self.events = []
        self.body_chunks = []

    # -- helpers ---------------------------------------------------------------------------

    def macros(self):
        names = MACROS + [n for n in SPEC.get("probe", []) if n not in MACROS]
        for names_at_stage in SPEC.get("symlist", {}).values():
            names += [n for n in names_at_stage if n not in names]
        seen = {}
        for name in names:
            value = self.getsymval(name)
            if value is not None:
                seen[name] = text(value)
        return seen

    def reply_for(self, stage, key=None):
        reply = SPEC.get("replies", {}).get(stage, "continue")
        if isinstance(reply, dict):
            if stage == "header":
                lowered = {k.lower(): v for k, v in reply.items()}
                reply = lowered.get((key or "").lower(), lowered.get("*", "continue"))
            else:
                reply = reply.get(key, reply.get("*", "continue"))
        return reply

    def answer(self, stage, event, key=None):
        """Records `event` with the reply for `stage` and returns that reply's code."""
        reply = self.reply_for(stage, key)
        event["reply"] = reply
        self.events.append(event)
        nr = NR_BIT.get(stage)
        if nr is not None and self._protocol & nr:
            return Milter.NOREPLY
        if isinstance(reply, list):
            return self.set_reply(reply[0], reply[1:])
        if reply.startswith("quarantine "):
            self.quarantine(reply[len("quarantine "):])
            return Milter.CONTINUE
        if reply in SIMPLE:
            return SIMPLE[reply]
        return self.set_reply(reply, [])

    def set_reply(self, first, more):
        m = REPLY_LINE.match(first)
        code, xcode, msg = m.group(1), m.group(2), m.group(3) or ""
        self.setreply(code, xcode, msg, *more)
        return Milter.REJECT if code[0] == "5" else Milter.TEMPFAIL

    # -- callbacks -------------------------------------------------------------------------

    def negotiate(self, opts):
        offered_actions, offered_protocol = opts[0], opts[1]
        if "actions" in SPEC:
            actions = 0
            for name in SPEC["actions"]:
                actions |= ACTIONS[name]
        else:
            actions = offered_actions
        if SPEC.get("symlist"):
            actions |= Milter.SETSYMLIST
        actions &= offered_actions
        protocol = 0
        for name in SPEC.get("protocol", ["SKIP"]):
            protocol |= PROTOCOL[name]
        protocol &= offered_protocol
        self._actions = actions
        self._protocol = protocol
        for stage, names in SPEC.get("symlist", {}).items():
            # Past pymilter's own five-name check: libmilter takes any list.
            self._ctx.setsymlist(SYMLIST_STAGE[stage], " ".join(names))
        opts[0], opts[1], opts[2], opts[3] = actions, protocol, 0, 0
        self.events.append({
            "event": "negotiate", "offered_actions": offered_actions,
            "offered_protocol": offered_protocol, "actions": actions, "protocol": protocol,
        })
        return Milter.CONTINUE

    def connect(self, hostname, family, hostaddr):
        names = {1: "unix", 2: "inet", 10: "inet6"}
        address = port = None
        if isinstance(hostaddr, tuple):
            address, port = hostaddr[0], hostaddr[1]
        elif isinstance(hostaddr, str):
            address = hostaddr
        event = {
            "event": "connect", "hostname": text(hostname),
            "family": names.get(family, "unknown") if hostaddr is not None else "unknown",
            "address": address, "port": port, "macros": self.macros(),
        }
        return self.answer("connect", event)

    def hello(self, hostname):
        return self.answer("helo", {"event": "helo", "name": text(hostname),
                                    "macros": self.macros()})

    def envfrom_bytes(self, *args):
        # A new message on this connection starts from nothing.
        self.body_chunks = []
        return self.answer("envfrom", {"event": "envfrom", "args": [text(a) for a in args],
                                       "macros": self.macros()})

    def envrcpt_bytes(self, *args):
        address = text(args[0]) if args else ""
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1]
        return self.answer("envrcpt", {"event": "envrcpt", "args": [text(a) for a in args],
                                       "macros": self.macros()}, address)

    def data(self):
        return self.answer("data", {"event": "data", "macros": self.macros()})

    def header_bytes(self, name, value):
        return self.answer("header", {"event": "header", "name": text(name),
                                      "value": text(value)}, text(name))

    def eoh(self):
        return self.answer("eoh", {"event": "eoh", "macros": self.macros()})

    def body(self, chunk):
        self.body_chunks.append(bytes(chunk))
        return self.answer("body", {"event": "body", "bytes": len(chunk)})

    def rendezvous(self):
        """True when the other Milter arrived (see "rendezvous" in the docstring)."""
        meet = SPEC["rendezvous"]
        with open(meet["arrive"], "w"):
            pass
        for _ in range(int(meet["seconds"] * 20)):
            if os.path.exists(meet["await"]):
                return True
            time.sleep(0.05)
        return os.path.exists(meet["await"])

    def eom(self):
        if "rendezvous" in SPEC and not self.rendezvous():
            self.events.append({"event": "eom", "rendezvous": False})
            self.setreply("451", "4.0.0", "any_reply: rendezvous missed")
            return Milter.TEMPFAIL
        body = b"".join(self.body_chunks)
        edits = SPEC.get("edits", [])
        event = {"event": "eom", "body_bytes": len(body), "body": text(body), "edits": edits,
                 "macros": self.macros()}
        for edit in edits:
            kind, args = edit[0], edit[1:]
            if kind == "addheader":
                self.addheader(args[0], args[1])
            elif kind == "insheader":
                self.addheader(args[1], args[2], args[0])
            elif kind == "chgheader":
                self.chgheader(args[0], args[1], args[2])
            elif kind == "addrcpt":
                self.addrcpt(args[0], args[1] if len(args) > 1 else None)
            elif kind == "delrcpt":
                self.delrcpt(args[0])
            elif kind == "chgfrom":
                self.chgfrom(args[0])
            elif kind == "replacebody":
                self.replacebody(args[0].encode("latin-1"))
            elif kind == "quarantine":
                self.quarantine(args[0])
            elif kind == "progress":
                self.progress()
        return self.answer("eom", event)

    def abort(self):
        self.events.append({"event": "abort"})
        return Milter.CONTINUE

    def close(self):
        self.events.append({"event": "close"})
        line = json.dumps({"events": self.events}, ensure_ascii=True)
        with RECORD_LOCK:
            RECORD_FILE.write(line + "\n")
            RECORD_FILE.flush()
        return Milter.CONTINUE


def main():
    global SPEC, RECORD_FILE
    args = sys.argv[1:]
    lifeline = "--until-stdin-closes" in args
    args = [a for a in args if a != "--until-stdin-closes"]
    if len(args) != 2 or not args[0].isdigit():
        sys.stderr.write("usage: any_reply.py PORT SPEC.json [--until-stdin-closes]\n")
        return 2
    SPEC = load_spec(args[1])
    RECORD_FILE = open(SPEC["record"], "a", encoding="ascii")
    Milter.factory = AnyReply
    milter.setbacklog(64)
    if lifeline:
        def wait_for_eof():
            sys.stdin.buffer.read()
            # Every record is already flushed: leave without waiting for libmilter.
            os._exit(0)
        threading.Thread(target=wait_for_eof, daemon=True).start()
    Milter.runmilter("anyreply", "inet:%s@127.0.0.1" % args[0], timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
