"""torch.distributed wiring for the sweep: which tokens a rank sweeps, and merged accumulators.

Under ``torchrun`` each rank sweeps a contiguous share of the sequences (global sequence
ids, so top examples and the seeded interval samples are keyed exactly as in one process)
and the accumulators of :mod:`core.engine.stats` and :mod:`core.engine.gram` are combined
with collectives: every rank gathers every rank's state (``all_gather``) and merges them
with the accumulators' own ``merge`` in rank order, so all ranks hold the same result and
that result does not depend on which rank answered first.

What equals a one-process sweep exactly: counts, maxima, histograms, interval samples, top
examples, everything read from the decoder. What may differ in the last bits: float sums
(means, neuron and feature correlations), because the tokens are added in a different
order (per rank, then rank after rank); they agree within float32 rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from core.engine.gram import GramStats
from core.engine.stats import BinCounts, IntervalSampler, MomentStats, TopExamples
from core.errors import FeaturescopeError


class DistributedError(FeaturescopeError, RuntimeError):
    """A collective failed (a rank died or stopped answering); the message says what to do."""


A = TypeVar("A")

#: the tensor fields that make up each accumulator's mergeable state
FIELDS: dict[type, tuple[str, ...]] = {
    MomentStats: ("n_tokens", "count", "sum", "sumsq", "max"),
    TopExamples: ("values", "seq", "pos", "windows"),
    BinCounts: ("counts",),
    IntervalSampler: ("keys", "seq", "windows", "slot"),
    GramStats: ("cross", "col_sum", "col_sumsq", "n_tokens"),
}
NEURON_FIELDS = ("x_sum", "x_sumsq", "cross")
#: tensors that are the same on every rank (settings, buffers emptied before a merge)
CONSTANT = frozenset({"offsets", "feature_hash", "buf", "scale", "inv_scale"})


def merged_fields(acc: object) -> tuple[str, ...]:
    """The tensor attributes of ``acc`` that differ between ranks (gathered and merged)."""
    for cls, names in FIELDS.items():
        if isinstance(acc, cls):
            if isinstance(acc, MomentStats):
                names += ("min",) if acc.signed else ()
                names += NEURON_FIELDS if acc.track_neurons else ()
            return names
    raise TypeError(f"no distributed merge for {type(acc).__name__}")


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: ``rank`` of ``world`` ranks."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def sequences(self, n_seq: int) -> slice:
        """This rank's contiguous share of ``n_seq`` sequences (the first ranks get one more
        when they do not divide evenly; a rank may get none)."""
        return slice(self.rank * n_seq // self.world, (self.rank + 1) * n_seq // self.world)

    def batches(self, n_seq: int, batch_size: int) -> list[slice]:
        """Batches of global sequence indices inside :meth:`sequences`."""
        share = self.sequences(n_seq)
        return [
            slice(i, min(i + batch_size, share.stop))
            for i in range(share.start, share.stop, batch_size)
        ]

    # --- collectives ---------------------------------------------------------------------
    def _gather(self, t: Tensor) -> list[Tensor]:
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        try:
            dist.all_gather(out, t)
        except (RuntimeError, ValueError) as exc:
            raise lost_contact(self, exc) from exc
        return out

    def merge(self, acc: A) -> A:
        """``acc`` merged over every rank (rank 0's part first, then rank 1's, ...): a new
        accumulator, the same on every rank. Returns ``acc`` itself in a 1-rank job."""
        if not self.active:
            return acc
        if isinstance(acc, GramStats):
            acc.finalize()  # flushes staged batches and fills the symmetric half
        names = merged_fields(acc)
        given = getattr(acc, "sums_given", False)  # column sums already global (pass 1)
        kept = {n: getattr(acc, n) for n in ("col_sum", "col_sumsq")} if given else {}
        parts = {n: self._gather(getattr(acc, n)) for n in names if n not in kept}
        copies = []
        for r in range(self.world):
            c = copy.copy(acc)
            for n, got in parts.items():
                setattr(c, n, got[r])
            for n, value in kept.items():
                setattr(c, n, torch.zeros_like(value) if r else value.clone())
            copies.append(c)
        out = copies[0]
        for other in copies[1:]:
            out.merge(other)  # type: ignore[attr-defined]
        return out

    def any(self, flag: Tensor) -> Tensor:
        """``flag`` (a bool scalar) or-ed over ranks."""
        if not self.active:
            return flag
        t = flag.to(torch.int32).reshape(1)
        try:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        except (RuntimeError, ValueError) as exc:
            raise lost_contact(self, exc) from exc
        return t[0].bool()

    def share_pending(self, pending: list[int], n_chunks: int) -> list[int]:
        """Rank 0's ``pending`` chunk indices (of ``n_chunks``), on every rank."""
        if not self.active:
            return pending
        device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
        flags = torch.zeros(n_chunks, dtype=torch.uint8, device=device)
        if self.leader:
            flags[torch.tensor(sorted(pending), dtype=torch.long, device=device)] = 1
        try:
            dist.broadcast(flags, src=0)
        except (RuntimeError, ValueError) as exc:
            raise lost_contact(self, exc) from exc
        return [int(k) for k in flags.nonzero().flatten().tolist()]

    def total(self, n: int, device: torch.device) -> int:
        """``n`` summed over ranks."""
        if not self.active:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=device)
        try:
            dist.all_reduce(t)
        except (RuntimeError, ValueError) as exc:
            raise lost_contact(self, exc) from exc
        return int(t[0])


def lost_contact(shard: Shard, exc: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {shard.rank} of {shard.world} lost contact with the other ranks ({exc}): one of "
        "them stopped (killed, out of memory, or failed; see its log above). Nothing finished "
        "was lost: run the same command again to resume from the last completed chunk"
    )


def current() -> Shard:
    """The shard of this process: from the initialised default process group (see
    :func:`core.precompute.distributed.launch`), else one rank of one."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


__all__ = ["DistributedError", "Shard", "current", "lost_contact", "merged_fields"]
