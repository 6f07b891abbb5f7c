"""The sans-I/O DTLS 1.2 core: Association, ServerEndpoint and their config."""

from dtlsvpn.dtls.association import Association
from dtlsvpn.dtls.config import DtlsConfig
from dtlsvpn.dtls.endpoint import ServerEndpoint

__all__ = ["Association", "DtlsConfig", "ServerEndpoint"]
