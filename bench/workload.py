"""Shared benchmark workload: a random gpt2-small-shaped model, tokens and an SAE.

Runs in the project venv (TransformerLens 3.x, SAELens 6.x).  The same files are
read by ``bench/peer_saedashboard.py`` in the peer venv (TransformerLens 2.17),
so both engines do identical work on identical inputs.  No tokenizer and no
model-hub download is involved.

Usage::

    .venv/bin/python bench/workload.py bench/.workload [--n-seq 256] [--seq-len 128]
        [--d-sae 24576] [--density 0.05 | --l0 64] [--seed 0] [--force]

prints the workload directory.  From Python: ``prepare(out_dir, ...) -> Path``.

Directory layout (``OUT_DIR/``)
-------------------------------
``workload.json``
    ``{"format": 3, "params": {n_seq, seq_len, d_sae, density, seed},
    "hook_name": "blocks.6.hook_resid_pre", "calib_density": float,
    "heldout_density": float, "created_with": {package versions}}``.
    ``prepare`` reuses the directory when ``format`` and ``params`` are equal
    and all files below exist; otherwise it regenerates everything.
``model_cfg.json``
    keyword arguments for ``transformer_lens.HookedTransformerConfig``:
    n_layers 12, d_model 768, n_heads 12, d_head 64, d_mlp 3072, d_vocab 50257,
    n_ctx 1024, act_fn "gelu_new", normalization_type "LN", seed.
``model.safetensors``
    ``HookedTransformer(cfg)`` random init (``torch.manual_seed(seed)`` first),
    float32.  Only *parameters* are stored (148 tensors, e.g. ``embed.W_E``,
    ``blocks.0.attn.W_Q``); the non-persistent-in-spirit buffers
    ``blocks.*.attn.mask`` / ``blocks.*.attn.IGNORE`` are omitted because their
    shapes differ between TransformerLens versions (3.9 builds ``mask`` lazily
    as a 0x0 tensor, 2.17 as n_ctx x n_ctx).  Load with
    :func:`load_model_state` (``strict=False`` and an assertion that only those
    buffers are missing and nothing is unexpected).
``tokens.safetensors``
    key ``tokens``: int64 ``[n_seq, seq_len]``, uniform random ids in
    ``[0, 50257)`` from ``torch.Generator().manual_seed(seed)``; column 0 is
    50256 (BOS).
``reference.safetensors``
    key ``hook_acts``: float32 ``[min(2, n_seq), seq_len, 768]``, the
    ``blocks.6.hook_resid_pre`` activations of the first sequences computed
    with the project's TransformerLens, so another TransformerLens version can
    check that it loaded the same model (max abs diff ~1e-5 expected).
``sae/cfg.json``, ``sae/sae_weights.safetensors``
    SAELens ``StandardSAE.save_model`` output (architecture "standard",
    d_in 768, d_sae, ``metadata.hook_name = "blocks.6.hook_resid_pre"``,
    apply_b_dec_to_input true, no normalisation).  Tensors ``W_enc [768, d_sae]``,
    ``b_enc [d_sae]``, ``W_dec [d_sae, 768]`` (rows normalised to unit L2 norm,
    so ``fold_W_dec_norm()`` is a no-op), ``b_dec [768]`` (zeros).
    Encoding is ``relu((x - b_dec) @ W_enc + b_enc)``.  ``b_enc[f]`` is
    ``-quantile_{1-density}((x - b_dec) @ W_enc[:, f])`` over the hook
    activations of the first ``min(32, n_seq)`` sequences, so every feature
    fires on about ``density`` of tokens.  ``--l0 L`` (``prepare(..., l0=L)``) asks
    for ``density = L / d_sae`` instead, i.e. about ``L`` active features per token
    (calibrated biases; the realistic dictionaries of ``bench/bench_scale.py`` use
    L0 64); ``params`` then records that density, so the defaults are unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tiny import hooked_transformer, random_tokens  # noqa: E402

FORMAT = 3
HOOK_NAME = "blocks.6.hook_resid_pre"
HOOK_LAYER = 6
BOS = 50256
CALIB_SEQS = 32
# Buffers that exist in HookedTransformer state dicts but are derived, not
# learned, and whose shapes differ across TransformerLens versions.
KNOWN_BUFFER_SUFFIXES = (".attn.mask", ".attn.IGNORE")


def model_cfg_dict(seed: int = 0) -> dict:
    return dict(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=seed,
    )


def density_for_l0(l0: float, d_sae: int) -> float:
    """The firing share that gives about ``l0`` active features per token."""
    if not 0 < l0 < d_sae:
        raise ValueError(f"l0 must be in (0, d_sae={d_sae}), got {l0}")
    return l0 / d_sae


def load_model_state(model: torch.nn.Module, path: Path | str) -> None:
    """Load ``model.safetensors`` into a HookedTransformer (TL 2.17 or 3.x).

    Shared logic; ``peer_saedashboard.py`` has its own copy because it runs in
    the other venv and must not import project code.
    """
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in missing if not k.endswith(KNOWN_BUFFER_SUFFIXES)]
    if bad_missing or unexpected:
        raise RuntimeError(
            f"state dict mismatch: missing={bad_missing[:10]} unexpected={list(unexpected)[:10]}"
        )


def _build_model(cfg_kwargs: dict):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return hooked_transformer(cfg_kwargs)


@torch.no_grad()
def _hook_acts(model, tokens: torch.Tensor, batch: int = 8) -> torch.Tensor:
    out = []
    for i in range(0, tokens.shape[0], batch):
        _, cache = model.run_with_cache(
            tokens[i : i + batch], names_filter=HOOK_NAME, stop_at_layer=HOOK_LAYER + 1
        )
        out.append(cache[HOOK_NAME])
    return torch.cat(out).reshape(-1, model.cfg.d_model)


def _files_ok(out_dir: Path) -> bool:
    need = [
        "workload.json",
        "model_cfg.json",
        "model.safetensors",
        "tokens.safetensors",
        "reference.safetensors",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
    ]
    return all((out_dir / n).is_file() for n in need)


def prepare(
    out_dir: Path | str,
    n_seq: int = 256,
    seq_len: int = 128,
    d_sae: int = 24576,
    density: float = 0.05,
    seed: int = 0,
    force: bool = False,
    l0: float | None = None,
) -> Path:
    """Write (or reuse) the workload; ``l0`` overrides ``density`` with ``l0 / d_sae``."""
    out_dir = Path(out_dir)
    if l0 is not None:
        density = density_for_l0(l0, d_sae)
    params = dict(n_seq=n_seq, seq_len=seq_len, d_sae=d_sae, density=density, seed=seed)
    meta_path = out_dir / "workload.json"
    if not force and _files_ok(out_dir):
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") == FORMAT and meta.get("params") == params:
                return out_dir
        except (OSError, ValueError):
            pass

    if not 0.0 < density < 1.0:
        raise ValueError("density must be in (0, 1)")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # invalid until everything is rewritten
    torch.set_grad_enabled(False)

    # model
    cfg_kwargs = model_cfg_dict(seed)
    (out_dir / "model_cfg.json").write_text(json.dumps(cfg_kwargs, indent=2) + "\n")
    torch.manual_seed(seed)
    model = _build_model(cfg_kwargs)
    model.eval()
    params_only = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(params_only, str(out_dir / "model.safetensors"))
    # round-trip into a fresh model (different init) to check the loader
    check = _build_model({**cfg_kwargs, "seed": seed + 12345})
    load_model_state(check, out_dir / "model.safetensors")
    for k, v in check.named_parameters():
        assert torch.equal(v, params_only[k]), k
    del check

    # tokens
    tokens = random_tokens(n_seq, seq_len, seed=seed, d_vocab=cfg_kwargs["d_vocab"], low=0, bos=BOS)
    save_file({"tokens": tokens}, str(out_dir / "tokens.safetensors"))

    # SAE
    from sae_lens import SAE, StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed + 1)
    sae_cfg = StandardSAEConfig(
        d_in=cfg_kwargs["d_model"],
        d_sae=d_sae,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(
            model_name="random-gpt2-small",
            hook_name=HOOK_NAME,
            hook_head_index=None,
            context_size=seq_len,
            prepend_bos=True,
            dataset_path=None,
            model_from_pretrained_kwargs={},
        ),
    )
    sae = StandardSAE(sae_cfg)
    # Unit-norm decoder rows: SAEDashboard calls ``fold_W_dec_norm()`` on the
    # SAE before it runs, which is then a no-op, so both engines see exactly
    # the same feature activations.
    sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True)
    n_cal = min(CALIB_SEQS, n_seq)
    calib = _hook_acts(model, tokens[:n_cal])
    held = _hook_acts(model, tokens[n_cal : 2 * n_cal]) if n_seq > n_cal else None
    n_ref = min(2, n_seq)
    ref_acts = calib[: n_ref * seq_len].reshape(n_ref, seq_len, -1).contiguous()
    save_file({"hook_acts": ref_acts}, str(out_dir / "reference.safetensors"))
    del model

    W_enc, b_dec = sae.W_enc.data, sae.b_dec.data
    q = 1.0 - density
    # torch.quantile refuses inputs above 2**24 elements: go by feature chunks
    chunk = max(1, (2**24 - 1) // calib.shape[0])
    b_enc = torch.empty(d_sae)
    centred = calib - b_dec
    for f0 in range(0, d_sae, chunk):
        pre = centred @ W_enc[:, f0 : f0 + chunk]
        b_enc[f0 : f0 + chunk] = -torch.quantile(pre, q, dim=0)
    sae.b_enc.data.copy_(b_enc)

    def fire_rate(x: torch.Tensor) -> float:
        fired = 0
        for f0 in range(0, d_sae, 4096):
            pre = (x - b_dec) @ W_enc[:, f0 : f0 + 4096] + b_enc[f0 : f0 + 4096]
            fired += int((pre > 0).sum())
        return fired / (x.shape[0] * d_sae)

    calib_density = fire_rate(calib)
    heldout_density = fire_rate(held) if held is not None else None

    sae_dir = out_dir / "sae"
    if sae_dir.exists():
        shutil.rmtree(sae_dir)
    sae.save_model(sae_dir)
    loaded = SAE.load_from_disk(sae_dir, device="cpu")
    assert type(loaded).__name__ == "StandardSAE", type(loaded)
    assert loaded.cfg.metadata.hook_name == HOOK_NAME
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name).data, getattr(sae, name).data), name
    norms = loaded.W_dec.data.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    x = calib[:64]
    ref = torch.relu((x - b_dec) @ W_enc + b_enc)
    assert torch.allclose(loaded.encode(x), ref, atol=1e-4, rtol=1e-4)

    meta = dict(
        format=FORMAT,
        params=params,
        hook_name=HOOK_NAME,
        calib_density=calib_density,
        heldout_density=heldout_density,
        created_with={
            p: version(p) for p in ("torch", "transformer-lens", "sae-lens", "safetensors")
        },
    )
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--n-seq", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument(
        "--l0", type=float, default=None, help="active features per token (sets density)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if parameters match")
    a = ap.parse_args(argv)
    path = prepare(
        a.out_dir, a.n_seq, a.seq_len, a.d_sae, a.density, a.seed, force=a.force, l0=a.l0
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
