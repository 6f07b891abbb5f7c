"""Configuration of the dtlsvpn daemon: ``/etc/dtlsvpn/NAME.conf``.

:mod:`~dtlsvpn.config.parser` reads the INI-like syntax with line numbers;
:mod:`~dtlsvpn.config.schema` validates it into frozen dataclasses
(:mod:`dtlsvpn.daemon.settings` builds the DTLS core's settings from them). This
package re-exports the public API.
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
    "load_config",
    "spki_pin_text",
]
