"""The GPU benchmark, ready to run on a lent card: prints one JSON object (and writes it).

Workload (``bench/workload.py``): the random gpt2-shaped model (12 layers, d_model 768), a
24,576-feature SAE at ``blocks.6.hook_resid_pre``, 4,096 x 128 random tokens. Scenarios,
each in its own process (so peak GPU memory is its own):

* ``floor_fp32``, ``floor_bf16``: the bare forward to the hook over every token;
* ``complete_fp32``, ``complete_bf16``: complete data for every feature end to end: the
  precompute (sweep, building every feature's data, the memo and the Neuronpedia files),
  through :func:`core.precompute.distributed.launch` as ``python -m core precompute`` runs it;
* with 2 or more GPUs, ``complete_bf16_1rank`` and ``complete_bf16_2ranks`` on 16,384 x 128
  tokens (``torchrun --nproc-per-node 2``, nccl): the speed-up of a second GPU;
* with ``--peer`` and ``bench/.peer-venv`` (``bench/setup_peer.sh``), SAEDashboard 0.8.0 on
  features 0-255 and 0-1,023 (its venv is CPU-only torch: the figures say so).

Targets (README "Scale out"): complete data in under 5 s (bf16) and 10 s (fp32) on one
H100/H200; 2 GPUs at least 1.8x faster than one on 16,384 x 128 tokens.

    .venv/bin/python bench/gpu.py                  # on a GPU machine, within 8 minutes
    .venv/bin/python bench/gpu.py --tiny           # the same code path on CPU, tiny sizes

``--tiny`` uses the tiny model and SAE of ``tests/tiny.py`` on the CPU, and gloo for the
2-rank scenario, so the script is known to work before a GPU is ever lent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_scale import (  # noqa: E402  (the project root is on the path first)
    PEER_PY,
    WORKLOADS,
    PhaseMeter,
    floor,
    load_parts,
    tiny_parts,
)

OUT = ROOT / "bench" / "out" / "results-gpu.json"
WORK = ROOT / "bench" / "out" / "gpu"
TORCHRUN = Path(sys.executable).parent / "torchrun"
D_SAE, N_SEQ, N_SEQ_RANKS, SEQ_LEN, L0 = 24576, 4096, 16384, 128, 64.0
MB = 2**20


# --- one scenario (a child process, or one torchrun rank) -----------------------------------------
def _parts(opts: dict[str, Any], n_seq: int):
    if opts["tiny"]:
        return tiny_parts()
    return load_parts(Path(opts["workloads"][str(n_seq)]), opts["device"])


def complete(parts, opts: dict[str, Any], work: Path, meter: PhaseMeter) -> dict[str, Any]:
    """Every feature's data written (memo and Neuronpedia files), as the CLI runs it."""
    from core.cli import build_parser
    from core.memo import Memo
    from core.precompute.args import config_from_args
    from core.precompute.distributed import launch
    from core.precompute.run import Sources

    argv = ["precompute", "--output-dir", str(work / "output"), "--outputs", "memo,neuronpedia"]
    argv += [
        "--features", "all", "--device", opts["device"], "--dtype", opts["dtype"],
        "--batch-size", str(opts["batch_size"]), "--n-prompts", str(parts.tokens.shape[0]),
        "--n-tokens-in-prompt", str(parts.tokens.shape[1]), "--no-progress",
        "--np-set-name", "bench", "--layer", "6",
    ]  # fmt: skip
    parser, _ = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    dataset = {"name": "bench random tokens", "n_sequences": int(parts.tokens.shape[0])}
    src = Sources(parts.model, parts.dictionary, parts.tokens, dataset)
    app_memo = Memo(work / "app-memo")
    try:
        with meter.phase("complete"):
            got = launch(cfg, src, app_memo)
    finally:
        app_memo.close()
    return {"n_features": got["features_requested"]} if got else {}


def run_one(name: str, opts: dict[str, Any]) -> dict[str, Any] | None:
    """One scenario in this process; ``None`` on torchrun ranks other than 0."""
    import torch

    from core.settings import distributed_env

    rank, world, local = distributed_env()
    cuda = opts["device"].startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)  # before the model loads: "cuda" is this rank's GPU
    torch.manual_seed(0)
    n_seq = opts["n_seq"]
    t = time.perf_counter()
    parts = _parts(opts, n_seq)
    load_s = time.perf_counter() - t
    work = Path(opts["work"]) / f"{name}-rank{rank}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with PhaseMeter() as meter:
            if name.startswith("floor"):
                dtype = torch.bfloat16 if opts["dtype"] == "bfloat16" else torch.float32
                parts.model.to(opts["device"], dtype)
                extra = floor(parts, meter, opts)
                if cuda:
                    torch.cuda.synchronize()
            else:
                extra = complete(parts, opts, work, meter)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rank != 0:
        return None
    if cuda:
        extra["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / MB
    return {
        "scenario": name,
        "dtype": opts["dtype"],
        "ranks": world,
        "tokens": int(parts.tokens.numel()),
        "load_seconds": load_s,
        "seconds": sum(p["seconds"] for p in meter.phases.values()),
        **extra,
    }


# --- the parent ------------------------------------------------------------------------------------
def child(name: str, opts: dict[str, Any], ranks: int = 1, timeout: float = 300) -> dict[str, Any]:
    """``name`` in a fresh process (``ranks`` of them under torchrun); rank 0's result."""
    script = [str(Path(__file__).resolve()), "--one", name, "--opts", json.dumps(opts)]
    if ranks > 1:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={ranks}", *script]
    else:
        cmd = [sys.executable, *script]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"scenario": name, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"scenario": name, "error": proc.stderr[-3000:]}
    return json.loads(lines[-1])


