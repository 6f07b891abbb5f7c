"""``make fuzz``: the mutation fuzzer at volume, both roles, with a progress line.

``python -m tests.fuzz.run [--datagrams N] [--role server|client|both] [--seed S]
[--report FILE]``.  Prints a progress line every 50 000 datagrams and one summary line
per role (datagrams, sessions, rate, exceptions escaped, drops by reason); exit status 1
if any exception escaped the core.  ``--report`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

from tests.fuzz.engine import Fuzzer, Report
from tests.pki import make_pki


def _progress(r: Report) -> None:
    print(f"  {r.role}: {r.datagrams} datagrams, {r.sessions} sessions, {r.rate:.0f}/s, "
          f"escaped {r.escaped}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.fuzz.run")
    p.add_argument("--datagrams", type=int, default=1_000_000, help="per role")
    p.add_argument("--role", choices=("server", "client", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path)
    args = p.parse_args(argv)
    roles = ("server", "client") if args.role == "both" else (args.role,)
    with tempfile.TemporaryDirectory(prefix="dtlsvpn-fuzz-") as tmp:
        pki = make_pki(Path(tmp), now=dt.datetime.now(dt.UTC))
        reports = []
        for role in roles:
            print(f"fuzz: {role} role, {args.datagrams} datagrams, seed {args.seed}", flush=True)
            r = Fuzzer(pki, args.seed).run(role, args.datagrams, _progress)
            reports.append(r)
            print("fuzz: " + r.summary(), flush=True)
            for tb in r.first_escapes:
                print(tb, file=sys.stderr)
    if args.report is not None:
        args.report.write_text(json.dumps([{
            "role": r.role, "datagrams": r.datagrams, "sessions": r.sessions,
            "established": r.established, "seconds": round(r.seconds, 1),
            "rate": round(r.rate), "escaped": r.escaped, "drops": dict(r.drops),
            "mutations": dict(r.mutations)} for r in reports], indent=1) + "\n")
    return 1 if any(r.escaped for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
