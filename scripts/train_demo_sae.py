"""Train the demo SAE: a TopK SAE on SmolLM2-135M-Instruct's layer-10 residual stream.

Rerunnable; the defaults reproduce the committed ``assets/demo_sae/``::

    .venv/bin/python scripts/train_demo_sae.py            # ~3 min collection + ~5 min training
    .venv/bin/python scripts/train_demo_sae.py --help

Pipeline (all offline; seeds fixed):

1. Corpus and model: :func:`core.demo_corpus.build_demo_corpus` (CPython documentation) and
   :func:`core.gguf_llama.load_demo_model` (the GGUF model as a HookedTransformer), both cached
   under ``--cache-dir``.
2. Tokens: every document is tokenised without special tokens, the documents are concatenated
   with ``<|endoftext|>`` (id 0) after each, and the stream is cut into rows of ``context - 1``
   tokens, each prefixed with the BOS id 0 (the SAE's ``context_size`` and ``prepend_bos``). A
   seeded random ``--holdout-frac`` of the rows is held out for evaluation.
3. Activations at ``blocks.{layer}.hook_resid_post`` (layer 10 by default: from layer 11 on the
   residual stream has huge outlier norms) are collected for ``--train-tokens`` tokens of training
   rows, with the model in bfloat16 (about 3x faster on CPUs with AVX512-BF16) and only the first
   ``layer + 1`` blocks run. Position 0 (BOS) is excluded.
4. A TopK SAE is trained in float32 with plain torch: inputs scaled so that the mean norm is
   ``sqrt(d_in)``; ``W_dec`` rows random unit vectors, ``W_enc = W_dec.T``, ``b_enc = 0``,
   ``b_dec`` = geometric median of a sample; MSE loss plus AuxK (the top ``--aux-k``
   pre-activations among features that have not fired for ``--dead-tokens`` tokens reconstruct
   the residual error, coefficient ``--aux-coef``); Adam with the learning rate decaying linearly
   to zero over the last ``--lr-decay-frac`` of the steps; decoder rows kept at unit norm (the
   gradient component along each row is removed before each step and the rows renormalised
   after). The input scaling is folded back afterwards (``b_enc`` and ``b_dec`` divided by the
   scale), so the saved SAE reads raw activations and ``normalize_activations="none"``.
5. The weights go into ``sae_lens.TopKSAE`` (float16) and are saved with its ``save_model``
   (``cfg.json`` + ``sae_weights.safetensors``), reloaded with ``SAE.load_from_disk(path,
   dtype="float32")`` and checked against the in-memory weights.
6. Held-out evaluation with the float32 model and the reloaded SAE: L0, fraction of variance
   explained, dead features, and next-token cross-entropy clean / with the SAE reconstruction
   spliced in / with the activations zero-ablated (both at all non-BOS positions), giving the
   fraction of loss recovered. Everything lands in ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.demo_corpus import build_demo_corpus, read_corpus_info  # noqa: E402
from core.gguf_llama import (  # noqa: E402
    DEMO_BOS_TOKEN_ID,
    DEMO_MODEL_NAME,
    WEIGHT_PROCESSING,
    load_demo_model,
)

DEFAULT_OUT = REPO_ROOT / "assets" / "demo_sae"
DEFAULT_CACHE = REPO_ROOT / "cache"


def log(message: str) -> None:
    """Print a timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def build_token_rows(tokenizer: Any, texts: list[str], context: int, bos_id: int) -> Tensor:
    """Tokenise, concatenate and chunk the documents into BOS-prefixed rows.

    Each document is tokenised without special tokens and followed by ``bos_id`` (the document
    separator); the stream is cut into chunks of ``context - 1`` tokens (the incomplete tail is
    dropped) and ``bos_id`` is put in front of every chunk.

    Returns:
        int64 tensor ``[n_rows, context]`` with column 0 equal to ``bos_id``.
    """
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for doc in ids:
        stream.extend(doc)
        stream.append(bos_id)
    body = context - 1
    n_rows = len(stream) // body
    chunks = torch.tensor(stream[: n_rows * body], dtype=torch.int64).view(n_rows, body)
    bos = torch.full((n_rows, 1), bos_id, dtype=torch.int64)
    return torch.cat([bos, chunks], dim=1)


