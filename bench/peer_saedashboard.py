"""Time SAEDashboard 0.8.0 (the reference tool) on the shared benchmark workload.

Runs in the PEER venv only (created by ``bench/setup_peer.sh``); it imports no
project code and only calls SAEDashboard's public API::

    bench/.peer-venv/bin/python bench/peer_saedashboard.py --workload bench/.workload \\
        --features 0:64 [--cache-dir DIR [--warm-cache]] \\
        [--minibatch-size-features 256] [--minibatch-size-tokens 64] \\
        [--threads N] [--save-json OUT.json]

Loading (model from ``model_cfg.json`` + ``model.safetensors`` with the
TransformerLens 2.17 API, tokens, SAE) and the sanity checks are NOT timed;
``seconds`` is the wall time of ``SaeVisRunner(cfg).run(encoder, model, tokens)``
alone.  The last stdout line is one JSON object.

Cache semantics of SAEDashboard 0.8.0 (``SaeVisConfig.cache_dir``): for every
token minibatch ``i`` it stores the hook activations as
``cache_dir/model_activations_{i}.pt`` (torch.save of ``{hook_point: [b, seq,
d_in]}``) the first time they are computed and loads that file whenever it
exists -- within a run (feature batches after the first skip the model
forward) and across runs.  The files are keyed by minibatch index only, not by
model, tokens or minibatch size, so a stale cache silently gives wrong data.
This script therefore:

* without ``--warm-cache``: deletes ``model_activations_*.pt`` in the cache dir
  before the run ("cache_state": "cold": the first feature batch runs the
  model and fills the cache, later feature batches reuse it);
* with ``--warm-cache``: requires a cache written by this script for the same
  workload, hook and ``minibatch_size_tokens`` (stamp file
  ``bench_cache_stamp.json``) and reuses it ("warm": no model forward at all).

Without ``--cache-dir`` SAEDashboard re-runs the model on all tokens for every
feature batch ("cache_state": "none").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file

HOOK_NAME = "blocks.6.hook_resid_pre"
KNOWN_BUFFER_SUFFIXES = (".attn.mask", ".attn.IGNORE")
STAMP = "bench_cache_stamp.json"


def log(msg: str) -> None:
    print(f"[peer] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


class RssSampler:
    """Samples RSS every ``interval`` s in a thread; ``peak`` is the maximum."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak: float | None = None
        self._stop = threading.Event()
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss / 2**20
            self.peak = rss if self.peak is None else max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        if self._proc is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._proc is not None:
            self._thread.join()


def parse_features(spec: str) -> tuple[int, int]:
    a, b = spec.split(":")
    a, b = int(a), int(b)
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"bad feature range {spec!r}")
    return a, b


def load_model(wl: Path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg_kwargs = json.loads((wl / "model_cfg.json").read_text())
    # weights are loaded below; skip the (slow) random init
    cfg = HookedTransformerConfig(**{**cfg_kwargs, "init_weights": False})
    model = HookedTransformer(cfg)
    state = load_file(str(wl / "model.safetensors"))
    # assign=True adopts the loaded tensors instead of copying them, so the
    # load does not hold two copies of the weights (keeps ru_maxrss honest)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    bad = [k for k in missing if not k.endswith(KNOWN_BUFFER_SUFFIXES)]
    if bad or unexpected:
        raise RuntimeError(
            f"state dict mismatch: missing={bad[:10]} unexpected={list(unexpected)[:10]}"
        )
    model.eval()
    return model


def load_sae(wl: Path):
    """SAELens ``SAE.load_from_disk``; falls back to building a StandardSAE
    from the raw tensors if this sae-lens version can't read the cfg."""
    sae_dir = wl / "sae"
    try:
        from sae_lens import SAE

        sae = SAE.load_from_disk(str(sae_dir), device="cpu")
        how = "SAE.load_from_disk"
    except Exception as e:  # pragma: no cover - depends on peer sae-lens version
        log(f"SAE.load_from_disk failed ({e!r}); building StandardSAE from tensors")
        from sae_lens import StandardSAE, StandardSAEConfig

        raw = json.loads((sae_dir / "cfg.json").read_text())
        w = load_file(str(sae_dir / "sae_weights.safetensors"))
        cfg = StandardSAEConfig(
            d_in=raw["d_in"],
            d_sae=raw["d_sae"],
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True),
        )
        cfg.metadata.hook_name = raw["metadata"]["hook_name"]
        sae = StandardSAE(cfg)
        sae.load_state_dict(w)
        how = "StandardSAE(from tensors)"
    sae.eval()
    return sae, how


