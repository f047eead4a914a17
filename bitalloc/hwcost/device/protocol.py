"""The host side of the measurement firmware's line protocol (docs/mcu-protocol.md), version 1.

Framing: every line is `BODY*CCCCCCCC\\n`; CCCCCCCC is zlib's CRC-32 of BODY in hex; BODY is a
command word and space-separated key=value fields. Lines that do not parse or whose CRC does
not match are garbage: counted and skipped (a board may print other text; a corrupted line is
recovered by the retry). Every host request carries a fresh `seq`; the board answers with the
same seq:

    host → board                          board → host
    HELLO seq=N                           HELLO seq=N proto= fw= board= core= clock_hz= timer= ...
    RUN seq=N id= op= <shape> wbits= ...  ACK seq=N   then   RES seq=N id= status= cycles= n= sum= ...
    RESET seq=N                           ACK seq=N   then the board resets (HELLO boot=1)

A HELLO without seq (`boot=1`) is unsolicited: the board has (re)started. `Link` resends a
request when no ACK comes within `ack_timeout` s, when the RES does not come within `timeout`
s, on a NAK, and after a board reset; the board answers a repeated seq with its cached RES
(no rerun). After `retries` resends it gives up (LinkError)."""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

from bitalloc.errors import BitallocError

PROTO_VERSION = 1


class LinkError(BitallocError):
    """The board does not answer (after the retries), or answers something incompatible."""


class BoardReset(Exception):
    """An unsolicited HELLO arrived: the board restarted. `hello` holds its fields."""

    def __init__(self, hello: dict):
        super().__init__("board reset")
        self.hello = hello


def encode(cmd: str, fields: dict) -> bytes:
    body = " ".join([cmd] + [f"{k}={v}" for k, v in fields.items()])
    if any(c in body for c in "*\n\r"):
        raise ValueError(f"protocol field text may not contain '*' or newlines: {body!r}")
    return f"{body}*{zlib.crc32(body.encode()) & 0xFFFFFFFF:08x}\n".encode()


def decode(line: bytes) -> tuple[str, dict] | None:
    """(command, fields) of one line without its newline, or None for garbage (no or a wrong
    CRC, not ASCII, malformed fields)."""
    try:
        text = line.decode("ascii").rstrip("\r")
    except UnicodeDecodeError:
        return None
    body, star, crc = text.rpartition("*")
    if not star or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body.encode()) & 0xFFFFFFFF:
            return None
    except ValueError:
        return None
    words = body.split()
    if not words:
        return None
    fields = {}
    for w in words[1:]:
        k, eq, v = w.partition("=")
        if not eq or not k:
            return None
        fields[k] = v
    return words[0], fields


@dataclass
class LinkStats:
    garbage: int = 0      # lines that did not parse or failed the CRC
    retries: int = 0      # requests sent again
    naks: int = 0         # NAKs from the board (it received a corrupted line)
    resets: int = 0       # unsolicited HELLOs (board restarts) seen
    stale: int = 0        # well-formed answers to an older seq
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        return f"garbage={self.garbage} retries={self.retries} naks={self.naks} resets={self.resets} stale={self.stale}"


class Link:
    """Requests and answers over a byte stream `port` with pyserial's interface (`write`,
    `read(n)` returning b'' after its read timeout, `in_waiting`, `close`)."""

    def __init__(self, port, ack_timeout: float = 2.0, timeout: float = 60.0, retries: int = 3, clock=time.monotonic):
        self.port, self.ack_timeout, self.timeout, self.retries = port, ack_timeout, timeout, retries
        self.clock = clock
        self.stats = LinkStats()
        self.seq = 0
        self._buf = b""

    # ---- lines ----------------------------------------------------------------------------
    def send(self, cmd: str, fields: dict) -> None:
        self.port.write(encode(cmd, fields))
        if hasattr(self.port, "flush"):
            self.port.flush()

    def read_line(self, deadline: float) -> tuple[str, dict] | None:
        """The next well-formed line, or None at the deadline; garbage is counted and skipped."""
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = decode(line)
                if msg is None:
                    self.stats.garbage += 1
                    continue
                return msg
            if self.clock() >= deadline:
                return None
            chunk = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 0))
            if chunk:
                self._buf += chunk
                if len(self._buf) > 1 << 16 and b"\n" not in self._buf:  # a stream without newlines
                    self._buf = b""
                    self.stats.garbage += 1

    def _wait(self, seq: int, want: str, timeout: float) -> dict | str:
        """Fields of the `want` line for `seq`; 'nak' or 'timeout'; raises BoardReset."""
        deadline = self.clock() + timeout
        while True:
            msg = self.read_line(deadline)
            if msg is None:
                return "timeout"
            cmd, f = msg
            if cmd == "HELLO" and "seq" not in f:
                self.stats.resets += 1
                raise BoardReset(f)
            if cmd == "NAK" and f.get("seq") in ("0", str(seq)):
                self.stats.naks += 1
                return "nak"
            if f.get("seq") != str(seq):
                self.stats.stale += 1
                continue
            if cmd == want:
                return f
            if cmd in ("ACK", "NAK", "RES", "HELLO"):
                self.stats.stale += 1
            else:
                self.stats.garbage += 1

    def request(self, cmd: str, fields: dict, reply: str, acked: bool = True, on_reset=None) -> dict:
        """Send `cmd` and return the fields of its `reply` line (RES, HELLO). With `acked`, the
        board first answers ACK (within ack_timeout), then the reply (within timeout). A
        board reset calls `on_reset(hello)` (which may raise) and resends."""
        self.seq += 1
        seq = self.seq
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.send(cmd, {"seq": seq, **fields})
            try:
                if acked:
                    got = self._wait(seq, "ACK", self.ack_timeout)
                    if not isinstance(got, dict):
                        why = f"no ACK ({got})"
                        continue
                got = self._wait(seq, reply, self.timeout if acked else self.ack_timeout)
                if isinstance(got, dict):
                    return got
                why = f"no {reply} ({got})"
            except BoardReset as r:
                why = "the board reset"
                if on_reset is not None:
                    on_reset(r.hello)
        raise LinkError(f"board: {cmd} {fields.get('id', '')} got no answer after {self.retries + 1} tries "
                        f"(last: {why}; link {self.stats.text()})")

    def close(self) -> None:
        self.port.close()
