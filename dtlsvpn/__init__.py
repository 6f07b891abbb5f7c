"""dtlsvpn: a userspace VPN over DTLS 1.2."""

__version__ = "0.1.0"