@torch.no_grad()
def check_inputs(model, sae, tokens: torch.Tensor, wl: Path) -> dict:
    """Model hook acts vs the reference written by our TransformerLens, and
    sae.encode vs relu((x - b_dec) @ W_enc + b_enc)."""
    ref = load_file(str(wl / "reference.safetensors"))["hook_acts"]
    n = ref.shape[0]
    _, cache = model.run_with_cache(tokens[:n], names_filter=HOOK_NAME, stop_at_layer=7)
    x = cache[HOOK_NAME]
    model_diff = float((x - ref).abs().max())
    if model_diff > 1e-3:
        raise RuntimeError(f"peer model differs from reference: max|diff|={model_diff}")
    xs = x.reshape(-1, x.shape[-1])[:64]
    plain = torch.relu((xs - sae.b_dec) @ sae.W_enc + sae.b_enc)
    enc = sae.encode(xs)
    sae_diff = float((enc - plain).abs().max())
    if sae_diff > 1e-4:
        raise RuntimeError(f"sae.encode differs from the plain formula: {sae_diff}")
    norms = sae.W_dec.norm(dim=1)
    return {
        "model_max_abs_diff": model_diff,
        "sae_max_abs_diff": sae_diff,
        "density_first_seqs": float((enc > 0).float().mean()),
        "w_dec_unit_norm": bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-5)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time SAEDashboard on the bench workload")
    ap.add_argument("--workload", type=Path, required=True)
    ap.add_argument("--features", type=parse_features, default=(0, 64), help="A:B (half-open)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument(
        "--warm-cache", action="store_true", help="reuse a filled cache_dir (see docstring)"
    )
    ap.add_argument(
        "--minibatch-size-features", type=int, default=None, help="SaeVisConfig default 256"
    )
    ap.add_argument(
        "--minibatch-size-tokens", type=int, default=None, help="SaeVisConfig default 64"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--save-json", type=Path, default=None, help="SaeVisData.save_json output (untimed)"
    )
    ap.add_argument("--skip-checks", action="store_true")
    a = ap.parse_args(argv)

    warnings.filterwarnings("ignore")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)

    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    wl = a.workload
    meta = json.loads((wl / "workload.json").read_text())
    t0 = time.perf_counter()
    model = load_model(wl)
    sae, sae_how = load_sae(wl)
    tokens = load_file(str(wl / "tokens.safetensors"))["tokens"]
    checks = {} if a.skip_checks else check_inputs(model, sae, tokens, wl)
    load_s = time.perf_counter() - t0
    log(f"loaded in {load_s:.1f}s (sae via {sae_how}); checks {checks}")

    fa, fb = a.features
    if fb > sae.cfg.d_sae:
        raise SystemExit(f"features {fa}:{fb} exceed d_sae={sae.cfg.d_sae}")
    kw = {}
    if a.minibatch_size_features is not None:
        kw["minibatch_size_features"] = a.minibatch_size_features
    if a.minibatch_size_tokens is not None:
        kw["minibatch_size_tokens"] = a.minibatch_size_tokens

    cache_state = "none"
    stamp = None
    if a.cache_dir is not None:
        cfg_probe = SaeVisConfig(hook_point=HOOK_NAME, features=[0], **kw)
        stamp = {
            "workload_params": meta["params"],
            "workload_format": meta.get("format"),
            "hook_point": HOOK_NAME,
            "minibatch_size_tokens": cfg_probe.minibatch_size_tokens,
        }
        a.cache_dir.mkdir(parents=True, exist_ok=True)
        files = sorted(a.cache_dir.glob("model_activations_*.pt"))
        stamp_path = a.cache_dir / STAMP
        if a.warm_cache:
            old = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
            if old != stamp or not files:
                raise SystemExit(
                    f"--warm-cache: {a.cache_dir} holds no matching cache (stamp {old}); run cold first"
                )
            cache_state = "warm"
        else:
            for f in files:
                f.unlink()
            stamp_path.unlink(missing_ok=True)
            cache_state = "cold"

    cfg = SaeVisConfig(
        hook_point=HOOK_NAME,
        features=list(range(fa, fb)),
        device="cpu",
        dtype="float32",
        cache_dir=a.cache_dir,
        verbose=False,
        **kw,
    )

    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_before = rss_mb()
    load1_before = os.getloadavg()[0]
    with RssSampler() as sampler:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t1 = time.perf_counter()
        data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
        seconds = time.perf_counter() - t1
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    # user+sys CPU of this process during the run: less sensitive than wall
    # time to other load on a shared machine
    cpu_seconds = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    load1_after = os.getloadavg()[0]
    rss_after = rss_mb()  # SaeVisData still alive here
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux

    got = sorted(data.feature_data_dict)
    if got != list(range(fa, fb)):
        raise RuntimeError(f"SAEDashboard returned features {got[:5]}... ({len(got)})")
    if a.cache_dir is not None:
        (a.cache_dir / STAMP).write_text(json.dumps(stamp) + "\n")
    if a.save_json is not None:
        data.save_json(a.save_json)

    result = {
        "tool": "saedashboard",
        "version": version("sae-dashboard"),
        "features": [fa, fb],
        "n_features": fb - fa,
        "cache_dir": a.cache_dir is not None,
        "cache_state": cache_state,
        "seconds": round(seconds, 3),
        "seconds_per_feature": round(seconds / (fb - fa), 4),
        "cpu_seconds": round(cpu_seconds, 2),
        "peak_rss_mb": round(peak_rss, 1),
        "peak_rss_before_run_mb": round(ru_before, 1),
        "run_peak_rss_sampled_mb": None if sampler.peak is None else round(sampler.peak, 1),
        "rss_before_run_mb": None if rss_before is None else round(rss_before, 1),
        "rss_after_run_mb": None if rss_after is None else round(rss_after, 1),
        "torch_threads": torch.get_num_threads(),
        "minibatch_size_features": cfg.minibatch_size_features,
        "minibatch_size_tokens": cfg.minibatch_size_tokens,
        "n_seq": int(tokens.shape[0]),
        "seq_len": int(tokens.shape[1]),
        "d_sae": int(sae.cfg.d_sae),
        "load_seconds": round(load_s, 2),
        "loadavg_1m": [round(load1_before, 2), round(load1_after, 2)],
        "checks": checks,
        "versions": {
            p: version(p) for p in ("torch", "transformer-lens", "sae-lens", "transformers")
        },
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
