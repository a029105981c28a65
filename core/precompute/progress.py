"""Progress of a precompute run: a tqdm bar on stderr and an optional W&B log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from core.engine.distributed import current as current_shard
from core.precompute.manifest import RunnerError

if TYPE_CHECKING:
    from core.precompute.config import PrecomputeConfig


class Progress:
    """tqdm bar counting features (fractional inside a chunk), plus optional W&B logging."""

    def __init__(self, cfg: PrecomputeConfig, total: int, initial: int, config_log: dict):
        """Start the bar at ``initial`` of ``total`` features; open a W&B run if asked.
        Under torchrun only rank 0 has one (the other ranks run without a Progress)."""
        n_tokens = config_log.get("source", {}).get("n_tokens")
        world = current_shard().world
        desc = "precompute"
        if n_tokens:
            desc += f" ({n_tokens:,} tokens{f' on {world} ranks' if world > 1 else ''})"
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="feat",
            desc=desc,
            disable=not cfg.progress,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
            bar_format="{l_bar}{bar}| {n:.0f}/{total} features [{elapsed}<{remaining}, {rate_fmt}]",
        )
        self.start = time.perf_counter()
        self.initial = initial
        self.total = total
        self.base = float(initial)
        self.run = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError as exc:  # pragma: no cover - installed with sae-lens
                raise RunnerError("--wandb needs the wandb package (pip install wandb)") from exc
            self.run = wandb.init(
                project=cfg.wandb_project,
                config=config_log,
                name=f"precompute-{config_log.get('run_id', '')[:8]}",
                reinit="finish_previous",
            )

    def within(self, n_features: int) -> Callable[[float, str], None]:
        """Engine progress callback for a sweep of ``n_features`` features starting now
        (one chunk, or several swept together); the bar never goes back."""
        start = self.base

        def report(frac: float, msg: str) -> None:
            target = start + frac * n_features * 0.98
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
            self.bar.set_postfix_str(msg, refresh=False)

        return report

    def chunk_done(self, k: int, n_chunk: int, done: int, skipped: int) -> None:
        self.base += n_chunk
        if self.base > self.bar.n:  # a group's sweep may have reported beyond this chunk
            self.bar.update(self.base - self.bar.n)
        if self.run is not None:
            elapsed = time.perf_counter() - self.start
            new = self.base - self.initial
            rate = new / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.base) / rate if rate > 0 else None
            self.run.log(
                {
                    "chunk": k,
                    "features_done": done,
                    "features_skipped": skipped,
                    "features_processed": self.base,
                    "features_total": self.total,
                    "features_per_second": rate,
                    "seconds_left": left,
                }
            )

    def close(self, ok: bool) -> None:
        self.bar.close()
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
