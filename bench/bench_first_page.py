"""The first feature page a new user opens, cold, against the bare forward pass.

What `make run` shows first: the demo (SmolLM2-135M, the 4,096-feature demo SAE, the
stdlib-docs corpus of 65,536 tokens) with an empty cache. The Feature page computes the
feature asked for and the next 15 in one sweep (``pages/_ui.py``); a second page of 16 new
features then reads the stored hook activations. Each run builds a fresh workspace the way
the app does (``Workspace.from_specs`` with the default ``RunConfig``) on an empty memo.

    .venv/bin/python bench/bench_first_page.py            # floor, first page, second page
    .venv/bin/python bench/bench_first_page.py --repeat 2

Each measurement runs in its own process (peak memory per run). Results go to
``bench/results-first-page.json``; the ratio of the first page to the floor is the figure
of merit (target: at most 1.3).
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

PAGE = 16  # features computed by one cold Feature page (pages/_ui.py PREFETCH)
OUT = ROOT / "bench" / "results-first-page.json"


def _workspace(memo_dir: Path):
    from core.memo import Memo
    from core.sources import DatasetSpec, DictionarySpec, ModelSpec
    from core.workspace import Workspace

    return Workspace.from_specs(
        ModelSpec(kind="demo"),
        DictionarySpec(kind="demo"),
        DatasetSpec(kind="demo"),
        memo=Memo(memo_dir / "memo"),
    )


def run_one(name: str) -> dict:
    """Child process: one measurement, as a dict."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws = _workspace(Path(tmp))
        load_s = time.perf_counter() - t0
        n_tok = int(ws.tokens.numel())
        with PeakRss() as mem:
            t = time.perf_counter()
            if name == "floor":
                bs = ws.config.batch_size
                hook = ws.dictionary.hook_in
                with torch.no_grad():
                    for i in range(0, ws.tokens.shape[0], bs):
                        ws.model.run_to_hooks(ws.tokens[i : i + bs], [hook])
                seconds = time.perf_counter() - t
                extra: dict = {}
            else:
                first = ws.features(list(range(PAGE)))
                seconds = time.perf_counter() - t
                assert len(first) == PAGE
                t2 = time.perf_counter()
                second = ws.features(list(range(PAGE, 2 * PAGE)))
                extra = {"second_page_seconds": time.perf_counter() - t2}
                assert len(second) == PAGE
    return {
        "scenario": name,
        "seconds": seconds,
        "load_seconds": load_s,
        "n_tokens": n_tok,
        "peak_rss_mb": mem.peak / 2**20,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each scenario (alternating)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child)))
        return 0
    results = []
    for _ in range(args.repeat):
        for name in ("floor", "first_page"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(json.dumps(res), flush=True)
    floor = min(r["seconds"] for r in results if r["scenario"] == "floor")
    page = min(r["seconds"] for r in results if r["scenario"] == "first_page")
    second = min(r["second_page_seconds"] for r in results if r["scenario"] == "first_page")
    summary = {
        "floor_seconds": floor,
        "first_page_seconds": page,
        "second_page_seconds": second,
        "first_page_over_floor": page / floor,
        "second_page_over_floor": second / floor,
        "machine": platform.processor() or platform.machine(),
    }
    print(
        f"floor (forward to the hook, {results[0]['n_tokens']:,} tokens): {floor:.1f} s\n"
        f"first cold page ({PAGE} features): {page:.1f} s = {page / floor:.2f}x the floor\n"
        f"second page ({PAGE} new features, activations stored): {second:.1f} s = "
        f"{second / floor:.2f}x"
    )
    OUT.write_text(json.dumps({"summary": summary, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
