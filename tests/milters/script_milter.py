#!/usr/bin/python3
"""script_milter.py: a pymilter Milter (on sendmail's libmilter) that answers each message as a
script carried by the message itself says, so that one process serves any number of different
scripted conversations (tests/per_recipient.rs runs hundreds through one).

    script_milter.py PORT [--until-stdin-closes]

Listens on 127.0.0.1:PORT. With --until-stdin-closes it exits as soon as its stdin reaches EOF
(the test holds the other end of a pipe).

THE SCRIPT travels in the SMTP client's host name (the CONNECT host name, SMFIC_CONNECT), the
only place the Milter sees before its first reply: "script-" followed by the hex of a JSON object

  {
    "connect": REPLY, "helo": REPLY, "envfrom": REPLY,
    "envrcpt": {"ADDRESS": REPLY, ...},   a recipient not named: continue
    "data": REPLY,
    "header": REPLY,                      the reply to the first header field (then continue)
    "eoh": REPLY,
    "body": REPLY,                        the reply to the first body chunk (then continue)
    "eom": REPLY,
    "edits": [EDIT, ...]                  made at end of message, before its reply
  }

Every key is optional; a missing one is "continue". A REPLY is one of
  "continue" "accept" "reject" "tempfail" "discard"
  "550 5.7.1 some text"   smfi_setreply, then reject (5xx) or tempfail (4xx); no "%" in the
                          text (libmilter would want it doubled, and then sends it doubled)
An EDIT is one of
  ["addheader", NAME, VALUE]   ["chgheader", NAME, INDEX, VALUE]
  ["addrcpt", ADDRESS]         ["delrcpt", ADDRESS]

A host name that is not such a script is answered at CONNECT with
"451 4.0.0 script_milter: no script" and a line on stderr, so a broken test shows, never passes.
Every action is asked for in negotiation; no protocol step is skipped and every step is answered.
"""

import binascii
import json
import os
import re
import sys
import threading

import Milter
import milter

SIMPLE = {
    "continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
    "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD,
}

REPLY_LINE = re.compile(r"^([45]\d\d) (\d\.\d{1,3}\.\d{1,3}) (.+)$")

WANTED_ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT


def parse_script(hostname):
    """The script in a CONNECT host name, or None."""
    if not hostname.startswith("script-"):
        return None
    try:
        script = json.loads(binascii.unhexlify(hostname[len("script-"):]).decode("utf-8"))
    except (ValueError, binascii.Error):
        return None
    return script if isinstance(script, dict) else None


class ScriptMilter(Milter.Base):
    """One connection: its script comes with CONNECT and holds for the connection."""

    def __init__(self):
        self.script = {}
        self.headers_seen = 0
        self.body_seen = 0

    def reply(self, value):
        """The code for a REPLY, after setting the reply text of a REPLYCODE."""
        if value in SIMPLE:
            return SIMPLE[value]
        m = REPLY_LINE.match(value or "")
        if not m:
            sys.stderr.write("script_milter.py: unknown reply %r\n" % (value,))
            self.setreply("451", "4.0.0", "script_milter: unknown reply")
            return Milter.TEMPFAIL
        self.setreply(m.group(1), m.group(2), m.group(3))
        return Milter.REJECT if m.group(1)[0] == "5" else Milter.TEMPFAIL

    def at(self, stage):
        return self.reply(self.script.get(stage, "continue"))

    def negotiate(self, opts):
        self._actions = opts[0] & WANTED_ACTIONS
        self._protocol = 0
        opts[0], opts[1], opts[2], opts[3] = self._actions, 0, 0, 0
        return Milter.CONTINUE

    def connect(self, hostname, family, hostaddr):
        script = parse_script(hostname or "")
        if script is None:
            sys.stderr.write("script_milter.py: no script in host name %r\n" % (hostname,))
            self.setreply("451", "4.0.0", "script_milter: no script")
            return Milter.TEMPFAIL
        self.script = script
        return self.at("connect")

    def hello(self, hostname):
        return self.at("helo")

    def envfrom(self, *args):
        self.headers_seen = 0
        self.body_seen = 0
        return self.at("envfrom")

    def envrcpt(self, to, *args):
        address = to[1:-1] if to.startswith("<") and to.endswith(">") else to
        return self.reply(self.script.get("envrcpt", {}).get(address, "continue"))

    def data(self):
        return self.at("data")

    def header(self, name, value):
        self.headers_seen += 1
        return self.at("header") if self.headers_seen == 1 else Milter.CONTINUE

    def eoh(self):
        return self.at("eoh")

    def body(self, chunk):
        self.body_seen += 1
        return self.at("body") if self.body_seen == 1 else Milter.CONTINUE

    def eom(self):
        for edit in self.script.get("edits", []):
            kind, args = edit[0], edit[1:]
            if kind == "addheader":
                self.addheader(args[0], args[1])
            elif kind == "chgheader":
                self.chgheader(args[0], args[1], args[2])
            elif kind == "addrcpt":
                self.addrcpt("<%s>" % args[0])
            elif kind == "delrcpt":
                self.delrcpt("<%s>" % args[0])
            else:
                sys.stderr.write("script_milter.py: unknown edit %r\n" % (edit,))
        return self.at("eom")


def main():
    args = sys.argv[1:]
    lifeline = "--until-stdin-closes" in args
    args = [a for a in args if a != "--until-stdin-closes"]
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: script_milter.py PORT [--until-stdin-closes]\n")
        return 2
    Milter.factory = ScriptMilter
    milter.setbacklog(64)
    if lifeline:
        def wait_for_eof():
            sys.stdin.buffer.read()
            os._exit(0)
        threading.Thread(target=wait_for_eof, daemon=True).start()
    Milter.runmilter("scriptmilter", "inet:%s@127.0.0.1" % args[0], timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
