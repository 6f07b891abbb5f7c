"""Record-layer test material shared by the fast-path tests: every AEAD once, keys."""

from __future__ import annotations

from dtlsvpn.crypto.aead import RecordProtection
from dtlsvpn.crypto.suites import SUITES, SuiteInfo
from dtlsvpn.wire.constants import ContentType

CT_APP = int(ContentType.application_data)
CT_CID = int(ContentType.tls12_cid)
# One suite per (key length, AEAD): the record layer's distinct cases.
AEAD_SUITES = sorted({(s.key_len, s.aead): s for s in SUITES.values()}.values(),
                     key=lambda s: s.name)


def protection(suite: SuiteInfo, byte: int) -> RecordProtection:
    """A RecordProtection with keys made of ``byte`` (and its IV of ``byte ^ 0x5A``)."""
    return RecordProtection(suite, bytes([byte]) * suite.key_len,
                            bytes([byte ^ 0x5A]) * suite.fixed_iv_len)
