"""Every feature of the demo, end to end into the memo, against the bare forward pass.

The demo (SmolLM2-135M-Instruct, the 4,096-feature demo SAE, the stdlib-docs corpus of
65,536 tokens) on an empty cache, the two ways a user computes a whole dictionary:

* ``app``: the app's "compute every feature" (``Workspace.summary``: every feature's data
  built and stored in the memo batch by batch, then the summary table);
* ``cli``: ``python -m core precompute --outputs memo`` (options parsed by the command
  line's own parser, run in process).

Both include the forward pass (nothing stored beforehand). Whole-dictionary correlations,
as the app's defaults. ``floor`` is the bare forward to the hook over the same tokens.

    .venv/bin/python bench/bench_demo_all.py             # floor, app, cli
    .venv/bin/python bench/bench_demo_all.py --scenarios floor,app

Each run is its own process; results go to ``bench/results-demo-all.json`` with each
scenario's ratio to the floor (target: at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_engine import PeakRss  # noqa: E402
from bench.bench_first_page import _workspace  # noqa: E402

OUT = ROOT / "bench" / "results-demo-all.json"
SCENARIOS = ("floor", "app", "cli")


def _cli(work: Path, ws) -> dict:
    from core.cli import build_parser
    from core.memo import Memo
    from core.precompute.args import config_from_args
    from core.precompute.run import Sources, run_precompute

    argv = ["precompute", "--output-dir", str(work / "out"), "--outputs", "memo", "--no-progress"]
    parser, _ = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    src = Sources(ws.model, ws.dictionary, ws.tokens, ws.dataset)
    app_memo = Memo(work / "app-memo")
    try:
        got = run_precompute(cfg, src, app_memo=app_memo)
    finally:
        app_memo.close()
    return {"n_features": got["features_requested"], "chunks": got["chunks_total"]}


def run_one(name: str) -> dict:
    """Child process: one measurement, as a dict."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws = _workspace(Path(tmp))
        load_s = time.perf_counter() - t0
        extra: dict = {}
        with PeakRss() as mem:
            t = time.perf_counter()
            if name == "floor":
                bs, hook = ws.config.batch_size, ws.dictionary.hook_in
                with torch.no_grad():
                    for i in range(0, ws.tokens.shape[0], bs):
                        ws.model.run_to_hooks(ws.tokens[i : i + bs], [hook])
            elif name == "app":
                table = ws.summary()
                extra = {"n_features": len(table["feature"])}
            else:
                extra = _cli(Path(tmp), ws)
            seconds = time.perf_counter() - t
    return {
        "scenario": name,
        "seconds": seconds,
        "load_seconds": load_s,
        "n_tokens": int(ws.tokens.numel()),
        "peak_rss_mb": mem.peak / 2**20,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child)))
        return 0
    names = [s for s in args.scenarios.split(",") if s]
    bad = sorted(set(names) - set(SCENARIOS))
    if bad:
        ap.error(f"unknown scenario(s) {', '.join(bad)}: pick from {', '.join(SCENARIOS)}")
    results = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    floor = results.get("floor", {}).get("seconds")
    ratios = {n: r["seconds"] / floor for n, r in results.items() if floor and n != "floor"}
    for n, ratio in ratios.items():
        print(f"{n}: {results[n]['seconds']:.1f} s = {ratio:.2f}x the floor ({floor:.1f} s)")
    summary = {"ratios_to_floor": ratios, "machine": platform.processor() or platform.machine()}
    OUT.write_text(json.dumps({"summary": summary, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