def split_rows(n_rows: int, holdout_frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of row indices into ``(train, heldout)``.

    The held-out rows are the first ``round(holdout_frac * n_rows)`` of a permutation drawn from
    ``torch.Generator().manual_seed(seed)``; the training rows keep the permutation order (so a
    prefix of them is a random subset).
    """
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    n_heldout = max(1, round(holdout_frac * n_rows))
    return perm[n_heldout:], perm[:n_heldout].sort().values


def prepare_rows(
    cache_dir: Path, model: Any, context: int, holdout_frac: float, split_seed: int
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Build the corpus rows and the train / held-out split (shared with the inspect script).

    Returns:
        ``(rows, train_idx, heldout_idx, corpus_info)``.
    """
    corpus = build_demo_corpus(cache_dir)
    info = read_corpus_info(cache_dir) or {}
    rows = build_token_rows(model.tokenizer, list(corpus["text"]), context, DEMO_BOS_TOKEN_ID)
    train_idx, heldout_idx = split_rows(rows.shape[0], holdout_frac, split_seed)
    return rows, train_idx, heldout_idx, info


@torch.inference_mode()
def collect_activations(model: Any, rows: Tensor, layer: int, batch_rows: int) -> Tensor:
    """Residual stream after block ``layer`` for all non-BOS positions of ``rows``.

    Only blocks ``0..layer`` run (``stop_at_layer=layer + 1`` returns exactly
    ``blocks.{layer}.hook_resid_post``). The result keeps the model's dtype.

    Returns:
        ``[n_rows * (context - 1), d_model]``, row-major (row, position).
    """
    n_rows, context = rows.shape
    out = torch.empty(n_rows, context - 1, model.cfg.d_model, dtype=model.cfg.dtype)
    started = time.perf_counter()
    for start in range(0, n_rows, batch_rows):
        batch = rows[start : start + batch_rows]
        resid = model(batch, stop_at_layer=layer + 1)
        out[start : start + batch.shape[0]] = resid[:, 1:]
        done = start + batch.shape[0]
        if (start // batch_rows) % 25 == 0 or done == n_rows:
            rate = done * (context - 1) / (time.perf_counter() - started)
            log(f"  collected {done}/{n_rows} rows ({rate:,.0f} tokens/s)")
    return out.view(-1, model.cfg.d_model)


def check_hook_equivalence(model: Any, rows: Tensor, layer: int) -> float:
    """Max abs difference between ``stop_at_layer`` output and the named hook (should be 0)."""
    hook = f"blocks.{layer}.hook_resid_post"
    with torch.inference_mode():
        _, cache = model.run_with_cache(rows[:1], names_filter=hook, stop_at_layer=layer + 1)
        direct = model(rows[:1], stop_at_layer=layer + 1)
    return (cache[hook] - direct).abs().max().item()


# --------------------------------------------------------------------------------------------
# SAE training
# --------------------------------------------------------------------------------------------


@dataclass
class TopKParams:
    """Float32 TopK SAE parameters (SAELens layout: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``)."""

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor

    def tensors(self) -> list[Tensor]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]


def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm on the rows of ``x`` (float32), started from the mean."""
    median = x.mean(0)
    for _ in range(iters):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() < eps * max(1.0, median.norm().item()):
            median = new
            break
        median = new
    return median


def init_params(sample: Tensor, d_sae: int, generator: torch.Generator) -> TopKParams:
    """Unit-norm random decoder, tied encoder ``W_enc = W_dec.T``, zero ``b_enc``, median ``b_dec``."""
    d_in = sample.shape[1]
    W_dec = torch.randn(d_sae, d_in, generator=generator)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return TopKParams(
        W_enc=W_dec.T.clone().contiguous(),
        b_enc=torch.zeros(d_sae),
        W_dec=W_dec,
        b_dec=geometric_median(sample),
    )


def topk_forward(p: TopKParams, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One TopK SAE forward pass.

    Returns:
        ``(recon, pre, values, indices)``: reconstruction ``[B, d_in]``, pre-activations
        ``[B, d_sae]``, and the ReLU'd top-k values / feature indices ``[B, k]``.
    """
    pre = (x - p.b_dec) @ p.W_enc + p.b_enc
    values, indices = pre.topk(k, dim=-1, sorted=False)
    values = values.relu()
    acts = torch.zeros_like(pre).scatter(-1, indices, values)
    return acts @ p.W_dec + p.b_dec, pre, values, indices


def auxk_loss(
    p: TopKParams, pre: Tensor, residual: Tensor, dead: Tensor, aux_k: int
) -> Tensor | None:
    """AuxK loss: the dead features' top pre-activations reconstruct the residual error.

    Normalised by the residual's variance, as in SAELens; ``None`` when no feature is dead.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    masked = pre.masked_fill(~dead, -torch.inf)
    values, indices = masked.topk(min(aux_k, n_dead), dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    error_hat = acts @ p.W_dec
    err = (error_hat - residual).pow(2).sum(-1).mean()
    variance = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return err / variance


def train_topk_sae(acts: Tensor, args: argparse.Namespace) -> tuple[TopKParams, dict[str, Any]]:
    """Train a TopK SAE on ``acts`` (any float dtype, cast per batch to float32).

    Returns:
        The trained parameters in raw activation units (input scaling folded back) and a training
        summary (steps, tokens seen, final batch statistics, scale, timing).
    """
    generator = torch.Generator().manual_seed(args.seed)
    n_tokens, d_in = acts.shape
    # input scale so that E||x|| = sqrt(d_in): learning rate and init become scale-free
    probe = acts[torch.randperm(n_tokens, generator=generator)[:65536]].float()
    scale = math.sqrt(d_in) / probe.norm(dim=-1).mean().item()
    p = init_params(probe[:16384] * scale, args.d_sae, generator)
    del probe
    for t in p.tensors():
        t.requires_grad_(True)
    optimizer = torch.optim.Adam(p.tensors(), lr=args.lr, betas=(0.9, 0.999))

    steps_per_epoch = n_tokens // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    decay_start = int(total_steps * (1 - args.lr_decay_frac))
    since_fired = torch.zeros(args.d_sae, dtype=torch.int64)
    step = 0
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    window: dict[str, float] = {"mse": 0.0, "var": 0.0, "aux": 0.0, "n": 0}
    for epoch in range(args.epochs):
        order = torch.randperm(n_tokens, generator=generator)
        for b in range(steps_per_epoch):
            x = acts[order[b * args.batch_size : (b + 1) * args.batch_size]].float() * scale
            recon, pre, values, indices = topk_forward(p, x, args.k)
            residual = x - recon
            mse = residual.pow(2).sum(-1).mean()
            loss = mse
            dead = since_fired >= args.dead_tokens
            aux = auxk_loss(p, pre, residual.detach(), dead, args.aux_k)
            if aux is not None:
                loss = loss + args.aux_coef * aux

            lr = args.lr
            if step >= decay_start:
                lr = args.lr * (total_steps - step) / max(1, total_steps - decay_start)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                # keep decoder rows on the unit sphere: drop the radial gradient component ...
                g = p.W_dec.grad
                g -= (g * p.W_dec).sum(-1, keepdim=True) * p.W_dec
            optimizer.step()
            with torch.no_grad():
                # ... and renormalise after the step
                p.W_dec /= p.W_dec.norm(dim=-1, keepdim=True)
                fired = torch.zeros(args.d_sae, dtype=torch.bool)
                fired[indices[values > 0]] = True
                since_fired += x.shape[0]
                since_fired[fired] = 0
                window["mse"] += mse.item()
                window["var"] += (x - x.mean(0)).pow(2).sum(-1).mean().item()
                window["aux"] += 0.0 if aux is None else aux.item()
                window["n"] += 1
            step += 1
            if step % args.log_every == 0 or step == total_steps:
                n = window["n"]
                entry = {
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    "fve": 1 - window["mse"] / window["var"],
                    "aux": window["aux"] / n,
                    "dead": int((since_fired >= args.dead_tokens).sum()),
                    "seconds": time.perf_counter() - started,
                }
                history.append(entry)
                log(
                    f"  step {step}/{total_steps} epoch {epoch} lr {lr:.2e} "
                    f"fve {entry['fve']:.4f} aux {entry['aux']:.3f} dead {entry['dead']} "
                    f"({entry['seconds']:.0f} s)"
                )
                window = {"mse": 0.0, "var": 0.0, "aux": 0.0, "n": 0}

    with torch.no_grad():
        trained = TopKParams(
            W_enc=p.W_enc.detach().clone(),
            # TopK + ReLU is positively homogeneous: dividing both biases by the scale makes the
            # SAE read raw activations and output raw reconstructions with the same W_enc/W_dec.
            b_enc=p.b_enc.detach() / scale,
            W_dec=p.W_dec.detach().clone(),
            b_dec=p.b_dec.detach() / scale,
        )
    summary = {
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "tokens_seen": total_steps * args.batch_size,
        "input_scale": scale,
        "final_window": history[-1] if history else None,
        "dead_by_window_at_end": int((since_fired >= args.dead_tokens).sum()),
        "history": history,
        "seconds": time.perf_counter() - started,
    }
    return trained, summary


# --------------------------------------------------------------------------------------------
# SAELens export
# --------------------------------------------------------------------------------------------


def make_saelens_sae(p: TopKParams, k: int, layer: int, context: int, dtype: str) -> Any:
    """Wrap the parameters in a ``sae_lens.TopKSAE`` (given dtype) with the demo metadata."""
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(
        d_in=p.W_enc.shape[0],
        d_sae=p.W_enc.shape[1],
        k=k,
        dtype=dtype,
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        rescale_acts_by_decoder_norm=False,
    )
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    cfg.metadata.model_name = DEMO_MODEL_NAME
    cfg.metadata.context_size = context
    cfg.metadata.prepend_bos = True
    cfg.metadata.dataset_path = "core.demo_corpus (CPython documentation, offline)"
    cfg.metadata.exclude_special_tokens = [DEMO_BOS_TOKEN_ID]
    sae = TopKSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(getattr(p, name))
    return sae


def save_sae(sae: Any, out_dir: Path) -> None:
    """``sae.save_model`` into a temporary sibling directory, then swap it into ``out_dir``.

    Other files already in ``out_dir`` (``metrics.json``) are removed; the caller writes them.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        sae.save_model(tmp)
        for child in tmp.iterdir():
            child.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@torch.no_grad()
def check_reload(out_dir: Path, reference: Any, fp32_params: TopKParams, x: Tensor) -> dict:
    """Reload the saved SAE as float32 and compare it with the in-memory SAEs.

    ``reference`` is the float16 SAE that was saved: the reloaded float32 weights must equal its
    weights exactly, so its activations (computed in float32) must match bit for bit. The
    comparison with the unrounded float32 training weights measures what float16 storage costs.
    """
    from sae_lens import SAE

    loaded = SAE.load_from_disk(out_dir, dtype="float32")
    assert type(loaded).__name__ == "TopKSAE", type(loaded)
    exact = all(
        torch.equal(getattr(loaded, n), getattr(reference, n).float())
        for n in ("W_enc", "b_enc", "W_dec", "b_dec")
    )
    assert loaded.cfg.metadata.hook_name == reference.cfg.metadata.hook_name
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    k, meta = reference.cfg.k, reference.cfg.metadata
    layer = int(meta.hook_name.split(".")[1])
    rounded = TopKParams(*(getattr(reference, n).detach().float() for n in names))
    ref32 = make_saelens_sae(rounded, k, layer, meta.context_size, "float32")
    acts_loaded = loaded.encode(x)
    acts_ref = ref32.encode(x)
    unrounded = make_saelens_sae(fp32_params, k, layer, meta.context_size, "float32")
    acts_fp32 = unrounded.encode(x)
    on16, on32 = acts_loaded > 0, acts_fp32 > 0
    both = on16 & on32
    rel = (acts_loaded - acts_fp32)[both].abs() / acts_fp32[both]
    return {
        "reloaded_weights_equal_saved_float16": exact,
        "reloaded_acts_equal_saved": bool(torch.equal(acts_loaded, acts_ref)),
        "vs_unrounded_float32": {
            "active_set_jaccard": (both.sum() / (on16 | on32).sum()).item(),
            "max_rel_act_diff_where_both_active": rel.max().item(),
            "median_rel_act_diff_where_both_active": rel.median().item(),
            "fve_float16": _fve(x, loaded.decode(acts_loaded)),
            "fve_float32": _fve(x, unrounded.decode(acts_fp32)),
        },
        "n_tokens_checked": x.shape[0],
    }


def _fve(x: Tensor, recon: Tensor) -> float:
    return 1 - ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def _next_token_ce(logits: Tensor, tokens: Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over predictions from positions 1..T-2 (not from BOS)."""
    logp = logits[:, 1:-1].float().log_softmax(-1)
    target = tokens[:, 2:]
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    return nll.sum().item(), nll.numel()


@torch.inference_mode()
def evaluate(model: Any, sae: Any, rows: Tensor, layer: int, batch_rows: int) -> dict[str, Any]:
    """Held-out metrics of ``sae`` on ``rows`` with ``model`` (float32 recommended).

    The SAE is applied at every non-BOS position; BOS (position 0) keeps its clean activation in
    all three runs. Cross-entropy is averaged over the predictions made from positions
    ``1..T-2`` (the positions whose activations were replaced).
    """
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sum_sq_err = 0.0
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    sum_sq_x = 0.0
    n_tok = 0
    l0_sum = 0.0
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    for start in range(0, rows.shape[0], batch_rows):
        tokens = rows[start : start + batch_rows]
        resid = model(tokens, stop_at_layer=layer + 1)
        x = resid[:, 1:].reshape(-1, resid.shape[-1]).float()
        feats = sae.encode(x)
        recon = sae.decode(feats).to(resid.dtype)
        active = feats > 0
        fired |= active.any(0)
        l0_sum += active.sum().item()
        sum_sq_err += (x - recon.float()).pow(2).sum().item()
        sum_x += x.sum(0).double()
        sum_sq_x += x.double().pow(2).sum().item()
        n_tok += x.shape[0]

        spliced = resid.clone()
        spliced[:, 1:] = recon.view(resid.shape[0], -1, resid.shape[-1])
        zeroed = resid.clone()
        zeroed[:, 1:] = 0
        for name, r in (("clean", resid), ("sae", spliced), ("zero", zeroed)):
            logits = model(r, start_at_layer=layer + 1)
            total, count = _next_token_ce(logits, tokens)
            ce[name] += total
        n_pred += count
    total_var = sum_sq_x - (sum_x.pow(2).sum().item() / n_tok)
    ce = {name: value / n_pred for name, value in ce.items()}
    return {
        "n_rows": rows.shape[0],
        "n_tokens": n_tok,
        "l0": l0_sum / n_tok,
        "fraction_variance_explained": 1 - sum_sq_err / total_var,
        "mse_per_token": sum_sq_err / n_tok,
        "mean_squared_norm_per_token": sum_sq_x / n_tok,
        "dead_features": int((~fired).sum()),
        "alive_features": int(fired.sum()),
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_zero_ablation": ce["zero"],
        "fraction_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "ce_n_predictions": n_pred,
    }


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; the defaults reproduce ``assets/demo_sae``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--layer", type=int, default=10, help="hook blocks.L.hook_resid_post")
    ap.add_argument("--context", type=int, default=128, help="row length incl. BOS")
    ap.add_argument("--holdout-frac", type=float, default=0.05)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--train-tokens", type=int, default=300_000, help="activations collected")
    ap.add_argument(
        "--collect-dtype", choices=["bfloat16", "float32"], default="bfloat16", help="model dtype"
    )
    ap.add_argument("--collect-batch", type=int, default=16, help="rows per forward pass")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-decay-frac", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--aux-k", type=int, default=256)
    ap.add_argument("--aux-coef", type=float, default=1 / 32)
    ap.add_argument(
        "--dead-tokens", type=int, default=100_000, help="AuxK: dead after this many silent tokens"
    )
    ap.add_argument("--seed", type=int, default=0, help="SAE init and batch order")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=100)
    return ap.parse_args(argv)


def _json_ready(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the whole pipeline and return the metrics written to ``--out/metrics.json``."""
    import sae_lens
    import transformer_lens

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    collect_dtype = getattr(torch, args.collect_dtype)

    # 1-2: model, corpus, rows
    t0 = time.perf_counter()
    model = load_demo_model(args.cache_dir, dtype=collect_dtype)
    rows, train_idx, heldout_idx, corpus_info = prepare_rows(
        args.cache_dir, model, args.context, args.holdout_frac, args.split_seed
    )
    n_train_rows = min(len(train_idx), math.ceil(args.train_tokens / (args.context - 1)))
    train_rows = rows[train_idx[:n_train_rows]]
    log(
        f"corpus: {rows.shape[0]} rows x {args.context} tokens; {len(heldout_idx)} held out; "
        f"collecting {n_train_rows} rows ({n_train_rows * (args.context - 1):,} tokens) "
        f"[{time.perf_counter() - t0:.0f} s]"
    )
    hook_diff = check_hook_equivalence(model, rows, args.layer)
    assert hook_diff == 0.0, f"stop_at_layer output differs from the hook by {hook_diff}"

    # 3: activations
    t_collect = time.perf_counter()
    acts = collect_activations(model, train_rows, args.layer, args.collect_batch)
    collect_seconds = time.perf_counter() - t_collect
    norms = acts[:100_000].float().norm(dim=-1)
    log(
        f"collected {acts.shape[0]:,} activations in {collect_seconds:.0f} s "
        f"(norm mean {norms.mean():.1f}, max {norms.max():.1f})"
    )
    del model

    # 4: training
    params, train_summary = train_topk_sae(acts, args)
    log(f"trained in {train_summary['seconds']:.0f} s")
    del acts

    # 5: export + reload check
    sae16 = make_saelens_sae(params, args.k, args.layer, args.context, "float16")
    save_sae(sae16, args.out)

    # 6: evaluation with the float32 model and the SAE as loaded from disk
    from sae_lens import SAE

    model32 = load_demo_model(args.cache_dir, dtype=torch.float32)
    heldout_rows = rows[heldout_idx]
    with torch.no_grad():
        sample = model32(heldout_rows[:8], stop_at_layer=args.layer + 1)[:, 1:]
    reload_check = check_reload(args.out, sae16, params, sample.reshape(-1, sample.shape[-1]))
    assert reload_check["reloaded_weights_equal_saved_float16"], reload_check
    assert reload_check["reloaded_acts_equal_saved"], reload_check
    sae = SAE.load_from_disk(args.out, dtype="float32")
    t_eval = time.perf_counter()
    heldout = evaluate(model32, sae, heldout_rows, args.layer, args.eval_batch)
    eval_seconds = time.perf_counter() - t_eval
    log(f"held-out: {json.dumps(heldout)} ({eval_seconds:.0f} s)")

    model_record = json.loads((args.cache_dir / "demo_model" / "config.json").read_text())
    metrics = {
        "sae": {
            "architecture": "topk",
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k,
            "hook_name": sae.cfg.metadata.hook_name,
            "stored_dtype": "float16",
            "normalize_activations": "none",
        },
        "heldout": heldout,
        "training": {k: v for k, v in train_summary.items() if k != "history"},
        "training_curve": train_summary["history"],
        "timings_seconds": {
            "collection": collect_seconds,
            "training": train_summary["seconds"],
            "evaluation": eval_seconds,
        },
        "data": {
            "n_rows": rows.shape[0],
            "n_train_rows_total": len(train_idx),
            "n_train_rows_used": n_train_rows,
            "n_heldout_rows": len(heldout_idx),
            "tokens_collected": n_train_rows * (args.context - 1),
            "bos_token_id": DEMO_BOS_TOKEN_ID,
            "bos_position_excluded": True,
        },
        "corpus": {
            k: corpus_info.get(k)
            for k in ("text_sha256", "n_documents", "n_characters", "python_version")
        },
        "model": {
            "name": DEMO_MODEL_NAME,
            "gguf_sha256": model_record["source"]["gguf_sha256"],
            "weight_processing": WEIGHT_PROCESSING,
            "collect_dtype": args.collect_dtype,
            "eval_dtype": "float32",
        },
        "fp16_storage_check": reload_check,
        "config": _json_ready(args),
        "seeds": {"split_seed": args.split_seed, "seed": args.seed},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sae_lens": sae_lens.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        },
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (args.out / "metrics.json").chmod(0o644)
    log(f"wrote {args.out}")
    return metrics


if __name__ == "__main__":
    main()
