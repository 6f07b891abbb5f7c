"""The names other packages import from ``dtlsvpn.config.schema``, where they used to live.

The schema is now three modules: :mod:`~dtlsvpn.config.model` (the frozen dataclasses,
the key vocabulary and the defaults), :mod:`~dtlsvpn.config.credentials` (certificates,
keys, PSK files, secret-file modes, validity) and :mod:`~dtlsvpn.config.loader`
(``load_config``); the value converters are in :mod:`~dtlsvpn.config.values`.  New code
imports from :mod:`dtlsvpn.config` or from those modules.
"""

from __future__ import annotations

from dtlsvpn.config.credentials import read_secret_file as read_secret_file
from dtlsvpn.config.loader import load_config as load_config
from dtlsvpn.config.model import DEFAULT_CONFDIR as DEFAULT_CONFDIR
from dtlsvpn.config.model import Config as Config
from dtlsvpn.config.model import Credentials as Credentials
from dtlsvpn.config.model import InterfaceConfig as InterfaceConfig
from dtlsvpn.config.model import PeerConfig as PeerConfig
from dtlsvpn.config.model import Source as Source
from dtlsvpn.config.model import config_path as config_path
from dtlsvpn.config.values import spki_pin_text as spki_pin_text
