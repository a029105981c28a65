"""Try every bad input of tests/bad_inputs.py and print a Markdown table.

One row per case: the input tried, what it produced (the message the user reads, shortened)
and whether everything else stayed intact. Below the table: the cases whose message lacks
what the test suite expects, or that were not intact (none when all is well).

Usage::

    .venv/bin/python -m tests.bad_input_report               # every case
    .venv/bin/python -m tests.bad_input_report --group html  # one group (see --help)
    .venv/bin/python -m tests.bad_input_report --match surrogate

Everything is built in a temporary directory (no downloads); takes about a minute.
Exit status 1 when a case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import unicodedata

from tests.bad_inputs import CASES, GROUPS, Env, Outcome, check, shorten
from tests.tiny import prepare_process


def cell(text: str, limit: int = 160) -> str:
    """Text safe in a Markdown table cell: invisible characters spelled out, HTML and
    pipes escaped, whitespace collapsed, shortened."""
    out = []
    for ch in text:
        if ch in "\n\t":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    text = shorten("".join(out), limit)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bad_input_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--group", choices=sorted(GROUPS), help="only this group")
    parser.add_argument("--match", help="only cases whose name or input contains this text")
    args = parser.parse_args(argv)
    prepare_process()
    logging.basicConfig(level=logging.ERROR)
    cases = [
        c
        for c in CASES
        if (args.group is None or c.group == args.group)
        and (args.match is None or args.match.lower() in (c.name + " " + c.tried).lower())
    ]
    with contextlib.redirect_stdout(sys.stderr):
        env = Env()
    rows, failures = [], []
    t0 = time.perf_counter()
    try:
        for case in cases:
            try:
                with contextlib.redirect_stdout(sys.stderr):  # libraries print progress
                    out = case.run(env)
            except Exception as exc:  # a crash of the case itself is a failure too
                out = Outcome(f"CASE CRASHED: {type(exc).__name__}: {exc}", False, "crashed")
            wrong = check(case, out)
            if wrong:
                failures.append((case, wrong))
            rows.append((case, out))
            print(f"  {case.name}: {'ok' if not wrong else 'FAIL'}", file=sys.stderr)
    finally:
        env.close()
    seconds = time.perf_counter() - t0
    print("| input tried | what it produced | intact |")
    print("|---|---|---|")
    group = None
    for case, out in rows:
        if case.group != group:
            group = case.group
            print(f"| **{cell(GROUPS[group])}** | | |")
        intact = "yes" if out.intact else f"no: {cell(out.notes, 80)}"
        print(f"| {cell(case.tried, 90)} | {cell(out.message)} | {intact} |")
    print()
    print(f"{len(rows)} cases in {seconds:.0f} s; {len(rows) - len(failures)} as expected.")
    for case, wrong in failures:
        print(f"- FAIL {case.name}: {'; '.join(wrong)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
