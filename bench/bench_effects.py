"""Cost of the exact per-token effects of a feature page, cold and from the memo.

For each model the feature pages are computed first (not timed as effects), then:

* ``cold``: one request per page (a fresh memo), as the app makes when a page opens;
* ``cached``: the same request again (memo hit: no forward pass);
* ``batched``: all pages in one request (fresh memo): clean passes shared;
* ``naive`` (first page only; ``--naive-examples 0`` skips it): what a straightforward exact
  implementation costs, two full forward passes per shown example, one at a time;
  timed on the first ``--naive-examples`` examples and scaled to the whole page.

Work is also counted as ``token_layers`` (token positions times blocks run); the naive
figure is ``2 * examples * context * n_layers``.

Models: the benchmark's gpt2-small-shaped workload (``bench/workload.py`` prepares it in
``bench/.workload``; SAE at ``blocks.6.hook_resid_pre``) and the demo (SmolLM2 with the
TopK SAE at ``blocks.10.hook_resid_post``) when its assets exist. Figures go to
``bench/results-effects.json`` and are printed.

    .venv/bin/python bench/bench_effects.py [--pages 2] [--threads 2] [--only workload|demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.config import RunConfig  # noqa: E402
from core.effects import compute_effects  # noqa: E402
from core.engine.cached import source_key  # noqa: E402
from core.engine.sweep import run_sweep  # noqa: E402
from core.memo import Memo, feature_prefix  # noqa: E402

OUT = ROOT / "bench" / "results-effects.json"


def _examples(fd):
    return [*fd.top_examples, *(e for g in fd.intervals for e in g.examples)]


@torch.no_grad()
def naive_seconds(model, dictionary, tokens, fd, hook: str, limit: int) -> tuple[float, int]:
    """Two full forward passes per example (clean, ablated with a plain hook)."""
    m = model.model
    f = fd.index
    d = dictionary.decoder_directions(torch.tensor([f]))[0].to(model.dtype)
    bos = model.bos_token_id
    t = time.perf_counter()
    passes = 0
    for e in _examples(fd)[:limit]:
        seq = tokens[e.seq : e.seq + 1].to(model.device)
        store = {}

        def grab(act, hook, store=store):
            store["x"] = act
            return act

        with m.hooks(fwd_hooks=[(hook, grab)]):
            clean = m(seq)
        x = store["x"][0]
        a = dictionary.encode(x.to(d.dtype), torch.tensor([f]))[:, 0]
        if bos is not None:
            a = a * (seq[0] != bos)

        def remove(act, hook, a=a):
            return act - a[None, :, None].to(act.dtype) * d

        with m.hooks(fwd_hooks=[(hook, remove)]):
            ablated = m(seq)
        torch.log_softmax(clean, -1) - torch.log_softmax(ablated, -1)
        passes += 2
    return time.perf_counter() - t, passes


def measure(label, model, dictionary, tokens, n_pages: int, naive: int) -> dict:
    cfg = RunConfig(features=list(range(64)), feature_correlation="none", device="cpu")
    t = time.perf_counter()
    pages = dict(run_sweep(model, dictionary, tokens, cfg).features)
    sweep_s = time.perf_counter() - t
    full = [f for f, fd in pages.items() if len(fd.top_examples) == cfg.n_top_examples]
    chosen = (full or list(pages))[:n_pages]
    key = feature_prefix(
        source_key(model, dictionary, tokens, cfg), cfg.feature_correlation, cfg.features
    )
    hook = cfg.hook or dictionary.hook_in
    out: dict = {
        "model": model.name,
        "n_layers": model.n_layers,
        "hook": hook,
        "tokens": list(tokens.shape),
        "sweep_seconds_64_features": round(sweep_s, 2),
        "pages": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        memo = Memo(Path(tmp) / "memo")
        for f in chosen:
            fd = pages[f]
            row: dict = {
                "feature": f,
                "examples": len(_examples(fd)),
                "shown_tokens": sum(len(e.tokens) for e in _examples(fd)),
                "naive_token_layers": 2 * len(_examples(fd)) * tokens.shape[1] * model.n_layers,
            }
            for phase in ("cold", "cached"):
                st: dict = {}
                t = time.perf_counter()
                compute_effects(
                    model, dictionary, tokens, {f: fd}, memo=memo, key_prefix=key, stats=st
                )
                st["seconds"] = round(time.perf_counter() - t, 3)
                row[phase] = st
            out["pages"].append(row)
            print(f"[{label}] feature {f}: {row}", flush=True)
        memo.close()
    with tempfile.TemporaryDirectory() as tmp:
        memo = Memo(Path(tmp) / "memo")
        st = {}
        t = time.perf_counter()
        compute_effects(
            model,
            dictionary,
            tokens,
            {f: pages[f] for f in chosen},
            memo=memo,
            key_prefix=key,
            stats=st,
        )
        st["seconds"] = round(time.perf_counter() - t, 3)
        st["seconds_per_page"] = round(st["seconds"] / len(chosen), 3)
        out["batched"] = st
        memo.close()
    print(f"[{label}] batched {out['batched']}", flush=True)
    if naive and chosen:
        fd = pages[chosen[0]]
        s, passes = naive_seconds(model, dictionary, tokens, fd, hook, naive)
        n_ex = len(_examples(fd))
        out["naive_first_page"] = {
            "timed_examples": passes // 2,
            "timed_seconds": round(s, 3),
            "seconds": round(s * n_ex / max(passes // 2, 1), 2),
            "forward_passes": 2 * n_ex,
        }
        print(f"[{label}] naive {out['naive_first_page']}", flush=True)
    return out


def load_demo(n_tokens: int):
    from core.dictionaries.saelens import DEMO_SAE_DIR
    from core.sources import (
        DatasetSpec,
        DictionarySpec,
        ModelSpec,
        load_sources,
    )

    if not (DEMO_SAE_DIR / "cfg.json").exists():
        raise FileNotFoundError(f"demo SAE missing: {DEMO_SAE_DIR}")
    model, d, tokens, _ = load_sources(
        ModelSpec(kind="demo", device="cpu"),
        DictionarySpec(kind="demo"),
        DatasetSpec(kind="demo", n_tokens=n_tokens),
    )
    return model, d, tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pages", type=int, default=2, help="feature pages measured per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["workload", "demo"], default=None)
    ap.add_argument("--demo-tokens", type=int, default=16384)
    ap.add_argument("--naive-examples", type=int, default=8, help="0 skips the naive timing")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_avg_start": list(os.getloadavg()),
            "device": "cpu",
        },
        "runs": {},
    }
    if args.only in (None, "workload"):
        from bench.bench_engine import WORKLOAD, load_workload

        if (WORKLOAD / "model.safetensors").exists():
            model, d, tokens = load_workload("cpu")
            results["runs"]["workload"] = measure(
                "workload", model, d, tokens, args.pages, args.naive_examples
            )
            del model, d
        else:
            results["runs"]["workload"] = {
                "skipped": "run `.venv/bin/python bench/workload.py bench/.workload` first"
            }
    if args.only in (None, "demo"):
        try:
            model, d, tokens = load_demo(args.demo_tokens)
        except Exception as exc:  # missing assets: report, do not fail the other run
            results["runs"]["demo"] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            results["runs"]["demo"] = measure(
                "demo", model, d, tokens, args.pages, args.naive_examples
            )
    results["machine"]["load_avg_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(
        f"\n{'model':<10} {'page':>6} {'examples':>8} {'cold s':>8} {'passes':>6} {'cached s':>9} {'passes':>6}"
    )
    for label, run in results["runs"].items():
        if "skipped" in run:
            print(f"{label:<10} skipped: {run['skipped']}")
            continue
        for p in run["pages"]:
            c, w = p["cold"], p["cached"]
            print(
                f"{label:<10} {p['feature']:>6} {p['examples']:>8} {c['seconds']:>8.2f} "
                f"{c['forward_passes']:>6} {w['seconds']:>9.3f} {w['forward_passes']:>6}"
            )
        b = run["batched"]
        print(
            f"{label:<10} batched {len(run['pages'])} pages: {b['seconds']:.2f} s "
            f"({b['seconds_per_page']:.2f} s/page, {b['forward_passes']} passes)"
        )
        for p in run["pages"]:
            ratio = p["naive_token_layers"] / max(p["cold"]["token_layers"], 1)
            print(f"{label:<10} page {p['feature']}: {ratio:.1f}x fewer token-layers than naive")
        if "naive_first_page" in run:
            n = run["naive_first_page"]
            print(
                f"{label:<10} naive first page: ~{n['seconds']:.2f} s (scaled from "
                f"{n['timed_examples']} examples), {n['forward_passes']} passes"
            )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
