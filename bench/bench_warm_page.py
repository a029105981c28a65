"""The warm Feature page of a large precompute output, on the server (issue 14's target:
under 0.2 s for any feature of a 131,072-feature output).

Workload: the tiny model of ``tests/tiny.py`` (d_model 32, a word-level tokenizer) with a
standard SAE of ``--d-sae`` features whose biases make about ``--l0`` of them fire per
token (each on about ``l0 / d_sae`` of tokens), over ``--n-seq`` x ``--seq-len`` tokens.
The precompute output is built once with ``python -m core precompute --outputs memo`` in
process (the config from the command line's own parser, the sources given live) under
``--work``/d<d_sae>/ and reused afterwards (``--rebuild`` builds it again; an interrupted
build is resumed).

Then, each in a fresh process, for ``--n-features`` features spread over the index range
(0, the middle, the last, and others drawn with a fixed seed):

* ``data``: ``core.precomputed.open_precomputed`` and ``.feature(i)``; the open and the first
  feature of the process are timed apart from the later ones;
* ``page``: Streamlit's ``AppTest`` running the app on the Feature page with the output as
  this session's sources (``{"precomputed": path}``) and ``?feature=i``; one warm-up run,
  then ``at.run()`` timed per feature.

    .venv/bin/python bench/bench_warm_page.py                  # 131,072 features
    .venv/bin/python bench/bench_warm_page.py --d-sae 8192 --out /tmp/warm-8192.json

One JSON object is printed and written to ``bench/results-warm-page.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "bench" / "out" / "warm-page"  # git-ignored
OUT = ROOT / "bench" / "results-warm-page.json"
APP = ROOT / "app.py"
FEATURE_PAGE = "pages/feature.py"
TARGET_SECONDS = 0.2
BUILT = "built.json"  # written last: an output without it is built again
CALIBRATION_TOKENS = 8192  # activations the encoder biases are set on


def output_dir(work: Path, d_sae: int) -> Path:
    return work / f"d{d_sae}"


# --- building the precompute output (a child process) ------------------------------------------
def build(opts: dict[str, Any]) -> dict[str, Any]:
    """The precompute output of the tiny workload, the command line's way."""
    import torch

    from core.cli import build_parser
    from core.dictionaries.saelens import SAELensDictionary
    from core.memo import Memo
    from core.models import ModelAdapter
    from core.precompute.args import config_from_args
    from core.precompute.run import Sources, run_precompute
    from tests.app.fixtures import make_tokenizer
    from tests.tiny import HOOK, make_model, make_sae, prepare_process, random_tokens

    prepare_process()
    d_sae, n_seq, seq_len = opts["d_sae"], opts["n_seq"], opts["seq_len"]
    tok = make_tokenizer()
    d_vocab = len(tok.get_vocab())
    model = make_model(d_vocab=d_vocab, n_ctx=seq_len, model_name="tiny-bench", tokenizer=tok)
    adapter = ModelAdapter(model, {"kind": "test", "name": "tiny-bench"}, bos_token_id=0)
    tokens = random_tokens(n_seq, seq_len, seed=1, d_vocab=d_vocab)
    sae = make_sae("standard", model.cfg.d_model, d_sae, HOOK)
    with torch.no_grad():
        sample = adapter.run_to_hooks(tokens[: max(1, CALIBRATION_TOKENS // seq_len)], [HOOK])
    l0 = calibrate(sae, sample[HOOK].reshape(-1, model.cfg.d_model), opts["l0"] / d_sae)
    dictionary = SAELensDictionary(sae, source={"kind": "test", "name": f"tiny-bench-{d_sae}"})

    out = Path(opts["output"])
    argv = [
        "precompute", "--output-dir", str(out), "--outputs", "memo", "--no-progress",
        "--n-prompts", str(n_seq), "--n-tokens-in-prompt", str(seq_len), "--device", "cpu",
    ]  # fmt: skip
    parser, _ = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    dataset = {"kind": "test", "name": "random words", "n_sequences": n_seq}
    src = Sources(adapter, dictionary, tokens, dataset)
    app_memo = Memo(out.parent / f"app-memo-d{d_sae}")  # never the project's cache
    t = time.perf_counter()
    try:
        got = run_precompute(cfg, src, app_memo=app_memo)
    finally:
        app_memo.close()
    seconds = time.perf_counter() - t
    return {
        "build_seconds": seconds,
        "calibration_l0": l0,
        "features_requested": got["features_requested"],
        "chunks": got["chunks_total"],
        "memo_bytes": sum(p.stat().st_size for p in (out / "memo").rglob("*") if p.is_file()),
    }


def calibrate(sae: Any, sample: Any, density: float, block: int = 4096) -> float:
    """Set ``sae``'s encoder biases so each feature fires on about ``density`` of the
    ``sample`` activations, ``block`` features at a time (``make_sae``'s calibration takes
    the quantile of every feature at once, more values than ``torch.quantile`` accepts).
    Returns the L0 on the sample (active features per activation)."""
    import torch

    n = sample.shape[0]
    k = min(n, max(1, round(n * (1 - density))))
    active = 0
    with torch.no_grad():
        x = sample - sae.b_dec
        for lo in range(0, sae.W_enc.shape[1], block):
            pre = x @ sae.W_enc[:, lo : lo + block]
            b = -pre.kthvalue(k, dim=0).values
            sae.b_enc[lo : lo + block] = b
            active += int((pre + b > 0).sum())
    return active / n


# --- the features measured ----------------------------------------------------------------------
def pick_features(d_sae: int, count: int, seed: int = 0) -> list[int]:
    """0, the middle, the last, and others drawn with ``seed``; ascending, distinct."""
    chosen = {0, (d_sae - 1) // 2, d_sae - 1}
    rng = random.Random(seed)
    while len(chosen) < min(count, d_sae):
        chosen.add(rng.randrange(d_sae))
    return sorted(chosen)


def stored_near(store: Any, targets: list[int]) -> list[int]:
    """Each target, or the nearest feature the output stores when the target was skipped."""
    done = store.stored_features()
    if not done:
        raise RuntimeError(f"{store.path} stores no feature: build it again with --rebuild")
    out = []
    for t in targets:
        best = t if store.has(t) else min(done, key=lambda f: (abs(f - t), f))
        if best not in out:
            out.append(best)
    return out


# --- measurements (each a child process) ------------------------------------------------------
def measure_data(opts: dict[str, Any]) -> dict[str, Any]:
    """``open_precomputed`` + ``.feature(i)``: the open, the first feature, the later ones."""
    from core.precomputed import PrecomputedError, open_precomputed

    t = time.perf_counter()
    store = open_precomputed(opts["output"])
    open_s = time.perf_counter() - t
    features = opts["features"]
    seconds: dict[str, float] = {}
    for i in features:
        t = time.perf_counter()
        fd = store.feature(i)
        seconds[str(i)] = time.perf_counter() - t
        assert fd.index == i, (fd.index, i)
    skipped = opts.get("skipped")
    extra: dict[str, Any] = {}
    if skipped is not None:  # its page says why it was skipped
        t = time.perf_counter()
        try:
            store.feature(skipped)
        except PrecomputedError as exc:
            extra = {"skipped_seconds": time.perf_counter() - t, "skipped_message": str(exc)}
        else:
            raise RuntimeError(f"feature {skipped} was not skipped")
    store.close()
    later = [seconds[str(i)] for i in features[1:]] or [0.0]
    return {
        "open_seconds": open_s,
        "first_feature": features[0],
        "first_seconds": seconds[str(features[0])],
        "later_median_seconds": statistics.median(later),
        "later_max_seconds": max(later),
        "seconds": seconds,
        **extra,
    }


def measure_page(opts: dict[str, Any]) -> dict[str, Any]:
    """The Feature page in ``AppTest`` on the precomputed output: a warm-up run, then one
    timed ``at.run()`` per feature."""
    from streamlit.testing.v1 import AppTest

    features = opts["features"]
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.session_state["fs_sources"] = {"precomputed": str(opts["output"])}
    at.switch_page(FEATURE_PAGE)
    at.query_params["feature"] = str(features[0])
    t = time.perf_counter()
    at.run()
    warmup_s = time.perf_counter() - t
    _check_page(at, features[0])
    seconds: dict[str, float] = {}
    for i in features:
        at.query_params["feature"] = str(i)
        t = time.perf_counter()
        at.run()
        seconds[str(i)] = time.perf_counter() - t
        _check_page(at, i)
    extra: dict[str, Any] = {}
    skipped = opts.get("skipped")
    if skipped is not None:  # the page of a feature the run skipped: an explanation
        at.query_params["feature"] = str(skipped)
        t = time.perf_counter()
        at.run()
        extra["skipped_seconds"] = time.perf_counter() - t
        if not any("was skipped" in str(e.value) for e in at.error):
            raise RuntimeError(f"the page of skipped feature {skipped} did not say so")
    values = list(seconds.values())
    return {
        **extra,
        "warmup_seconds": warmup_s,
        "median_seconds": statistics.median(values),
        "max_seconds": max(values),
        "seconds": seconds,
    }


def _check_page(at: Any, i: int) -> None:
    """The run showed feature ``i``'s dashboard, without an exception or an error."""
    if at.exception:
        raise RuntimeError(f"feature {i}: {[e.value for e in at.exception]}")
    if at.error:
        raise RuntimeError(f"feature {i}: {[e.value for e in at.error]}")
    if not any(f"## Feature {i}" in str(m.value) for m in at.markdown):
        raise RuntimeError(f"the page did not show feature {i}")


# --- the parent -----------------------------------------------------------------------------------
def child(name: str, opts: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run ``name`` in a fresh process (its own memo and knowledge store under ``tmp``)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FEATURESCOPE_")},
        "PYTHONPATH": str(ROOT),
        "FEATURESCOPE_CACHE_DIR": str(tmp / "memo"),
        "FEATURESCOPE_DB": str(tmp / "knowledge.db"),
    }
    cmd = [sys.executable, __file__, "--child", name, "--opts", json.dumps(opts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {name} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def ensure_output(args: argparse.Namespace, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The precompute output of this size, built unless a finished one is there."""
    out = output_dir(args.work, args.d_sae)
    marker = out / BUILT
    wanted = {"d_sae": args.d_sae, "n_seq": args.n_seq, "seq_len": args.seq_len}
    wanted["l0"] = args.l0
    if marker.is_file() and not args.rebuild:
        built = json.loads(marker.read_text())
        if built.get("workload") == wanted:
            return out, {**built, "reused": True}
    # an unfinished build (no marker) is resumed: the precompute continues its chunks
    resumed = (out / "manifest.json").is_file() and not marker.is_file() and not args.rebuild
    if not resumed:
        shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    got = child("build", {**wanted, "output": str(out)}, tmp)
    built = {"workload": wanted, **got, "resumed": resumed}
    marker.write_text(json.dumps(built, indent=1) + "\n")
    return out, {**built, "reused": False}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-sae", type=int, default=131072, help="features of the dictionary")
    ap.add_argument("--n-seq", type=int, default=256, help="sequences of the token set")
    ap.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    ap.add_argument("--l0", type=float, default=64, help="active features per token (about)")
    ap.add_argument("--n-features", type=int, default=20, help="features measured")
    ap.add_argument("--rebuild", action="store_true", help="build the output again")
    ap.add_argument("--work", type=Path, default=WORK, help="where the outputs are built")
    ap.add_argument("--out", type=Path, default=OUT, help="the results JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--opts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run = {"build": build, "data": measure_data, "page": measure_page}[args.child]
        print(json.dumps(run(json.loads(args.opts))))
        return 0
    if args.d_sae < 1 or args.n_features < 1 or not 0 < args.l0 <= args.d_sae:
        ap.error("--d-sae and --n-features must be at least 1, --l0 between 0 and --d-sae")

    from core.precomputed import open_precomputed

    with tempfile.TemporaryDirectory(prefix="warm-page-") as tmp_name:
        tmp = Path(tmp_name)
        out, built = ensure_output(args, tmp)
        with open_precomputed(out) as store:
            features = stored_near(store, pick_features(args.d_sae, args.n_features))
            skipped = sorted(store.skipped)
        # a skipped feature from the middle of the range, when the run skipped any
        opts = {"output": str(out), "features": features}
        opts["skipped"] = skipped[len(skipped) // 2] if skipped else None
        data = child("data", opts, tmp)
        page = child("page", opts, tmp)
    result = {
        "d_sae": args.d_sae,
        "output": str(out),
        "build": built,
        "features": features,
        "skipped_feature": opts["skipped"],
        "data": data,
        "page": page,
        "median_seconds": page["median_seconds"],
        "max_seconds": page["max_seconds"],
        "target_seconds": TARGET_SECONDS,
        "meets_target": page["max_seconds"] < TARGET_SECONDS,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
