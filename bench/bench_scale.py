"""The realistic end-to-end benchmark: whole dictionaries of real size, phase by phase.

Workload: the gpt2-small-shaped random model of ``bench/workload.py`` with a dictionary of
``--d-sae`` features (24,576 or 131,072) whose biases are calibrated to about ``--l0``
active features per token, over ``--n-seq`` x 128 tokens (256 or 2,048 sequences).
Scenarios, each in its own process, with time and peak RSS per phase: ``floor`` (the bare
forward to the hook), ``phases`` (the app's "compute all": ``sweep``, then 512 features at a
time ``assembly``, ``serialisation``, ``writing`` to the memo and Neuronpedia files),
``precompute`` (``python -m core precompute`` in process) and ``peer1024_warm``
(SAEDashboard, features 0-1,023, extrapolated). ``bench/README.md`` says what each covers.

    .venv/bin/python bench/bench_scale.py                                   # 24,576 x 256 seqs
    .venv/bin/python bench/bench_scale.py --d-sae 131072 --n-seq 2048 --scenarios floor,phases

Results go to ``bench/results-scale.json`` (``--out``); ratios are to the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER_PY = ROOT / "bench" / ".peer-venv" / "bin" / "python"
WORKLOADS = ROOT / "bench" / "out" / "workloads"  # git-ignored
WORK = ROOT / "bench" / "out" / "scale"
OUT = ROOT / "bench" / "results-scale.json"
SCENARIOS = ("floor", "phases", "precompute", "peer1024_warm")
PHASES = ("sweep", "assembly", "serialisation", "writing")
CHUNK = 512  # features per assembly/serialisation/writing step and per batch file (the CLI's)
PEER_FEATURES = 1024
SEQ_LEN = 128
MB = 2**20


class PhaseMeter:
    """Wall time and peak RSS per named phase of this process.

    ``ru_maxrss_mb`` is ``getrusage``'s peak at the end of the phase. On Linux the peak is
    reset when each phase starts (``/proc/self/clear_refs``), so it is the kernel's exact
    peak of that phase (``peak_reset`` true); elsewhere it is the peak so far. A sampler
    thread also reads the RSS every ``interval`` seconds, this process's and its child
    processes' together (a precompute's batch writers), and charges it to the phase running
    then (and at each phase's start and end); ``peak_rss_mb`` is the larger of the two.
    Phases that repeat (chunk by chunk) add their times and keep their largest peak.
    """

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._current: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.phases: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        import psutil

        rss = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):  # the run's writer processes
            with contextlib.suppress(psutil.Error):
                rss += child.memory_info().rss
        with self._lock:
            if self._current is not None:
                p = self.phases[self._current]
                p["peak_rss_mb"] = max(p["peak_rss_mb"], rss / MB)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> PhaseMeter:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, float]]:
        """Time one (possibly repeated) phase; repeats add up."""
        p = self.phases.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
        with self._lock:
            self._current = name
        p["peak_reset"] = self._reset_peak()
        self._sample()
        t = time.perf_counter()
        try:
            yield p
        finally:
            p["seconds"] += time.perf_counter() - t
            p["calls"] += 1
            self._sample()
            with self._lock:
                self._current = None
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            p["ru_maxrss_mb"] = max(p.get("ru_maxrss_mb", 0.0), ru)
            if p["peak_reset"]:
                p["peak_rss_mb"] = max(p["peak_rss_mb"], ru)


# --- workload -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Parts:
    model: Any  # core.models.ModelAdapter
    dictionary: Any  # core.dictionaries.saelens.SAELensDictionary
    tokens: Any  # int64 [n_seq, seq_len]
    sae_dir: Path | None  # the SAELens directory (the CLI path names it)
    workload: dict[str, Any]


def workload_dir(d_sae: int, n_seq: int, l0: float) -> Path:
    return WORKLOADS / f"d{d_sae}-n{n_seq}-l0{l0:g}"


def load_parts(wl: Path, device: str) -> Parts:
    """The workload written by ``bench/workload.py`` as live engine inputs."""
    from sae_lens import SAE
    from safetensors.torch import load_file

    from bench.workload import BOS, load_model_state
    from core.dictionaries.saelens import SAELensDictionary
    from core.models import ModelAdapter
    from tests.tiny import hooked_transformer

    model = hooked_transformer(json.loads((wl / "model_cfg.json").read_text()))
    load_model_state(model, wl / "model.safetensors")
    model.to(device)
    tokens = load_file(str(wl / "tokens.safetensors"))["tokens"]
    sae = SAE.load_from_disk(str(wl / "sae"), device=device)
    meta = json.loads((wl / "workload.json").read_text())
    return Parts(
        ModelAdapter(model, {"name": "bench-gpt2-shaped"}, bos_token_id=BOS),
        SAELensDictionary(sae),
        tokens,
        wl / "sae",
        meta,
    )


def tiny_parts() -> Parts:
    """A tiny model and SAE from ``tests/tiny.py``: the test runs every phase on these."""
    from core.dictionaries.saelens import SAELensDictionary
    from core.models import ModelAdapter
    from tests.tiny import HOOK, make_model, make_sae, random_tokens

    model = make_model()
    tokens = random_tokens(8, 16, seed=1)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    sample = cache[HOOK].reshape(-1, model.cfg.d_model)
    sae = make_sae("standard", model.cfg.d_model, 24, HOOK, sample, density=0.2)
    adapter = ModelAdapter(model, {"name": "tiny"}, bos_token_id=0)
    return Parts(adapter, SAELensDictionary(sae), tokens, None, {"tiny": True})


def run_config(opts: dict[str, Any], n_features: int):
    """The engine settings of a scenario; ``memory_budget`` only where RunConfig has it."""
    from core.config import RunConfig, parse_features

    fields: dict[str, Any] = {
        "features": parse_features(opts["features"], n_features),
        "batch_size": opts["batch_size"],
        "device": opts["device"],
        "feature_correlation": opts["feature_correlation"],
    }
    if opts.get("memory_budget") is not None and memory_budget_supported():
        fields["memory_budget"] = opts["memory_budget"]
    return RunConfig(**fields)


def memory_budget_supported() -> bool:
    from core.config import RunConfig

    return "memory_budget" in {f.name for f in dataclasses.fields(RunConfig)}


# --- scenarios ----------------------------------------------------------------------------------
def floor(parts: Parts, meter: PhaseMeter, opts: dict[str, Any]) -> dict[str, Any]:
    import torch

    bs, hook = opts["batch_size"], parts.dictionary.hook_in
    with meter.phase("forward"), torch.no_grad():
        for i in range(0, parts.tokens.shape[0], bs):
            parts.model.run_to_hooks(parts.tokens[i : i + bs].to(opts["device"]), [hook])
    return {}


def _neuronpedia_meta(parts: Parts):
    from core.export.neuronpedia import NeuronpediaMeta
    from core.models import hook_layer

    return NeuronpediaMeta(
        model_id="bench-gpt2-shaped",
        layer=hook_layer(parts.dictionary.hook_in) or 0,
        sae_set="bench-scale",
        dataset="random tokens",
        n_prompts_total=int(parts.tokens.shape[0]),
        n_tokens_in_prompt=int(parts.tokens.shape[1]),
    )


def phases(parts: Parts, meter: PhaseMeter, opts: dict[str, Any], work: Path) -> dict[str, Any]:
    """``compute_features`` into a memo plus the Neuronpedia files, one phase at a time."""
    import torch

    from core.engine.cached import source_key
    from core.engine.features import gc_paused
    from core.engine.sweep import prepare_tokens, run_sweep
    from core.export.neuronpedia import batch_to_neuronpedia, write_batch
    from core.memo import Memo, feature_key, feature_prefix
    from core.precompute.manifest import NO_EVICTION
    from core.precompute.run import is_skipped

    d = parts.dictionary
    cfg = run_config(opts, d.n_features)
    tokens = prepare_tokens(parts.tokens, cfg)
    marks: dict[str, float] = {}

    def progress(frac: float, msg: str) -> None:
        marks[msg.split(":")[0]] = time.perf_counter()

    with meter.phase("sweep") as sweep:
        t0 = time.perf_counter()
        res = run_sweep(parts.model, d, tokens, cfg, progress=progress)
    end = t0 + sweep["seconds"]
    p1, p2 = marks.get("pass 1", t0), marks.get("pass 2", marks.get("pass 1", t0))
    sweep["split"] = {"pass1": p1 - t0, "pass2": p2 - p1, "collect": end - p2}
    meta = _neuronpedia_meta(parts)
    prefix = feature_prefix(
        source_key(parts.model, d, tokens, cfg), cfg.feature_correlation, list(res.features)
    )
    memo = Memo(work / "memo", size_limit=NO_EVICTION)
    order = list(res.features)
    n_bytes = 0
    # built CHUNK rows at a time, as the app and the runner build them (FeatureSet.batches),
    # with the cyclic collector paused throughout, as their stream_features pauses it
    built = res.features.batches(CHUNK, keep=False)
    try:
        with gc_paused():
            for k in range(0, len(order), CHUNK):
                chunk = order[k : k + CHUNK]
                with meter.phase("assembly"):
                    fds = [fd for _, fd in next(built)]
                with meter.phase("serialisation"):  # the rows slice the columns again
                    blobs = res.features.row_bytes(k, k + len(chunk))
                with meter.phase("writing"):
                    keys = [feature_key(prefix, f) for f in chunk]
                    if memo.put_rows(zip(keys, blobs, strict=True)) != len(chunk):
                        raise RuntimeError(f"could not write to {memo.directory}")
                    n_bytes += sum(map(len, blobs))
                    shown = [fd for fd in fds if not is_skipped(fd, 0.0)]
                    idx = [fd.index for fd in shown]
                    vectors = {}
                    if idx:
                        with torch.no_grad():
                            w = d.decoder_directions(torch.tensor(idx, device=parts.model.device))
                        vectors = dict(zip(idx, w.float().cpu().tolist(), strict=True))
                    batch = batch_to_neuronpedia(shown, meta, vectors)
                    write_batch(
                        work / "neuronpedia" / f"batch-{k // CHUNK}.json", batch, validate=2
                    )
    finally:
        memo.close()
    return {
        "n_features": len(order),
        "forward_passes": res.info.forward_passes,
        "memo_bytes": n_bytes,
        "mean_feature_bytes": n_bytes / max(1, len(order)),
    }


def precompute(parts: Parts, meter: PhaseMeter, opts: dict[str, Any], work: Path) -> dict[str, Any]:
    """``python -m core precompute`` in process, with a config built by the CLI's parser."""
    from core.cli import build_parser
    from core.memo import Memo
    from core.precompute.args import config_from_args
    from core.precompute.run import Sources, run_precompute

    argv = ["precompute", "--output-dir", str(work / "output"), "--outputs", "memo,neuronpedia"]
    if parts.sae_dir is not None:
        argv += ["--sae-path", str(parts.sae_dir), "--from-local-sae"]
    argv += [
        "--features", opts["features"], "--correlation", opts["feature_correlation"],
        "--device", opts["device"], "--batch-size", str(opts["batch_size"]),
        "--n-prompts", str(parts.tokens.shape[0]),
        "--n-tokens-in-prompt", str(parts.tokens.shape[1]), "--no-progress",
    ]  # fmt: skip
    parser, _ = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    if opts.get("memory_budget") is not None and memory_budget_supported():
        cfg.run = dataclasses.replace(cfg.run, memory_budget=opts["memory_budget"])
    dataset = {"name": "bench random tokens", "n_sequences": int(parts.tokens.shape[0])}
    src = Sources(parts.model, parts.dictionary, parts.tokens, dataset)
    app_memo = Memo(work / "app-memo")
    try:
        with meter.phase("precompute"):
            got = run_precompute(cfg, src, app_memo=app_memo)
    finally:
        app_memo.close()
    return {"n_features": got["features_requested"], "chunks": got["chunks_total"]}


def run_one(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Child process body: one scenario on a freshly loaded workload."""
    import torch

    from tests.tiny import prepare_process

    prepare_process()
    t = time.perf_counter()
    parts = tiny_parts() if opts.get("tiny") else load_parts(Path(opts["workload"]), opts["device"])
    load_s = time.perf_counter() - t
    work = Path(opts["work"]) / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with PhaseMeter() as meter:
            if name == "floor":
                extra = floor(parts, meter, opts)
            elif name == "phases":
                extra = phases(parts, meter, opts, work)
            elif name == "precompute":
                extra = precompute(parts, meter, opts, work)
            else:
                raise ValueError(f"unknown scenario {name!r}")
        if opts["device"].startswith("cuda"):
            extra["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / MB
            extra["gpu"] = torch.cuda.get_device_name()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "scenario": name,
        "tool": "ours",
        "load_seconds": load_s,
        "phases": meter.phases,
        "seconds": sum(p["seconds"] for p in meter.phases.values()),
        "peak_rss_mb": max(p["peak_rss_mb"] for p in meter.phases.values()),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def run_peer(wl: Path, cache: Path) -> dict[str, Any]:
    """SAEDashboard on features 0-1,023 with its activation cache warm (filled untimed)."""
    if not PEER_PY.exists():
        return {
            "scenario": "peer1024_warm",
            "skipped": "peer venv missing: bash bench/setup_peer.sh",
        }
    script = str(ROOT / "bench" / "peer_saedashboard.py")
    base = [str(PEER_PY), script, "--workload", str(wl), "--cache-dir", str(cache)]

    def run(features: str, warm: bool) -> subprocess.CompletedProcess[str]:
        cmd = base + ["--features", features] + (["--warm-cache"] if warm else [])
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    proc = run(f"0:{PEER_FEATURES}", warm=True)
    if proc.returncode != 0:  # no cache of this workload yet: fill it (untimed), then again
        run("0:1", warm=False)
        proc = run(f"0:{PEER_FEATURES}", warm=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"scenario": "peer1024_warm", "tool": "saedashboard", "error": proc.stderr[-2000:]}
    runs = [json.loads(ln) for ln in lines]
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best.update(scenario="peer1024_warm", tool="saedashboard", all_runs=runs)
    return best


# --- the parent -----------------------------------------------------------------------------------
def child(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", name, "--opts", json.dumps(opts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"scenario": name, "error": proc.stderr[-3000:]}
    return json.loads(lines[-1])


def ratios(results: list[dict[str, Any]], n_features: int) -> dict[str, float]:
    """Every phase and total to the floor; SAEDashboard extrapolated over ours."""
    by = {r["scenario"]: r for r in results if "seconds" in r}
    out: dict[str, float] = {}
    base = by.get("floor", {}).get("seconds")
    for name in ("phases", "precompute"):
        if base and name in by:
            out[f"{name}_over_floor"] = by[name]["seconds"] / base
            for phase, p in by[name]["phases"].items():
                if phase != name:  # (precompute is one phase)
                    out[f"{name}.{phase}_over_floor"] = p["seconds"] / base
    if "peer1024_warm" in by:
        est = by["peer1024_warm"]["seconds"] * n_features / PEER_FEATURES
        out["peer_extrapolated_seconds"] = est
        for name in ("phases", "precompute"):
            if name in by:
                out[f"peer_extrapolated_over_{name}"] = est / by[name]["seconds"]
    return out


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'scenario / phase':<28}{'seconds':>10}{'peak MB':>10}{'maxrss MB':>11}"]
    for r in results:
        if "phases" in r:
            lines.append(f"{r['scenario']:<28}{r['seconds']:>10.2f}{r['peak_rss_mb']:>10.0f}")
            for name, p in r["phases"].items():
                lines.append(
                    f"  {name:<26}{p['seconds']:>10.2f}{p['peak_rss_mb']:>10.0f}"
                    f"{p.get('ru_maxrss_mb', 0):>11.0f}"
                )
        elif "seconds" in r:
            lines.append(
                f"{r['scenario']:<28}{r['seconds']:>10.2f}{r.get('peak_rss_mb', 0):>10.0f}"
            )
        else:
            lines.append(
                f"{r['scenario']:<28}  {r.get('skipped') or 'ERROR ' + r.get('error', '')[:300]}"
            )
    return "\n".join(lines)


def parse_bytes(text: str | None) -> int | None:
    """``8G``, ``512M``, ``1000000``: bytes (``None`` stays ``None``)."""
    if text is None:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--opts", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test's workload
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--features", default="all", help="'all' or a range such as 0:1024")
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--n-seq", type=int, default=256)
    ap.add_argument("--l0", type=float, default=64.0, help="active features per token")
    ap.add_argument("--feature-correlation", choices=["all", "requested", "none"], default="all")
    ap.add_argument("--memory-budget", default=None, help="e.g. 8G (if RunConfig has the field)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", type=Path, default=WORK, help="scratch outputs (removed after)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args.one, json.loads(args.opts))), flush=True)
        return 0

    names = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    wl = workload_dir(args.d_sae, args.n_seq, args.l0)
    if args.tiny:
        workload: dict[str, Any] = {"tiny": True}
        n_features = 24
    else:
        from bench.workload import prepare

        prepare(wl, n_seq=args.n_seq, seq_len=SEQ_LEN, d_sae=args.d_sae, l0=args.l0)
        workload = json.loads((wl / "workload.json").read_text())
        n_features = args.d_sae
        for k in ("calib", "heldout"):
            if workload.get(f"{k}_density") is not None:
                workload[f"{k}_l0"] = workload[f"{k}_density"] * args.d_sae
    opts = {
        "workload": str(wl),
        "tiny": args.tiny,
        "features": args.features,
        "feature_correlation": args.feature_correlation,
        "memory_budget": parse_bytes(args.memory_budget),
        "device": args.device,
        "batch_size": args.batch_size,
        "work": str(args.work),
    }
    results = []
    for name in names:
        print(f"--- {name}", file=sys.stderr, flush=True)
        if name == "peer1024_warm":
            r = run_peer(wl, args.work / "peer-cache" / wl.name) if not args.tiny else {
                "scenario": name, "skipped": "no peer on the tiny workload"}  # fmt: skip
        else:
            r = child(name, opts)
        print(json.dumps(r)[:2000], file=sys.stderr, flush=True)
        results.append(r)
    if args.features != "all":
        from core.config import parse_features

        n_features = len(parse_features(args.features, n_features) or range(n_features))
    summary = {
        "device": args.device,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "options": {**opts, "memory_budget_supported": memory_budget_supported()},
        "workload": workload,
        "results": results,
        "ratios": ratios(results, n_features),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(format_table(results))
    for k, v in summary["ratios"].items():
        print(f"{k}: {v:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
