"""What the simulator saw on the wire: datagram summaries, outer records, hello rewrites.

``describe_datagram`` is the one-line form every simulator log line uses (it never
raises, whatever the bytes).  :class:`Wire` is one datagram offered to a link with
its address (the source for client-to-server, the destination for
server-to-client); ``outer_records`` parses a list of them into the content type,
epoch and first handshake message type of each record, so tests can assert which
record types crossed the path (e.g. that a roaming client sent no ClientHello).
``rewrite_handshake`` is an on-path attacker's edit of a plaintext hello, for a
``SimLink.tamper``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dtlsvpn.errors import DecodeError
from dtlsvpn.wire.constants import ContentType
from dtlsvpn.wire.handshake import (
    HandshakeFragment,
    encode_handshake_fragment,
    parse_handshake_fragments,
)
from dtlsvpn.wire.record import encode_record, parse_datagram

Address = tuple[str, int]

CT_HANDSHAKE = int(ContentType.handshake)

_HDR = struct.Struct("!BHQH")
_TYPE_TAG = {20: "CCS", 21: "ALERT", 22: "HS", 23: "APP", 24: "HB", 25: "CID"}


@dataclass(slots=True)
class Wire:
    """One datagram offered to a link: source (c2s) or destination (s2c) address."""

    time: float
    direction: str
    addr: Address
    data: bytes
    fate: str
    note: str = ""


@dataclass(slots=True)
class OuterRecord:
    ctype: int
    epoch: int
    msg_type: int | None  # epoch-0 handshake records: the first message's type


def describe_datagram(data: bytes) -> str:
    """A one-line summary of the records in a datagram, tolerant of garbage."""
    parts: list[str] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HDR.size:
            parts.append(f"garbage({len(data) - pos})")
            break
        ctype, _version, es, length = _HDR.unpack_from(data, pos)
        tag = _TYPE_TAG.get(ctype, f"T{ctype}")
        epoch, seq = es >> 48, es & (2**48 - 1)
        extra = ""
        body = data[pos + _HDR.size:pos + _HDR.size + length]
        if ctype == 22 and epoch == 0 and len(body) >= 12:
            msg_type = body[0]
            mseq = int.from_bytes(body[4:6], "big")
            off = int.from_bytes(body[6:9], "big")
            flen = int.from_bytes(body[9:12], "big")
            extra = f":m{msg_type}#{mseq}@{off}+{flen}"
        parts.append(f"{tag}{extra} e{epoch}s{seq} {length}B")
        pos += _HDR.size + length
        if pos > len(data):
            parts[-1] += " (past end)"
    return "[" + ", ".join(parts) + "]"


def outer_records(wire: Iterable[Wire], direction: str, cid_length: int,
                  since: float = 0.0) -> list[tuple[Wire, OuterRecord]]:
    """The outer records of the datagrams offered to one link since ``since``.

    ``cid_length`` is the CID length the receiving side asked for (the length of
    the CID in that direction's ``tls12_cid`` headers).
    """
    out = []
    for w in wire:
        if w.direction != direction or w.time < since:
            continue
        recs, _ = parse_datagram(w.data, cid_length)
        for r in recs:
            msg = (r.fragment[0] if r.content_type == CT_HANDSHAKE and r.epoch == 0
                   and r.fragment else None)
            out.append((w, OuterRecord(r.content_type, r.epoch, msg)))
    return out


def rewrite_handshake(data: bytes, msg_type: int, edit: Callable[[bytes], bytes]) -> bytes:
    """``data`` with every whole epoch-0 handshake message of ``msg_type`` replaced by
    ``edit(body)`` (lengths fixed up, record sequence numbers kept).

    An on-path attacker's rewrite of a plaintext hello, for a ``SimLink.tamper``.
    Anything else, including a datagram that does not parse, passes unchanged.
    """
    records, garbage = parse_datagram(data)
    if garbage:
        return data
    out = bytearray()
    for rec in records:
        fragment = rec.fragment
        if rec.content_type == ContentType.handshake and rec.epoch == 0:
            try:
                frags = parse_handshake_fragments(fragment)
            except DecodeError:
                frags = []
            if any(f.msg_type == msg_type and f.is_whole for f in frags):
                parts = []
                for f in frags:
                    if f.msg_type == msg_type and f.is_whole:
                        body = edit(f.body)
                        f = HandshakeFragment(f.msg_type, len(body), f.message_seq, 0, body)
                    parts.append(encode_handshake_fragment(f))
                fragment = b"".join(parts)
        out += encode_record(rec.content_type, rec.epoch, rec.seq, fragment, version=rec.version)
    return bytes(out)
