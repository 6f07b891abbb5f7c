"""``python -m bench``: see bench/main.py."""

import sys

from bench.main import main

try:
    code = main()
except KeyboardInterrupt:
    print("bench: interrupted; its processes are stopped and its namespaces deleted",
          file=sys.stderr)
    code = 130
raise SystemExit(code)
