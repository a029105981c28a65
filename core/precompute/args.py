"""``python -m core precompute`` arguments and ``--config`` files -> :class:`PrecomputeConfig`.

The option definitions live in :mod:`core.cli`; this module maps the parsed values (our
names and the reference runner's) onto specs and a run configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from core.config import ConfigError, RunConfig, parse_positions
from core.dictionaries.protocol import DictionaryRole
from core.export.html import check_layout
from core.precompute.config import (
    OUTPUTS,
    NeuronpediaOptions,
    PrecomputeConfig,
)
from core.precompute.manifest import RunnerError
from core.specs import (
    DatasetSpec,
    DictionarySpec,
    ModelSpec,
    parse_dataset,
    parse_dictionary,
    parse_model,
)


def _load_config_file(path: str) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise RunnerError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except ValueError as exc:
        raise RunnerError(f"cannot read config file {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise RunnerError(f"config file {p} must hold a table/object of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


#: nested keys a config file may hold besides the command-line options
FILE_ONLY_KEYS = ("model_spec", "dictionary_spec", "dataset_spec", "run_config")


def apply_config_file(
    parser: argparse.ArgumentParser, subparser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    """Parse ``argv`` again with the values of ``--config FILE`` as defaults.

    The command line wins over the file. Keys are the long option names
    (``output_dir`` or ``output-dir``); besides them a file may hold full specs
    ``model_spec``/``dictionary_spec``/``dataset_spec`` and ``run_config`` (any
    :class:`~core.config.RunConfig` field).

    Args:
        parser: the top-level parser (``python -m core``).
        subparser: the ``precompute`` parser, whose defaults are replaced.
        argv: the command line (``None``: ``sys.argv[1:]``).
    """
    first = parser.parse_args(argv)
    if not getattr(first, "config", None):
        return first
    data = _load_config_file(first.config)
    extra = {k: data.pop(k) for k in FILE_ONLY_KEYS if k in data}
    known = {a.dest for a in subparser._actions} - {"help", "config", "func"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RunnerError(
            f"unknown setting(s) {unknown} in {first.config}; use the long option names "
            f"(e.g. output_dir, features, n_prompts) or {list(FILE_ONLY_KEYS)}"
        )
    subparser.set_defaults(**data)
    args = parser.parse_args(argv)
    args.file_extra = extra
    return args


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_byte_size(value: Any) -> int | None:
    """``8G``, ``512M``, ``1.5GiB``, ``123`` (bytes; suffixes are powers of 1024) or ``auto``
    (``None``: half the device's memory) as a number of bytes."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    size = 0
    if match:
        power = "kmgt".find(match.group(2).lower()) + 1 if match.group(2) else 0
        size = int(float(match.group(1)) * 1024**power)
    if size < 1:
        raise RunnerError(
            f"--memory-budget must be a positive size like 8G, 512M or a number of bytes "
            f"(or auto), got {value!r}"
        )
    return size


def _first(*values: Any) -> Any:
    """The first value that is not ``None`` (0 and "" count as given)."""
    return next((v for v in values if v is not None), None)


def config_from_args(args: Any) -> PrecomputeConfig:
    """Build a :class:`PrecomputeConfig` from ``python -m core precompute`` arguments.

    Accepts both our option names and the reference runner's (``--sae-set``,
    ``--sae-path``, ``--from-local-sae``, ``--dataset-path``, ``--n-prompts``,
    ``--n-features-at-a-time``, ``--use-transcoder``, ``--use-skip-transcoder``,
    ``--use-clt``, ``--clt-layer-idx``, ``--clt-weights-filename``, ...).
    """
    extra = dict(getattr(args, "file_extra", {}) or {})
    kinds = [
        name
        for name, on in (
            ("--transcoder", args.transcoder),
            ("--skip-transcoder", args.skip_transcoder),
            ("--clt", bool(args.clt) or args.use_clt),
        )
        if on
    ]
    if len(kinds) > 1:
        raise RunnerError(
            f"{' and '.join(kinds)} were both given: a dictionary is an SAE, a transcoder, a "
            "skip transcoder or a cross-layer transcoder; pick one"
        )
    expect: DictionaryRole | None = None
    if args.transcoder:
        expect = "transcoder"
    elif args.skip_transcoder:
        expect = "skip_transcoder"

    # --- dictionary -------------------------------------------------------------------------
    layer = args.clt_layer if args.clt_layer is not None else args.clt_layer_idx
    weights = args.clt_weights or args.clt_weights_filename
    if "dictionary_spec" in extra:
        dspec = DictionarySpec.from_dict(extra["dictionary_spec"])
        if dspec.kind == "clt":
            expect = "clt"
    elif args.clt or args.use_clt:
        path = args.clt or args.sae_path
        if args.clt and args.sae_path:
            raise RunnerError("--clt names the cross-layer transcoder; drop --sae-path")
        if args.dictionary:
            raise RunnerError("--clt names the dictionary; drop --dictionary")
        if not path:
            raise RunnerError("--use-clt needs the CLT directory: --clt PATH (or --sae-path PATH)")
        if layer is None:
            raise RunnerError("a cross-layer transcoder needs --clt-layer N (the layer to show)")
        dspec = parse_dictionary(f"clt:{path}", layer, weights or None)
        expect = "clt"
    else:
        if layer is not None or weights:
            raise RunnerError("--clt-layer/--clt-weights only apply with --clt PATH")
        if args.dictionary and args.sae_path:
            raise RunnerError("give the dictionary once: --dictionary or --sae-set/--sae-path")
        name = args.dictionary
        if name is None and args.sae_path:
            if args.from_local_sae:
                name = f"local:{args.sae_path}"
            elif Path(args.sae_path).expanduser().exists():
                name = args.sae_path
            elif args.sae_set:
                name = f"{args.sae_set}/{args.sae_path}"
            else:
                raise RunnerError(
                    f"--sae-path {args.sae_path!r} is not a directory: give --sae-set RELEASE "
                    "too, or --from-local-sae with a directory"
                )
        dspec = parse_dictionary(name or "demo")

    # --- model ---------------------------------------------------------------------------------
    dtype = args.dtype or args.model_dtype or args.sae_dtype or "float32"
    device = args.device or "auto"
    if "model_spec" in extra:
        mspec = ModelSpec.from_dict(extra["model_spec"])
    else:
        model = args.hf_model_path or args.model or "demo"
        if args.hf_model_path and args.model:
            raise RunnerError("give the model once: --model or --hf-model-path")
        mspec = parse_model(model, dtype=dtype, device=device)

    # --- dataset --------------------------------------------------------------------------------
    ctx = _first(args.context_length, args.n_tokens_in_prompt, 128)
    if args.n_prompts is not None and args.n_tokens is not None:
        raise RunnerError("give the amount of data once: --n-prompts or --n-tokens")
    if args.n_prompts is not None:
        if args.n_prompts < 1:
            raise RunnerError(f"--n-prompts must be positive, got {args.n_prompts}")
        n_tokens = args.n_prompts * ctx
    else:
        n_tokens = _first(args.n_tokens, 65_536)
    if args.dataset and args.dataset_path:
        raise RunnerError("give the dataset once: --dataset or --dataset-path")
    data = args.dataset or args.dataset_path or "demo"
    if "dataset_spec" in extra:
        dsspec = DatasetSpec.from_dict(extra["dataset_spec"])
    else:
        dsspec = parse_dataset(
            data,
            n_tokens,
            ctx,
            prefix=getattr(args, "prompt_prefix", None) or "",
            suffix=getattr(args, "prompt_suffix", None) or "",
        )

    # --- engine settings --------------------------------------------------------------------------
    run_fields: dict[str, Any] = {"dtype": dtype, "device": device}
    for dest, name in (
        ("hook", "hook"),
        ("batch_size", "batch_size"),
        ("feature_chunk_size", "feature_chunk_size"),
        ("n_top_examples", "n_top_examples"),
        ("n_intervals", "n_intervals"),
        ("n_interval_examples", "n_interval_examples"),
        ("window_before", "window_before"),
        ("window_after", "window_after"),
        ("seed", "seed"),
        ("correlation", "feature_correlation"),
    ):
        value = getattr(args, dest, None)
        if value is not None:
            run_fields[name] = value
    if args.whole_sequence:
        run_fields["whole_sequence"] = True
    if getattr(args, "max_norm_ratio", None) is not None:
        run_fields["max_norm_ratio"] = args.max_norm_ratio
    if getattr(args, "ignore_positions", None) is not None:
        try:
            run_fields["ignore_positions"] = parse_positions(args.ignore_positions)
        except ConfigError as exc:
            raise RunnerError(f"--ignore-positions: {exc}") from exc
    if args.memory_budget is not None:
        run_fields["memory_budget"] = parse_byte_size(args.memory_budget)
    run_fields.update(extra.get("run_config", {}))
    try:
        run = RunConfig.from_dict(run_fields)
    except (ConfigError, TypeError) as exc:
        raise RunnerError(str(exc)) from exc

    if args.min_density is not None and args.sparsity_threshold is not None:
        raise RunnerError("give the threshold once: --min-density or --sparsity-threshold")
    min_density = _first(args.min_density, 0.0)
    if args.sparsity_threshold is not None:
        min_density = 10.0 ** float(args.sparsity_threshold)
    outputs = args.outputs
    if isinstance(outputs, str):
        outputs = [o.strip() for o in outputs.split(",") if o.strip()]
    try:
        layout = None if args.layout is None else check_layout(args.layout)
    except ValueError as exc:
        raise RunnerError(str(exc)) from exc
    output_dir = args.output_dir
    if not output_dir:
        raise RunnerError("an output directory is needed: --output-dir DIR")
    cfg = PrecomputeConfig(
        output_dir=output_dir,
        model=mspec,
        dictionary=dspec,
        dataset=dsspec,
        run=run,
        features=args.features,
        features_per_chunk=_first(args.features_at_a_time, 512),
        min_density=min_density,
        outputs=list(outputs or OUTPUTS),
        layout=layout,
        expect_role=expect,
        neuronpedia=NeuronpediaOptions(
            model_id=args.model_id,
            layer=args.layer,
            set_name=args.np_set_name or args.sae_set,
            sae_id_suffix=args.np_sae_id_suffix,
            dataset=args.np_dataset,
        ),
        wandb=bool(args.wandb),
        wandb_project=args.wandb_project or "featurescope-precompute",
        threads=args.threads,
        writers=parse_writers(getattr(args, "writers", "auto")),
        progress=not args.no_progress,
        overwrite=bool(args.overwrite),
        free_unused_layers=bool(getattr(args, "free_unused_layers", False)),
    )
    cfg.validate()
    return cfg


def parse_writers(text: str | int | None) -> int | None:
    """``--writers``: ``auto`` (``None``) or a number of processes (0 or more)."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        n = int(str(text).strip())
    except ValueError:
        n = -1
    if n < 0:
        raise RunnerError(
            f"--writers takes a number of processes (0 or more) or auto, not {text!r}"
        )
    return n
