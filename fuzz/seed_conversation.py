#!/usr/bin/python3
"""Writes the seed corpus of the conversation fuzz target (fuzz/corpus/conversation/seed-*):
whole, valid conversations in the input layout that fuzz/conversation.rs reads, so that the
fuzzer starts from Milters that get to the end of a message and mutates from there.

    python3 fuzz/seed_conversation.py fuzz/corpus/conversation
"""

import struct
import sys
from pathlib import Path

# Protocol bits (SMFIP_*) and actions (SMFIF_*), as in src/protocol/consts.rs.
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = 1, 2, 4, 8, 0x10, 0x20, 0x40
NR_HDR, SKIP, NR_CONN, NR_RCPT, NR_BODY, LEADSPC = 0x80, 0x400, 0x1000, 0x8000, 0x80000, 0x100000
ALL_ACTIONS = 0x1FF

MESSAGE = (b"Received: from mx.example.net\r\n\tby mta.example.org\r\n"
           b"From: Alice <alice@example.net>\r\nSubject:  hello\r\n\r\n"
           b"line one\r\nline two\nbare LF above\r\n")
HEADERS = 3
# CRLF text throughout: a long body of it is spliced into the write as it is.
CRLF_MESSAGE = b"Subject: long\r\n\r\n" + b"0123456789abcdef" * 3 + b"\r\n"


def packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def optneg(version=6, actions=ALL_ACTIONS, protocol=0, macros=()):
    data = struct.pack(">III", version, actions, protocol)
    for stage, names in macros:
        data += struct.pack(">I", stage) + names + b"\0"
    return packet(b"O", data)


C = packet(b"c")


def conversation(neg, recipients=1, headers=HEADERS, bodies=1, eom=(), final=C, helo=True,
                 data=True):
    """OPTNEG, then CONTINUE for every stage a version 6 Milter that asked for everything
    answers, then the end-of-message packets."""
    replies = [neg, C]  # OPTNEG, CONNECT
    if helo:
        replies.append(C)
    replies += [C] * (1 + recipients)  # MAIL, RCPT each
    if data:
        replies.append(C)  # DATA (version 4 on)
    replies += [C] * headers + [C]  # HEADER each, EOH
    replies += [C] * bodies
    replies += list(eom) + [final]
    return b"".join(replies)


def seed(f0=0, f1=0, f2=0, message=MESSAGE, plan=b"", first=b"", second=b""):
    return (bytes([f0, f1, f2]) + struct.pack(">H", len(message)) + message
            + bytes([len(plan)]) + plan + struct.pack(">H", len(first)) + first + second)


EDITS = [
    packet(b"h", b"X-Spam-Score\0 5.1\0"),
    packet(b"i", struct.pack(">I", 1) + b"X-First\0top\0"),
    packet(b"m", struct.pack(">I", 1) + b"Subject\0[SPAM] hello\0"),
    packet(b"m", struct.pack(">I", 1) + b"Received\0\0"),
    packet(b"+", b"<copy@example.org>\0"),
    packet(b"-", b"<rcpt@example.org>\0"),
    packet(b"2", b"<other@example.org>\0NOTIFY=NEVER\0"),
    packet(b"p"),
    packet(b"b", b"new body\r\n"),
    packet(b"e", b"<bounce@example.org>\0"),
]

SEEDS = {
    "plain": seed(first=conversation(optneg())),
    "edits": seed(first=conversation(optneg(), eom=EDITS)),
    "edits-legacy-no-context": seed(f0=3, first=conversation(optneg(), eom=EDITS)),
    "quarantine": seed(first=conversation(optneg(), eom=[packet(b"q", b"looks bad\0")])),
    "reject-rcpt": seed(f1=4, first=b"".join(
        [optneg(), C, C, C, packet(b"y", b"550 5.1.1 no such user\0"), C, C]
        + [C] * HEADERS + [C, C, C])),
    "tempfail-mail": seed(first=b"".join([optneg(), C, C, packet(b"t")])),
    "reject-eom-replycode": seed(first=conversation(
        optneg(), final=packet(b"y", b"554 5.7.1 spam%% detected\0"))),
    "discard": seed(first=conversation(optneg(), final=packet(b"d"))),
    "accept-connect": seed(first=optneg() + packet(b"a")),
    "shutdown": seed(first=optneg() + C + packet(b"4")),
    "version2": seed(f1=1, first=conversation(optneg(version=2, actions=0x3F), data=False)),
    "version4-callback": seed(f0=4, f1=3, first=conversation(optneg(version=4, actions=0x3F))),
    "only-eom-nr": seed(first=optneg(protocol=NOCONNECT | NOHELO | NOMAIL | NORCPT | NOHDRS
                                     | NOEOH | NOBODY | 0x200) + packet(b"h", b"X-A\0b\0") + C),
    "no-reply-steps": seed(first=optneg(protocol=NR_CONN | NR_RCPT | NR_HDR | NR_BODY)
                           + C * 5),
    "skip-headers-leadspc": seed(first=b"".join(
        [optneg(protocol=SKIP | LEADSPC), C, C, C, C, C, packet(b"s"), C, C, C])),
    "macros": seed(f1=0x10, first=conversation(optneg(macros=[
        (0, b"j {client_addr} _"), (2, b"{mail_addr} i"), (3, b"{rcpt_addr} {rcpt_host}"),
        (5, b"i {msg_id}")]))),
    "many-macros-no-client": seed(f1=0x30 | 0xC0, f2=5, first=conversation(optneg())),
    "long-body": seed(f2=64, first=conversation(optneg(), bodies=3)),
    "long-body-callback": seed(f0=4, f2=64, first=conversation(optneg(), bodies=3)),
    "long-crlf-body": seed(f2=64, message=CRLF_MESSAGE,
                           first=conversation(optneg(), headers=1, bodies=3)),
    "short-io": seed(plan=bytes([4 | 8 * k for k in range(20)] + [2, 4]),
                     first=conversation(optneg())),
    "callback-short-io": seed(f0=4, plan=bytes([4 | 8 * (k % 7) for k in range(30)]),
                              first=conversation(optneg())),
    "transcript-debug3": seed(f0=8 | 0xC0, first=conversation(optneg(), eom=EDITS)),
    "reused-connection": seed(f0=16 | 32, first=conversation(optneg()),
                              second=conversation(optneg())[len(optneg()):]),
    "reused-connection-proved": seed(f0=16 | 32, f2=128, first=conversation(optneg()),
                                     second=conversation(optneg())),
    "remembered-negotiation": seed(f0=32, first=conversation(optneg()),
                                   second=conversation(optneg())),
    "changed-negotiation": seed(f0=32, first=conversation(optneg()),
                                second=conversation(optneg(protocol=NOHELO), helo=False)),
    "changed-negotiation-callback": seed(f0=4 | 32, first=conversation(optneg()),
                                         second=conversation(optneg(protocol=NOHDRS),
                                                             headers=0)),
}


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/conversation")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        (out / f"seed-{name}").write_bytes(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
