"""``python -m dtlsvpn`` runs the command line."""

from dtlsvpn.cli.main import main

raise SystemExit(main())
