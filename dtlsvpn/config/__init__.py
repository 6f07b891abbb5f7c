"""Configuration of the dtlsvpn daemon: ``/etc/dtlsvpn/NAME.conf``.

:mod:`~dtlsvpn.config.parser` reads the INI-like syntax with line numbers;
:mod:`~dtlsvpn.config.values` gives single values their meaning (the command-line
tools use the same converters); :mod:`~dtlsvpn.config.schema` validates the whole
file into frozen dataclasses (:mod:`dtlsvpn.daemon.settings` builds the DTLS core's
settings from them). This package re-exports the public API.
"""

from __future__ import annotations

from dtlsvpn.config.schema import (
    DEFAULT_CONFDIR,
    Config,
    Credentials,
    InterfaceConfig,
    PeerConfig,
    Source,
    config_path,
    load_config,
    read_secret_file,
)
from dtlsvpn.config.values import (
    hostport,
    interval,
    is_ip_literal,
    pin,
    seconds,
    spki_pin_text,
)

__all__ = [
    "DEFAULT_CONFDIR",
    "Config",
    "Credentials",
    "InterfaceConfig",
    "PeerConfig",
    "Source",
    "config_path",
    "hostport",
    "interval",
    "is_ip_literal",
    "load_config",
    "pin",
    "read_secret_file",
    "seconds",
    "spki_pin_text",
]
