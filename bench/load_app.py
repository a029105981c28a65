"""Hosted-mode load: N concurrent browser sessions against one ``streamlit run app.py``.

Writes a tiny hosted site into a temporary directory (login off, but the allowlist, the
limits and the one-slot compute queue on), starts the app on it, warms it up with one
session, then drives ``--sessions`` Chromium contexts for ``--seconds`` split into
``--rounds``. Each session loops: open Search, type a prompt unique to it, "Find
features" until the results show; open ``/feature?feature=k`` until the dashboard has
drawn. The driver is ``tests/app/load_driver.py`` (``tests/app/test_load.py`` asserts on
the same figures).

Reported: requests served, median and p95 page time (overall and per page type), errors
with their messages, cross-session leaks, the server's RSS before the load, after each
round and at the end, and whether it grew after the first round. Printed as a table and
written to ``--out`` (JSON).

    .venv/bin/python bench/load_app.py [--sessions 8] [--seconds 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.app.load_driver import missing_requirements, report, run_load  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions")
    ap.add_argument("--seconds", type=float, default=60.0, help="load time, all rounds")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (RSS is read after each)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results-load.json")
    ap.add_argument("--log", type=Path, default=None, help="server log (default: temporary)")
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.rounds < 1 or args.seconds <= 0:
        ap.error("--sessions and --rounds must be at least 1, --seconds positive")
    why = missing_requirements()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    res = run_load(args.sessions, args.seconds, args.rounds, log_path=args.log)
    res["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(report(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwritten to {args.out}")
    return 0 if not res["errors"] and not res["leaks"] else 1


if __name__ == "__main__":
    sys.exit(main())
