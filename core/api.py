"""Notebook API with the names of SAEDashboard's quick start, so switching is one import.

::

    from core.api import SaeVisConfig, SaeVisRunner, save_feature_centric_vis

    config = SaeVisConfig(hook_point=sae.cfg.metadata.hook_name, features=range(64))
    data = SaeVisRunner(config).run(encoder=sae, model=model, tokens=tokens)
    save_feature_centric_vis(sae_vis_data=data, filename="dashboards.html")

``encoder`` is a raw ``sae_lens`` SAE (any architecture, transcoders included), one
of our :class:`~core.dictionaries.Dictionary` adapters, or a tensor of directions
``[n, d]`` read at ``hook_point`` (activation = ``x · v``, signed; see
:mod:`core.dictionaries.directions`); ``model`` a raw
``transformer_lens.HookedTransformer`` (or ``HookedSAETransformer``) or a
:class:`~core.models.ModelAdapter`; ``tokens`` a ``[prompts, positions]`` id tensor.
The result's ``feature_data_dict`` maps each feature to a plain
:class:`~core.engine.features.FeatureData`.

Differences from the reference, on purpose:

* the SAE is not modified (no ``fold_W_dec_norm``); decoder-side tables use the
  decoder as it is;
* positions holding BOS or padding are never examples and are not counted; other
  ``ignore_tokens`` and ``ignore_positions`` are not supported (a warning says so);
* ``perform_ablation_experiments`` and ``use_dfa`` are not supported (an error says so);
* ``feature_centric_layout`` is a list of component names from
  :data:`core.charts.COMPONENTS` (e.g. ``["summary", "act_hist", "top_examples"]``);
* ``cache_dir`` is a memo directory: features computed once come back from it without
  running the model.

To open sources by name instead (the strings the command line and the app's links take),
use :func:`core.workspace.open_workspace`: it shares the app's memo, so features the app
or a precompute already has come back without computing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from core.config import RunConfig, parse_features
from core.dictionaries.directions import DirectionsDictionary
from core.dictionaries.protocol import Dictionary
from core.dictionaries.saelens import SAELensDictionary
from core.engine.cached import compute_features
from core.engine.features import FeatureData
from core.export.html import save_html
from core.memo import Memo
from core.models import ModelAdapter
from core.storage import atomic_write

__all__ = ["SaeVisConfig", "SaeVisData", "SaeVisRunner", "save_feature_centric_vis"]


@dataclass
class SaeVisConfig:
    """What to compute, with the reference tool's field names.

    Attributes:
        hook_point: hook whose activations the dictionary reads (default: the
            dictionary's own ``hook_name``).
        features: feature indices (any iterable, an int, ``"0:64"``); ``None`` = all.
        minibatch_size_features: features encoded at once (bounds memory only).
        minibatch_size_tokens: prompts per forward pass.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        seed: seed of the interval sampling (results are reproducible from it).
        verbose: show a progress bar.
        feature_centric_layout: components shown by :func:`save_feature_centric_vis`, in
            order (names from :data:`core.charts.COMPONENTS`); ``None`` = all.
        cache_dir: a memo directory; computed features are stored and reused.
        ignore_tokens, ignore_positions, perform_ablation_experiments, use_dfa,
        quantile_feature_batch_size: accepted for compatibility (see the module notes).
        run_options: any further :class:`~core.config.RunConfig` field, e.g.
            ``{"n_top_examples": 30, "window_before": 10, "whole_sequence": True}``.
    """

    hook_point: str | None = None
    features: Iterable[int] | int | str | None = None
    minibatch_size_features: int = 256
    minibatch_size_tokens: int = 64
    device: str = "auto"
    dtype: str = "float32"
    seed: int | None = 0
    verbose: bool = False
    feature_centric_layout: list[str] | None = None
    cache_dir: str | Path | None = None
    ignore_tokens: set[int] = field(default_factory=set)
    ignore_positions: list[int] = field(default_factory=list)
    perform_ablation_experiments: bool = False
    use_dfa: bool = False
    quantile_feature_batch_size: int = 64
    run_options: dict[str, Any] = field(default_factory=dict)

    def feature_list(self, n_features: int | None = None) -> list[int] | None:
        """The requested features as a list (``None`` = all).

        With ``n_features`` (the dictionary's size) ranges and strings are checked against
        it before they are expanded, so ``range(10**12)`` fails at once.
        """
        f = self.features
        if f is None:
            return None
        if isinstance(f, bool):
            raise TypeError("features must be indices, a range or a string like '0:64'")
        if isinstance(f, int):
            return [f]
        if isinstance(f, str | range):
            return parse_features(f, n_features)
        return [int(x) for x in f]

    def to_run_config(self, n_features: int | None = None) -> RunConfig:
        """The engine configuration these settings mean (``n_features``: the dictionary's
        size, to check the feature selection against)."""
        if self.perform_ablation_experiments:
            raise NotImplementedError(
                "perform_ablation_experiments is not supported: the dashboards show activations, "
                "logit effects and correlations only"
            )
        if self.use_dfa:
            raise NotImplementedError("use_dfa (direct feature attribution) is not supported")
        fields = {
            "hook": self.hook_point,
            "features": self.feature_list(n_features),
            "batch_size": self.minibatch_size_tokens,
            "feature_chunk_size": self.minibatch_size_features,
            "device": self.device,
            "dtype": self.dtype,
            "seed": 0 if self.seed is None else int(self.seed),
            **self.run_options,
        }
        return RunConfig.from_dict(fields)


@dataclass
class SaeVisData:
    """Computed dashboards: ``feature_data_dict`` maps feature index -> :class:`FeatureData`.

    Attributes:
        feature_data_dict: the features, ascending.
        cfg: the configuration used (``None`` when loaded from JSON).
        meta: labels shown on exported pages (model, dictionary, hook, tokens).
    """

    feature_data_dict: dict[int, FeatureData] = field(default_factory=dict)
    cfg: SaeVisConfig | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[int]:
        return list(self.feature_data_dict)

    def update(self, other: SaeVisData) -> None:
        """Add (or replace) the features of ``other``."""
        self.feature_data_dict.update(other.feature_data_dict)
        self.feature_data_dict = dict(sorted(self.feature_data_dict.items()))

    def save_feature_centric_vis(self, filename: str | Path, **kwargs: Any) -> list[Path]:
        """Same as :func:`save_feature_centric_vis` with this data."""
        return save_feature_centric_vis(self, filename, **kwargs)

    def save_json(self, filename: str | Path) -> Path:
        """Write the feature data (and meta) as JSON, atomically."""
        payload = {
            "meta": self.meta,
            "features": [fd.to_dict() for fd in self.feature_data_dict.values()],
        }
        return atomic_write(filename, json.dumps(payload, ensure_ascii=False, allow_nan=False))

    @classmethod
    def load_json(cls, filename: str | Path) -> SaeVisData:
        """Read what :meth:`save_json` wrote."""
        payload = json.loads(Path(filename).read_text(encoding="utf-8"))
        feats = [FeatureData.from_dict(d) for d in payload["features"]]
        return cls({fd.index: fd for fd in feats}, None, dict(payload.get("meta", {})))


def _wrap_encoder(encoder: Any, hook_point: str | None = None):
    if isinstance(encoder, Dictionary):
        return encoder
    if isinstance(encoder, SAE):
        return SAELensDictionary(encoder, source={"kind": "notebook"})
    if isinstance(encoder, torch.Tensor):
        if not hook_point:
            raise TypeError(
                "a tensor of directions needs the hook it is read at: set "
                "SaeVisConfig(hook_point='blocks.6.hook_resid_pre', ...)"
            )
        return DirectionsDictionary.from_tensor(encoder, hook_point)
    raise TypeError(
        f"encoder must be a sae_lens SAE (SAE.from_pretrained / SAE.load_from_disk), a "
        f"core.dictionaries adapter or a tensor of directions [n, d], got "
        f"{type(encoder).__name__}"
    )


def _wrap_model(model: Any):
    if isinstance(model, ModelAdapter):
        return model
    if isinstance(model, HookedTransformer):
        return ModelAdapter(model, {"kind": "notebook", "name": model.cfg.model_name})
    raise TypeError(
        f"model must be a transformer_lens HookedTransformer or a core.models.ModelAdapter, "
        f"got {type(model).__name__}"
    )


class SaeVisRunner:
    """Computes dashboards for ``config`` (see :class:`SaeVisConfig`)."""

    def __init__(self, cfg: SaeVisConfig):
        if not isinstance(cfg, SaeVisConfig):
            raise TypeError(f"expected a SaeVisConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    def run(self, encoder: Any, model: Any, tokens: Any) -> SaeVisData:
        """Sweep ``tokens`` through ``model`` and ``encoder``; returns :class:`SaeVisData`.

        Args:
            encoder: a sae_lens SAE / transcoder, a :class:`~core.dictionaries.Dictionary`,
                or a tensor of directions ``[n, d]`` (read at ``cfg.hook_point``).
            model: a HookedTransformer (or HookedSAETransformer) or a ``ModelAdapter``.
            tokens: ``[prompts, positions]`` token ids (BOS first, as the SAE was trained).

        The model and dictionary are moved to ``cfg.device`` and ``cfg.dtype``.
        """

        cfg = self.cfg
        dictionary = _wrap_encoder(encoder, cfg.hook_point)
        rc = cfg.to_run_config(dictionary.n_features)
        adapter = _wrap_model(model)
        special = {adapter.bos_token_id, adapter.pad_token_id} - {None}
        extra_ignore = set(cfg.ignore_tokens) - special
        if extra_ignore:
            warnings.warn(
                f"ignore_tokens {sorted(extra_ignore)[:5]} are not ignored: only BOS and padding "
                "positions are skipped",
                stacklevel=2,
            )
        if cfg.ignore_positions:
            warnings.warn("ignore_positions is not supported and has no effect", stacklevel=2)
        memo = Memo(cfg.cache_dir) if cfg.cache_dir is not None else None
        progress = None
        bar = None
        if cfg.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=100, desc="dashboards", unit="%")

            def progress(frac: float, msg: str) -> None:
                bar.n = round(100 * frac, 1)
                bar.set_postfix_str(msg)

        try:
            data = compute_features(
                adapter,
                dictionary,
                tokens,
                rc,
                memo,
                dataset={"kind": "notebook", "shape": list(getattr(tokens, "shape", []))},
                progress=progress,
            )
        finally:
            if bar is not None:
                bar.close()
            if memo is not None:
                memo.close()
        hook = rc.hook or dictionary.hook_in
        shape = tuple(getattr(tokens, "shape", ()))
        meta = {
            "title": f"{adapter.name} · {hook}",
            "model": adapter.name,
            "dictionary": dictionary.identity().get("architecture", dictionary.family),
            "hook": hook,
            "tokens": " × ".join(str(s) for s in shape),
        }
        return SaeVisData(dict(data), cfg, meta)


def save_feature_centric_vis(
    sae_vis_data: SaeVisData,
    filename: str | Path,
    feature_idx: int | None = None,
    include_only: Iterable[int] | None = None,
    separate_files: bool = False,
    layout: list[str] | None = None,
) -> list[Path]:
    """Write the dashboards as standalone HTML (offline; charts and picker included).

    Args:
        sae_vis_data: what :meth:`SaeVisRunner.run` returned.
        filename: the HTML file (with ``separate_files``, the base name: ``NAME_<i>.html``).
        feature_idx: the feature shown first (default: the first).
        include_only: only these features.
        separate_files: one file per feature instead of one file with a picker.
        layout: components in order (default: the config's ``feature_centric_layout``).

    Returns:
        The paths written.
    """
    data = sae_vis_data.feature_data_dict
    keep = list(data) if include_only is None else [int(i) for i in include_only]
    missing = [i for i in keep if i not in data]
    if missing:
        raise KeyError(f"features {missing[:5]} are not in this data (it has {list(data)[:10]})")
    if feature_idx is not None and feature_idx not in keep:
        raise KeyError(f"feature_idx {feature_idx} is not among the saved features")
    cfg = sae_vis_data.cfg
    if layout is None and cfg is not None:
        layout = cfg.feature_centric_layout
    feats = [data[i] for i in keep]
    path = Path(filename)
    if not separate_files:
        return [save_html(path, feats, sae_vis_data.meta, layout, start=feature_idx)]
    out = []
    for fd in feats:
        meta = dict(sae_vis_data.meta)
        meta["title"] = f"{meta.get('title', 'Feature')} · feature {fd.index}"
        target = path.with_name(f"{path.stem}_{fd.index}{path.suffix or '.html'}")
        out.append(save_html(target, [fd], meta, layout))
    return out
