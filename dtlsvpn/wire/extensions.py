"""Hello extensions: the generic block codec and typed helpers for extension data.

The block (RFC 5246 §7.4.1.2, §7.4.1.4)::

    Extension extensions<0..2^16-1>;   /* optional in both hellos */
    struct { ExtensionType extension_type; opaque extension_data<0..2^16-1>; } Extension;

Invariants:

* ``pull_extensions`` returns ``()`` when the block is absent (the reader is at
  the end of the hello), checks that the declared block length is consumed
  exactly, and raises :class:`DecodeError` on a repeated type (RFC 5246
  §7.4.1.4: "There MUST NOT be more than one extension of the same type").
* Unknown extensions are kept as ``Extension(type, data)``; interpreting them is
  the handshake's business.
* Every ``decode_<name>(data)`` helper validates the whole ``extension_data``
  (lengths, parity, no trailing bytes) and raises only :class:`DecodeError`;
  semantic checks (an unknown heartbeat mode is illegal_parameter, RFC 6520 §2)
  are left to the handshake.  ``encode_<name>`` is the inverse.

Helpers: supported_groups and ec_point_formats (RFC 8422 §5.1), signature_algorithms
(RFC 5246 §7.4.1.4.1), heartbeat (RFC 6520 §2), extended_master_secret (RFC 7627
§5.1), session_ticket (RFC 5077 §3.2), connection_id (RFC 9146 §3) and
renegotiation_info (RFC 5746 §3.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dtlsvpn.errors import DecodeError, UsageError
from dtlsvpn.wire.buffer import Reader, Writer

__all__ = [
    "Extension",
    "decode_connection_id",
    "decode_ec_point_formats",
    "decode_extended_master_secret",
    "decode_heartbeat",
    "decode_renegotiation_info",
    "decode_session_ticket",
    "decode_signature_algorithms",
    "decode_supported_groups",
    "encode_connection_id",
    "encode_ec_point_formats",
    "encode_extended_master_secret",
    "encode_extensions",
    "encode_heartbeat",
    "encode_renegotiation_info",
    "encode_session_ticket",
    "encode_signature_algorithms",
    "encode_supported_groups",
    "find_extension",
    "pull_extensions",
    "push_extensions",
]


@dataclass(frozen=True, slots=True)
class Extension:
    """One hello extension, as received: its type code and raw ``extension_data``."""

    type: int
    data: bytes


# --- the extensions block ---------------------------------------------------------


def pull_extensions(r: Reader) -> tuple[Extension, ...]:
    """Read the optional extensions block that ends a hello.

    An absent block (nothing left to read) gives ``()``; a present one must be
    consumed exactly by whole extensions, each type at most once.
    """
    if r.eof():
        # RFC 5246 §7.4.1.2: "the presence of extensions can be detected by
        # determining whether there are bytes following the compression_methods".
        return ()
    exts: list[Extension] = []
    seen: set[int] = set()
    with r.block(2):
        while not r.eof():
            ext_type = r.pull_uint16()
            data = r.pull_opaque16()
            if ext_type in seen:
                # RFC 5246 §7.4.1.4: no more than one extension of the same type.
                raise DecodeError(f"duplicate extension {ext_type}")
            seen.add(ext_type)
            exts.append(Extension(ext_type, data))
    return tuple(exts)


def push_extensions(w: Writer, exts: Iterable[Extension]) -> None:
    """Write the extensions block (with its 2-byte length), even when empty."""
    seen: set[int] = set()
    with w.block(2):
        for ext in exts:
            if ext.type in seen:
                raise UsageError(f"duplicate extension {ext.type}")
            seen.add(ext.type)
            w.push_uint16(ext.type)
            w.push_opaque16(ext.data)


def encode_extensions(exts: Iterable[Extension]) -> bytes:
    """The extensions block with its 2-byte length prefix."""
    w = Writer()
    push_extensions(w, exts)
    return w.data()


def find_extension(exts: Iterable[Extension], ext_type: int) -> bytes | None:
    """The data of the extension of ``ext_type``, or None when it is absent."""
    for ext in exts:
        if ext.type == ext_type:
            return ext.data
    return None


# --- shared list shapes -------------------------------------------------------------


def _decode_uint16_list(data: bytes, what: str) -> tuple[int, ...]:
    """An opaque16 list of uint16 values with at least one entry, exactly filling ``data``."""
    r = Reader(data)
    body = r.pull_opaque16()
    r.expect_end(what)
    if len(body) < 2 or len(body) % 2:
        raise DecodeError(f"{what}: list length {len(body)} is not a positive even number")
    return tuple(int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body), 2))


def _encode_uint16_list(values: Iterable[int], what: str) -> bytes:
    w = Writer()
    with w.block(2):
        for v in values:
            w.push_uint16(v)
    if len(w) < 4:
        raise UsageError(f"{what}: empty list")
    return w.data()


def _decode_opaque8(data: bytes, what: str) -> bytes:
    r = Reader(data)
    value = r.pull_opaque8()
    r.expect_end(what)
    return value


def _encode_opaque8(value: bytes) -> bytes:
    w = Writer()
    w.push_opaque8(value)
    return w.data()


# --- typed helpers ----------------------------------------------------------------


def decode_supported_groups(data: bytes) -> tuple[int, ...]:
    """RFC 8422 §5.1.1: ``NamedGroup named_group_list<2..2^16-1>``."""
    return _decode_uint16_list(data, "supported_groups")


def encode_supported_groups(groups: Iterable[int]) -> bytes:
    return _encode_uint16_list(groups, "supported_groups")


def decode_ec_point_formats(data: bytes) -> bytes:
    """RFC 8422 §5.1.2: ``ECPointFormat ec_point_format_list<1..2^8-1>``."""
    formats = _decode_opaque8(data, "ec_point_formats")
    if not formats:
        raise DecodeError("ec_point_formats: empty list")
    return formats


def encode_ec_point_formats(formats: bytes) -> bytes:
    if not formats:
        raise UsageError("ec_point_formats: empty list")
    return _encode_opaque8(formats)


def decode_signature_algorithms(data: bytes) -> tuple[int, ...]:
    """RFC 5246 §7.4.1.4.1:
    ``SignatureAndHashAlgorithm supported_signature_algorithms<2..2^16-2>``."""
    return _decode_uint16_list(data, "signature_algorithms")


def encode_signature_algorithms(schemes: Iterable[int]) -> bytes:
    return _encode_uint16_list(schemes, "signature_algorithms")


def decode_heartbeat(data: bytes) -> int:
    """RFC 6520 §2: ``struct { HeartbeatMode mode; }``: exactly one byte.

    The mode value is returned unchecked: an unknown mode is an
    illegal_parameter alert (RFC 6520 §2), which the handshake raises.
    """
    if len(data) != 1:
        raise DecodeError(f"heartbeat extension: {len(data)} bytes, expected 1")
    return data[0]


def encode_heartbeat(mode: int) -> bytes:
    return bytes((mode,))


def decode_extended_master_secret(data: bytes) -> None:
    """RFC 7627 §5.1: the extension_data field is empty."""
    if data:
        raise DecodeError("extended_master_secret: extension_data must be empty")


def encode_extended_master_secret() -> bytes:
    return b""


def decode_session_ticket(data: bytes) -> bytes:
    """RFC 5077 §3.2: the ticket is the whole extension_data (no inner length,
    unlike RFC 4507; see RFC 5077 Appendix A); empty asks for a new ticket."""
    return bytes(data)


def encode_session_ticket(ticket: bytes) -> bytes:
    return bytes(ticket)


def decode_renegotiation_info(data: bytes) -> bytes:
    """RFC 5746 §3.2: ``opaque renegotiated_connection<0..255>``, consuming the data exactly."""
    return _decode_opaque8(data, "renegotiation_info")


def encode_renegotiation_info(renegotiated_connection: bytes = b"") -> bytes:
    return _encode_opaque8(renegotiated_connection)


def decode_connection_id(data: bytes) -> bytes:
    """RFC 9146 §3: ``opaque cid<0..2^8-1>``, consuming the data exactly."""
    return _decode_opaque8(data, "connection_id")


def encode_connection_id(cid: bytes) -> bytes:
    return _encode_opaque8(cid)
