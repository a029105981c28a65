"""``torchrun ... -m core precompute``: one precompute over many ranks.

Every rank loads the sources and sweeps its contiguous share of the sequences; the sweep
merges the accumulators with collectives (:mod:`core.engine.distributed`), so every rank
ends a sweep with the whole result. Rank 0 is the runner: it owns the output directory
(manifest, memo, HTML, Neuronpedia files), decides which chunks are pending (resume) and
tells the others; the other ranks only sweep. Backends: ``nccl`` when the run's device is
CUDA (one GPU per rank, ``LOCAL_RANK`` picks it), ``gloo`` otherwise.

A rank that dies makes the others' next collective fail (or time out after
``$FEATURESCOPE_DIST_TIMEOUT`` seconds); torchrun then stops the job. Chunks are recorded
as done only once written, so the same command resumes.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core.engine.distributed import DistributedError, Shard
from core.engine.sweep import run_sweep
from core.memo import Memo
from core.precompute.config import PrecomputeConfig
from core.precompute.manifest import RunnerError
from core.precompute.run import PrecomputeRunner, Sources, load_run_sources, run_precompute
from core.settings import distributed_env, distributed_timeout


def wants_cuda(cfg: PrecomputeConfig) -> bool:
    device = str(cfg.run.device or cfg.model.device or "auto").strip().lower()
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def follow(cfg: PrecomputeConfig, shard: Shard, sources: Sources | None = None) -> None:
    """A rank other than 0: sweep the chunks rank 0 says are pending, write nothing."""
    runner = PrecomputeRunner(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src = sources or load_run_sources(cfg)
    if cfg.free_unused_layers:
        src.model.free_unused_layers(
            [cfg.run.hook or src.dictionary.hook_in, src.dictionary.hook_out]
        )
    runner._plan(src)
    pending = set(shard.share_pending([], len(runner.chunks)))
    for group in runner._groups():
        if not any(k in pending for k in group):
            continue
        feats = [f for k in group for f in runner.chunks[k]]
        sub = dataclasses.replace(runner.rc, features=feats)
        run_sweep(src.model, src.dictionary, runner.tokens, sub, dataset=src.dataset)


def _on_sigterm(rank: int, world: int):
    def stop(signum: int, frame: object) -> None:
        print(
            f"error: rank {rank} of {world} was stopped (torchrun stops every rank when one "
            "fails; its report names the rank that failed first). Finished chunks are kept: "
            "run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signum)

    return stop


def launch(
    cfg: PrecomputeConfig, sources: Sources | None = None, app_memo: Memo | None = None
) -> dict[str, Any] | None:
    """Run ``cfg``: in this process alone, or as one rank of a torchrun job. Returns the
    run's summary on rank 0 (and alone), ``None`` on the other ranks. ``sources`` and
    ``app_memo`` as for :func:`~core.precompute.run.run_precompute` (each rank its own)."""
    rank, world, local = distributed_env()
    if world == 1:
        return run_precompute(cfg, sources, app_memo)
    cuda = wants_cuda(cfg)
    if cuda:
        if local >= torch.cuda.device_count():
            raise RunnerError(
                f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc-per-node)"
            )
        torch.cuda.set_device(local)  # "cuda" below means this rank's GPU
    timeout = timedelta(seconds=distributed_timeout())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    shard = Shard(rank, world)
    signal.signal(signal.SIGTERM, _on_sigterm(rank, world))
    try:
        if rank == 0:
            return run_precompute(cfg, sources, app_memo)
        follow(dataclasses.replace(cfg, progress=False, wandb=False), shard, sources)
        return None
    except DistributedError as exc:
        raise RunnerError(str(exc)) from exc
    finally:
        dist.destroy_process_group()


__all__ = ["follow", "launch"]
