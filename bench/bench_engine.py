"""Engine benchmark, side by side with SAEDashboard 0.8.0 on one shared workload.

Each measurement runs in its own process (so peak memory is per run); the runs
alternate between the two tools in one invocation. Figures go to
``bench/results-<device>.json`` and are printed as a table with ratios.

    .venv/bin/python bench/bench_engine.py                 # everything (long)
    .venv/bin/python bench/bench_engine.py --only ours     # our runs only
    .venv/bin/python bench/bench_engine.py --scenarios floor,ours64,peer64

The peer needs ``bash bench/setup_peer.sh`` once. Workload: see ``bench/workload.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PEER_PY = ROOT / "bench" / ".peer-venv" / "bin" / "python"
WORKLOAD = ROOT / "bench" / ".workload"

# name -> (tool, features, extra options)
SCENARIOS: dict[str, tuple[str, str, dict]] = {
    "floor": ("floor", "", {}),
    "ours64": ("ours", "0:64", {"feature_correlation": "requested"}),
    "peer64": ("peer", "0:64", {}),
    "ours64_all": ("ours", "0:64", {"feature_correlation": "all"}),
    "ours1024_cold": ("ours", "0:1024", {"feature_correlation": "requested", "store": "fresh"}),
    "peer1024_cold": ("peer", "0:1024", {"cache": "cold"}),
    "ours1024_warm": ("ours", "0:1024", {"feature_correlation": "requested", "store": "warm"}),
    "peer1024_warm": ("peer", "0:1024", {"cache": "warm"}),
    "ours1024_all_warm": ("ours", "0:1024", {"feature_correlation": "all", "store": "warm"}),
    "ours_all": ("ours", "all", {"feature_correlation": "all"}),
    "ours_all_int8": ("ours", "all", {"feature_correlation": "all", "gram_precision": "int8"}),
    "ours_all_bf16": ("ours", "all", {"feature_correlation": "all", "dtype": "bfloat16"}),
}
ORDER = list(SCENARIOS)
STORE = ROOT / "bench" / "out" / "activations"


class PeakRss:
    """Samples this process's RSS (ru_maxrss misses memory freed before the end)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(self.peak, ru)


def load_workload(device: str = "cpu"):
    import torch
    from sae_lens import SAE
    from safetensors.torch import load_file

    from bench.workload import load_model_state
    from core.dictionaries.saelens import SAELensDictionary
    from core.models import ModelAdapter
    from tests.tiny import hooked_transformer

    cfg = json.loads((WORKLOAD / "model_cfg.json").read_text())
    model = hooked_transformer(cfg)
    load_model_state(model, WORKLOAD / "model.safetensors")
    model.to(device)
    tokens = load_file(str(WORKLOAD / "tokens.safetensors"))["tokens"]
    sae = SAE.load_from_disk(str(WORKLOAD / "sae"), device=device)
    torch.manual_seed(0)
    return (
        ModelAdapter(model, {"name": "bench-gpt2-shaped"}, bos_token_id=50256),
        SAELensDictionary(sae),
        tokens,
    )


class NotWarm(RuntimeError):
    """A warm scenario whose activation store cannot be filled (it would silently run cold)."""


def prepare_store(model, dictionary, tokens, cfg, mode: str | None, directory: Path = STORE):
    """The activation store a scenario runs with, made ready before the clock starts.

    ``fresh`` empties it (the run computes and stores the activations: cold); ``warm``
    fills it first when it lacks this workload's activations (an untimed sweep of one
    feature) and raises :class:`NotWarm` when they still cannot be kept, so a warm
    figure is never a cold run. ``None``: no store.
    """
    import dataclasses

    from core.engine.activations import ActivationStore
    from core.engine.sweep import activation_key, run_sweep

    if mode is None:
        return None
    store = ActivationStore(directory)
    if mode == "fresh":
        for f in Path(directory).glob("*.safetensors"):
            f.unlink()
        return store
    key = activation_key(store, model, dictionary, tokens, cfg)
    if store.path(key).is_file():
        return store
    fill = dataclasses.replace(cfg, features=[0], feature_correlation="none")
    run_sweep(model, dictionary, tokens, fill, activation_store=store)
    if not store.path(key).is_file():
        raise NotWarm(
            f"the activation store {directory} cannot hold this workload's activations "
            "(larger than activation_cache_bytes or the store's limit, or not writable): a "
            "warm run would be cold"
        )
    return store


def ran_label(result: dict) -> str:
    """How a scenario ran, for the table: warm (no forward pass), cold, or the peer's state."""
    if "forward_passes" in result and result.get("tool") == "ours":
        return "warm" if result["forward_passes"] == 0 else "cold"
    return str(result.get("cache_state") or "-")


