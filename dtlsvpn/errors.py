"""The project's exception tree.

Remote input never raises anything but :class:`DecodeError` (from the codecs)
or an :class:`Alert` subclass (from the handshake machines); both are caught at
one boundary in ``dtls.association``.  Local misuse raises :class:`UsageError`.
"""

from __future__ import annotations

import enum


class AlertDescription(enum.IntEnum):
    """RFC 5246 §7.2, RFC 4279 §6, RFC 5746 §3.5 et al."""

    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    decompression_failure = 30
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    no_renegotiation = 100
    unsupported_extension = 110
    unknown_psk_identity = 115
    certificate_required = 116


class DtlsvpnError(Exception):
    """Root of every error the project raises on purpose."""


class DecodeError(DtlsvpnError, ValueError):
    """Bytes that do not parse: truncated, over-long, or out of range."""


class UsageError(DtlsvpnError):
    """The caller used an API wrongly (a local programming error)."""


class ConfigError(DtlsvpnError):
    """A configuration mistake, naming the file, line and key."""

    def __init__(self, path: str, line: int | None, key: str | None, msg: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.msg = msg
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")


class Alert(DtlsvpnError):
    """A fatal condition that ends the handshake with an alert to the peer."""

    description: AlertDescription = AlertDescription.internal_error

    def __init__(self, reason: str = "", *, failure: str | None = None) -> None:
        self.reason = reason
        # A stable snake_case name of the check that failed (the shell counts and
        # explains refusals by it); the alert's name unless a finer one is known.
        self.failure = failure or self.description.name
        super().__init__(f"{self.description.name}: {reason}" if reason else self.description.name)


def _alert_class(desc: AlertDescription) -> type[Alert]:
    name = "".join(part.capitalize() for part in desc.name.split("_"))
    doc = f"Alert {desc.value} {desc.name}."
    return type(name, (Alert,), {"description": desc, "__doc__": doc})


class UnexpectedMessage(Alert):
    description = AlertDescription.unexpected_message


class HandshakeFailure(Alert):
    description = AlertDescription.handshake_failure


class BadCertificate(Alert):
    description = AlertDescription.bad_certificate


class UnsupportedCertificate(Alert):
    description = AlertDescription.unsupported_certificate


class CertificateExpired(Alert):
    description = AlertDescription.certificate_expired


class CertificateUnknown(Alert):
    description = AlertDescription.certificate_unknown


class IllegalParameter(Alert):
    description = AlertDescription.illegal_parameter


class UnknownCa(Alert):
    description = AlertDescription.unknown_ca


class DecodeErrorAlert(Alert):
    description = AlertDescription.decode_error


class DecryptError(Alert):
    description = AlertDescription.decrypt_error


class ProtocolVersion(Alert):
    description = AlertDescription.protocol_version


class InsufficientSecurity(Alert):
    description = AlertDescription.insufficient_security


class InternalError(Alert):
    description = AlertDescription.internal_error


class NoRenegotiation(Alert):
    description = AlertDescription.no_renegotiation


class UnsupportedExtension(Alert):
    description = AlertDescription.unsupported_extension


class UnknownPskIdentity(Alert):
    description = AlertDescription.unknown_psk_identity


class CertificateRequired(Alert):
    description = AlertDescription.certificate_required


class BadRecordMac(Alert):
    description = AlertDescription.bad_record_mac


class RecordOverflow(Alert):
    description = AlertDescription.record_overflow


ALERT_CLASSES: dict[AlertDescription, type[Alert]] = {
    cls.description: cls
    for cls in (
        UnexpectedMessage, HandshakeFailure, BadCertificate, UnsupportedCertificate,
        CertificateExpired, CertificateUnknown, IllegalParameter, UnknownCa, DecodeErrorAlert,
        DecryptError, ProtocolVersion, InsufficientSecurity, InternalError, NoRenegotiation,
        UnsupportedExtension, UnknownPskIdentity, CertificateRequired, RecordOverflow,
        BadRecordMac,
    )
}


def alert_for(desc: AlertDescription, reason: str = "") -> Alert:
    """An Alert instance for any description (a generated class for rare ones)."""
    cls = ALERT_CLASSES.get(desc)
    if cls is None:
        cls = ALERT_CLASSES[desc] = _alert_class(desc)
    return cls(reason)
