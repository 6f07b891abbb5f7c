"""Configuration of the dtlsvpn daemon: ``/etc/dtlsvpn/NAME.conf``.

:mod:`~dtlsvpn.config.parser` reads the INI-like syntax with line numbers;
:mod:`~dtlsvpn.config.values` gives single values their meaning (the command-line
tools use the same converters); :mod:`~dtlsvpn.config.loader` validates the whole
file into the frozen dataclasses of :mod:`~dtlsvpn.config.model`, reading the files
it names with :mod:`~dtlsvpn.config.credentials` (:mod:`dtlsvpn.daemon.settings`
builds the DTLS core's settings from the result). :mod:`~dtlsvpn.config.schema` keeps
the old import path of the names other packages use. This package re-exports the
public API.
"""

from __future__ import annotations

from dtlsvpn.config.credentials import read_secret_file
from dtlsvpn.config.loader import load_config
from dtlsvpn.config.model import (
    DEFAULT_CONFDIR,
    Config,
    Credentials,
    InterfaceConfig,
    PeerConfig,
    Source,
    config_path,
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