def run_one(name: str, device: str, batch_size: int) -> dict:
    """Child process body: one measurement, printed as JSON."""
    import torch

    from core.config import RunConfig, parse_features
    from core.engine.sweep import run_sweep

    tool, feats, opts = SCENARIOS[name]
    t0 = time.perf_counter()
    model, dictionary, tokens = load_workload(device)
    load_s = time.perf_counter() - t0
    cfg = store = None
    if tool != "floor":
        cfg = RunConfig(
            features=parse_features(feats, dictionary.n_features),
            batch_size=batch_size,
            device=device,
            **{k: v for k, v in opts.items() if k not in ("cache", "store")},
        )
        try:
            store = prepare_store(model, dictionary, tokens, cfg, opts.get("store"))
        except NotWarm as exc:
            return {"scenario": name, "tool": tool, "error": str(exc)}
    with PeakRss() as mem:
        t = time.perf_counter()
        if cfg is None:
            with torch.no_grad():
                for i in range(0, tokens.shape[0], batch_size):
                    model.run_to_hooks(tokens[i : i + batch_size].to(device), [dictionary.hook_in])
            n_feat = 0
            passes = -(-tokens.shape[0] // batch_size)
        else:
            res = run_sweep(model, dictionary, tokens, cfg, activation_store=store)
            n_feat = len(res.features)
            passes = res.info.forward_passes
            assert n_feat == len(cfg.features or range(dictionary.n_features))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    out = {
        "scenario": name,
        "tool": "ours" if tool == "ours" else tool,
        "features": feats,
        "n_features": n_feat,
        "seconds": seconds,
        "load_seconds": load_s,
        "peak_rss_mb": mem.peak / 2**20,
        "forward_passes": passes,
        "options": opts,
        "torch_threads": torch.get_num_threads(),
    }
    out["ran"] = ran_label(out) if tool == "ours" else "-"
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def run_peer(name: str, tmp: Path) -> dict:
    _, feats, opts = SCENARIOS[name]
    cmd = [
        str(PEER_PY),
        str(ROOT / "bench" / "peer_saedashboard.py"),
        "--workload",
        str(WORKLOAD),
        "--features",
        feats,
    ]
    if opts.get("cache"):
        cmd += ["--cache-dir", str(tmp / "cache")]
        if opts["cache"] == "warm":
            cmd.append("--warm-cache")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"scenario": name, "tool": "saedashboard", "error": proc.stderr[-2000:]}
    runs = [json.loads(ln) for ln in lines]
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["scenario"] = name
    best["all_runs"] = [dict(r) for r in runs]
    return best


def format_table(results: list[dict]) -> str:
    """The printed table; the ``ran`` column says whether a run was warm or cold."""
    lines = [f"{'scenario':<20}{'seconds':>10}{'peak MB':>10}{'passes':>8}  ran"]
    for r in results:
        if "seconds" in r:
            lines.append(
                f"{r['scenario']:<20}{r['seconds']:>10.1f}{r.get('peak_rss_mb') or 0:>10.0f}"
                f"{r.get('forward_passes', ''):>8}  {ran_label(r)}"
            )
        else:
            lines.append(f"{r['scenario']:<20}  ERROR {str(r.get('error', ''))[:200]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--scenarios", default=",".join(ORDER))
    ap.add_argument("--only", choices=["ours", "peer"], default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-seq", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args.one, args.device, args.batch_size)), flush=True)
        return 0

    from bench.workload import prepare

    prepare(WORKLOAD, n_seq=args.n_seq)
    names = [s for s in args.scenarios.split(",") if s]
    if args.only:
        names = [n for n in names if (SCENARIOS[n][0] == "peer") == (args.only == "peer")]
    tmp = ROOT / "bench" / "out"
    tmp.mkdir(exist_ok=True)
    results = []
    for name in names:
        print(f"--- {name}", file=sys.stderr, flush=True)
        if SCENARIOS[name][0] == "peer":
            if not PEER_PY.exists():
                results.append(
                    {"scenario": name, "error": "peer venv missing: bash bench/setup_peer.sh"}
                )
                continue
            r = run_peer(name, tmp)
        else:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
            ]
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            r = json.loads(lines[-1]) if lines else {"scenario": name, "error": proc.stderr[-2000:]}
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)

    by = {r["scenario"]: r for r in results if "seconds" in r}
    ratios = {}

    def ratio(a: str, b: str) -> float | None:
        return by[a]["seconds"] / by[b]["seconds"] if a in by and b in by else None

    ratios["peer64_over_ours64"] = ratio("peer64", "ours64")
    ratios["ours64_over_floor"] = ratio("ours64", "floor")
    ratios["ours64_all_over_ours64"] = ratio("ours64_all", "ours64")
    ratios["peer1024_cold_over_ours1024_cold"] = ratio("peer1024_cold", "ours1024_cold")
    ratios["peer1024_warm_over_ours1024_warm"] = ratio("peer1024_warm", "ours1024_warm")
    ratios["peer1024_warm_over_ours1024_cold"] = ratio("peer1024_warm", "ours1024_cold")
    best_peer = min(
        (by[k]["seconds"] for k in ("peer1024_cold", "peer1024_warm") if k in by), default=None
    )
    if best_peer is not None:
        est = best_peer * 24576 / 1024
        ratios["peer_all_extrapolated_seconds"] = est
        for k in ("ours_all", "ours_all_int8", "ours_all_bf16"):
            if k in by:
                ratios[f"peer_all_extrapolated_over_{k}"] = est / by[k]["seconds"]
    summary = {
        "device": args.device,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "workload": json.loads((WORKLOAD / "workload.json").read_text()),
        "results": results,
        "ratios": ratios,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = (
        Path(args.out) if args.out else ROOT / "bench" / f"results-{args.device.split(':')[0]}.json"
    )
    out.write_text(json.dumps(summary, indent=2))
    print(format_table(results))
    for k, v in ratios.items():
        if v is not None:
            print(f"{k}: {v:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
