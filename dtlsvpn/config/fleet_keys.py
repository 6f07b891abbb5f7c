"""The fleet keys of [Interface]: several servers behind one address (README "More than one
server"), read by ``loader.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dtlsvpn.config import values
from dtlsvpn.config.credentials import read_secret_file
from dtlsvpn.config.fields import Fields
from dtlsvpn.config.model import FLEET_CID_MODES, FLEET_KEYS, FleetConfig
from dtlsvpn.config.values import Role

# --- fleet: several servers behind one address (issue 15, README "More than one server") ---
# ServerId, FleetCID, FleetSecretFile, TicketKeyFile, TicketKeyRotation (config/model.py has
# their meaning).  Errors name the key; a fleet key on a client, or without ServerId where it
# needs one, is an error rather than silently ignored.

MIN_FLEET_SECRET, MAX_FLEET_SECRET = 16, 64


def _server_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise ValueError(f"expected a server id from 0 to 255, got {text!r}")
    return value


def _cid_mode(text: str) -> str:
    v = text.lower()
    if v not in FLEET_CID_MODES:
        raise ValueError(f"expected 'obfuscated' or 'plain', got {text!r}")
    return v


def read_fleet_secret(path: Path) -> bytes:
    """The fleet secret in the secret file ``path``: hex digits, whitespace ignored."""
    digits = "".join(read_secret_file(path).decode("ascii", errors="replace").split())
    try:
        secret = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"expected the fleet secret as hex digits in {path} (e.g. "
                         f"`dtlsvpn genpsk`)") from None
    if not MIN_FLEET_SECRET <= len(secret) <= MAX_FLEET_SECRET:
        raise ValueError(f"expected a fleet secret of {MIN_FLEET_SECRET} to "
                         f"{MAX_FLEET_SECRET} bytes in {path}, got {len(secret)}")
    return secret


def load_fleet(f: Fields, role: Role, to_path: Callable[[str], Path]) -> FleetConfig:
    """The fleet keys of [Interface] (all defaults when none is set)."""
    present = [k for k in FLEET_KEYS if f.has(k)]
    if not present:
        return FleetConfig()
    if role != "server":
        raise f.error(present[0], "a fleet key is for servers; expected it only with "
                                  "Role = server")
    server_id = f.get("ServerId", _server_id, None)
    mode = f.get("FleetCID", _cid_mode, "obfuscated")
    secret_path = f.get("FleetSecretFile", to_path, None)
    secret = f.load("FleetSecretFile", secret_path, read_fleet_secret)
    if server_id is None:
        for key in ("FleetCID", "FleetSecretFile"):
            if f.has(key):
                raise f.error(key, "expected ServerId = 0..255 in [Interface] as well")
    elif f.has("ConnectionID") and not f.get("ConnectionID", values.boolean, True):
        raise f.error("ServerId", "expected ConnectionID = yes: the server id travels in "
                                  "the connection ID")
    elif mode == "obfuscated" and secret is None:
        key = "FleetCID" if f.has("FleetCID") else "ServerId"
        raise f.error(key, "expected FleetSecretFile = PATH: obfuscated CIDs need the fleet "
                           "secret (or FleetCID = plain on a trusted network)")
    return FleetConfig(
        server_id=server_id,
        cid_mode=mode,
        secret=secret,
        ticket_key_file=f.get("TicketKeyFile", to_path, None),
        ticket_key_rotation=f.get("TicketKeyRotation", values.boolean, True),
    )