def in_process(scenarios: dict[str, str], opts: dict[str, Any]) -> list[str]:
    """Several 1-rank scenarios (name -> dtype) in one child process, as JSON lines."""
    plan = json.dumps({"scenarios": scenarios, "opts": opts})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--many", plan]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or len(lines) != len(scenarios):
        err = {"scenario": ",".join(scenarios), "error": proc.stderr[-3000:]}
        return [json.dumps(err)]
    return lines


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    if info["gpus"]:
        info["card"] = torch.cuda.get_device_name(0)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = [smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
            out = subprocess.run(q, capture_output=True, text=True, check=False).stdout
            info["driver"] = out.strip().splitlines()[0] if out.strip() else None
    return info


def peer(wl: Path, features: str, cache: Path) -> dict[str, Any]:
    """SAEDashboard on ``features`` (its activation cache filled first, untimed)."""
    name = f"saedashboard_{features.replace(':', '-')}"
    script = str(ROOT / "bench" / "peer_saedashboard.py")
    base = [str(PEER_PY), script, "--workload", str(wl), "--cache-dir", str(cache)]
    subprocess.run([*base, "--features", "0:1"], capture_output=True, check=False)
    proc = subprocess.run(
        [*base, "--features", features, "--warm-cache"], capture_output=True, text=True
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"scenario": name, "error": proc.stderr[-2000:]}
    return {"scenario": name, "device": "cpu (the peer venv's torch)", **json.loads(lines[-1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--opts", help=argparse.SUPPRESS)
    ap.add_argument("--many", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the test's)")
    ap.add_argument("--peer", action="store_true", help="also time SAEDashboard (its venv)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--work", type=Path, default=WORK, help="scratch outputs (removed after)")
    args = ap.parse_args(argv)
    if args.one:
        got = run_one(args.one, json.loads(args.opts))
        if got is not None:
            print(json.dumps(got), flush=True)
        return 0
    if args.many:
        plan = json.loads(args.many)
        for name, dtype in plan["scenarios"].items():
            print(json.dumps(run_one(name, {**plan["opts"], "dtype": dtype})), flush=True)
        return 0

    t0 = time.perf_counter()
    info = machine()
    gpus = info["gpus"]
    device = "cuda" if gpus and not args.tiny else "cpu"
    opts: dict[str, Any] = {
        "tiny": args.tiny,
        "device": device,
        "batch_size": 8 if args.tiny else args.batch_size,
        "work": str(args.work),
        "n_seq": N_SEQ,
        "workloads": {},
    }
    if not args.tiny:
        from bench.workload import prepare

        for n in (N_SEQ, N_SEQ_RANKS) if gpus >= 2 else (N_SEQ,):
            wl = WORKLOADS / f"d{D_SAE}-n{n}-l0{L0:g}"
            prepare(wl, n_seq=n, seq_len=SEQ_LEN, d_sae=D_SAE, l0=L0)
            opts["workloads"][str(n)] = str(wl)
    results = []
    single = {
        "floor_fp32": "float32",
        "floor_bf16": "bfloat16",
        "complete_fp32": "float32",
        "complete_bf16": "bfloat16",
    }
    if args.tiny:  # one process for all (imports dominate at this size)
        results.extend(json.loads(line) for line in in_process(single, opts))
    else:
        results.extend(child(name, {**opts, "dtype": dt}) for name, dt in single.items())
    if gpus >= 2 or args.tiny:
        big = {**opts, "dtype": "bfloat16", "n_seq": N_SEQ if args.tiny else N_SEQ_RANKS}
        if args.tiny:  # the same tokens as complete_bf16
            results.append({**results[-1], "scenario": "complete_bf16_1rank"})
        else:
            results.append(child("complete_bf16_1rank", big))
        results.append(child("complete_bf16_2ranks", big, ranks=2))
    else:
        results.append({"scenario": "complete_bf16_2ranks", "skipped": f"{gpus} GPU(s) here"})
    if args.peer and PEER_PY.exists() and not args.tiny:
        wl = Path(opts["workloads"][str(N_SEQ)])
        for features in ("0:256", "0:1024"):
            results.append(peer(wl, features, args.work / "peer-cache"))
    else:
        why = "--peer not given" if not args.peer else "no peer on the tiny workload"
        if args.peer and not args.tiny and not PEER_PY.exists():
            why = "peer venv missing: bash bench/setup_peer.sh"
        results.append({"scenario": "saedashboard", "skipped": why})
    by = {r["scenario"]: r for r in results if "seconds" in r}
    speedup = None
    if "complete_bf16_1rank" in by and "complete_bf16_2ranks" in by:
        speedup = by["complete_bf16_1rank"]["seconds"] / by["complete_bf16_2ranks"]["seconds"]
    summary = {
        "benchmark": "bench/gpu.py",
        "tiny": args.tiny,
        "device": device,
        "machine": info,
        "workload": {
            "d_sae": 24 if args.tiny else D_SAE,
            "tokens": f"{opts['n_seq'] if not args.tiny else 8} x {16 if args.tiny else SEQ_LEN}",
        },
        "results": results,
        "two_rank_speedup": speedup,
        "errors": [r["scenario"] for r in results if "error" in r],
        "seconds_total": time.perf_counter() - t0,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    text = json.dumps(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
