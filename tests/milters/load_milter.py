#!/usr/bin/python3
"""A real libmilter-based Milter (pymilter) for the load test and the C abuse/memcheck runs.

Its verdict is a pure function of the message, so that a client can check that every message got
ITS verdict and not a neighbour's: the Subject ends in a number N, and at end of message

    N mod 4 == 0  continue, adding "X-Load-Id: N" and "X-Body-Bytes: <body octets received>"
    N mod 4 == 1  reject with "550 5.7.1 rejected load message N"
    N mod 4 == 2  tempfail with "451 4.7.1 deferred load message N"
    N mod 4 == 3  discard

A message without a numbered Subject gets a plain continue with no edits.

usage: load_milter.py PORT [--with-connect]
    Listens on 127.0.0.1:PORT; stops on SIGTERM. With --with-connect it also takes CONNECT
    (pymilter otherwise negotiates NOCONNECT), as a Milter must for connection reuse.
"""

import re
import sys

import Milter
import milter

NUMBER = re.compile(r"(\d+)\s*$")


class LoadMilter(Milter.Base):
    def __init__(self):
        self.number = None
        self.body_bytes = 0

    def envfrom(self, mailfrom, *args):
        # A new message on this connection starts from nothing.
        self.number = None
        self.body_bytes = 0
        return Milter.CONTINUE

    def header(self, name, value):
        if name.lower() == "subject":
            m = NUMBER.search(value)
            self.number = int(m.group(1)) if m else None
        return Milter.CONTINUE

    def body(self, chunk):
        self.body_bytes += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        n = self.number
        if n is None:
            return Milter.CONTINUE
        kind = n % 4
        if kind == 0:
            self.addheader("X-Load-Id", str(n))
            self.addheader("X-Body-Bytes", str(self.body_bytes))
            return Milter.CONTINUE
        if kind == 1:
            self.setreply("550", "5.7.1", "rejected load message %d" % n)
            return Milter.REJECT
        if kind == 2:
            self.setreply("451", "4.7.1", "deferred load message %d" % n)
            return Milter.TEMPFAIL
        return Milter.DISCARD


class ConnectingLoadMilter(LoadMilter):
    """The same verdicts, with a connect callback, so that CONNECT is negotiated."""

    def connect(self, hostname, family, hostaddr):
        self.client = hostname
        return Milter.CONTINUE


def main():
    args = sys.argv[1:]
    with_connect = "--with-connect" in args
    args = [a for a in args if a != "--with-connect"]
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: load_milter.py PORT [--with-connect]\n")
        return 2
    Milter.factory = ConnectingLoadMilter if with_connect else LoadMilter
    Milter.set_flags(Milter.ADDHDRS)
    # 64 client threads connect at once: libmilter's default backlog would drop SYNs and cost
    # each dropped client a one-second retransmission.
    milter.setbacklog(512)
    Milter.runmilter("load", "inet:%s@127.0.0.1" % args[0], timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
