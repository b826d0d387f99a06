"""Cost reports over meterproxy's record files: the same options and output as `meterproxy report`."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run from a checkout without `pip install -e .`: the package is the folder above this one.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from proxy.report import main

    raise SystemExit(main(prog="analyze_costs.py"))
