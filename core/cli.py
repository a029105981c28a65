"""Command line: ``python -m core <command>``.

Commands:
    demo-prepare   convert the embedded demo model, build and tokenise the demo corpus
                   (idempotent: a second run reuses what is in ``cache/``)
    compute        compute feature data for a model, dictionary and dataset and write
                   it as JSON (one object per feature), through the memo layer
    releases       list pretrained SAELens releases (offline), optionally for one model
    precompute     dashboards for a whole dictionary or a feature range, written chunk by
                   chunk (resumable) as a memo, HTML pages and Neuronpedia batch files;
                   settings from the command line and/or --config FILE (JSON or TOML)
    inspect        summarise a precompute output directory (what, features, tokens, when,
                   sizes); --json for the full description
    explain        explain features with a language model (OpenAI-compatible endpoint or a
                   local Hugging Face model) and score the explanations; resumable
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import time
from pathlib import Path

from core.config import RunConfig, parse_features, parse_positions
from core.memo import Memo, MemoError
from core.precompute.manifest import MANIFEST
from core.precomputed import open_precomputed


def _spec_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("sources")
    g.add_argument(
        "--model", default="demo", help="'demo', a TransformerLens name, or a local HF directory"
    )
    g.add_argument(
        "--dictionary", default="demo", help="'demo', RELEASE/ID, or a local SAELens directory"
    )
    g.add_argument("--clt", default=None, help="cross-layer transcoder directory or HF repo id")
    g.add_argument("--clt-layer", type=int, default=None)
    g.add_argument("--clt-weights", default=None, help="weights file name inside the CLT directory")
    g.add_argument("--dataset", default="demo", help="'demo', a local file, or hub:PATH")
    g.add_argument("--n-tokens", type=int, default=65_536)
    g.add_argument("--context-length", type=int, default=128)
    g.add_argument("--dtype", default="float32")
    g.add_argument("--device", default="auto")
    g = ap.add_argument_group("cleaner activations (part of the result's identity)")
    g.add_argument("--prompt-prefix", default=None, help="text put before every document")
    g.add_argument("--prompt-suffix", default=None, help="text put after every document")
    g.add_argument(
        "--ignore-positions", default=None, help="positions not counted: '0', '0,1', '0:4'"
    )
    g.add_argument(
        "--max-norm-ratio", type=float, default=None,
        help="ignore tokens whose activation norm is over this multiple of the median",
    )  # fmt: skip


def load_sources(args: argparse.Namespace):
    """Specs from command-line arguments -> (model, dictionary, tokens, dataset identity).

    The strings are read by :mod:`core.specs` (the same rules as ``precompute``, the app's
    links and the hosted allowlist)."""
    from core.sources import load_sources
    from core.specs import parse_dataset, parse_dictionary, parse_model

    if args.clt:
        dspec = parse_dictionary(f"clt:{args.clt}", args.clt_layer, args.clt_weights)
    else:
        dspec = parse_dictionary(args.dictionary)
    mspec = parse_model(args.model, dtype=args.dtype, device=args.device)
    data = parse_dataset(
        args.dataset,
        args.n_tokens,
        args.context_length,
        prefix=args.prompt_prefix or "",
        suffix=args.prompt_suffix or "",
    )
    return load_sources(mspec, dspec, data)


def cmd_demo_prepare(args: argparse.Namespace) -> int:
    from core.sources import DatasetSpec, ModelSpec, load_model, load_tokens

    t = time.perf_counter()
    model = load_model(ModelSpec(kind="demo", device="cpu"))
    print(f"demo model ready ({model.name}, {time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    tokens, _ = load_tokens(DatasetSpec(kind="demo"), model)
    print(
        f"demo corpus ready: {tokens.shape[0]} rows x {tokens.shape[1]} tokens ({time.perf_counter() - t:.1f} s)"
    )
    return 0


def cmd_compute(args: argparse.Namespace) -> int:
    from core.engine.cached import compute_features

    model, dictionary, tokens, identity = load_sources(args)
    cfg = RunConfig(
        features=parse_features(args.features, dictionary.n_features),
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        ignore_positions=parse_positions(args.ignore_positions),
        max_norm_ratio=args.max_norm_ratio,
    )
    memo = None if args.no_memo else Memo()
    t = time.perf_counter()

    def progress(frac: float, msg: str) -> None:
        print(f"\r{frac * 100:5.1f}% {msg:<40}", end="", file=sys.stderr, flush=True)

    data = compute_features(
        model, dictionary, tokens, cfg, memo, dataset=identity, progress=progress
    )
    print(file=sys.stderr)
    out = [d.to_dict() for d in data.values()]
    text = json.dumps(out, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{len(out)} features in {time.perf_counter() - t:.1f} s -> {args.out}")
    else:
        print(text)
    return 0


def cmd_releases(args: argparse.Namespace) -> int:
    from core.sources import saelens_releases

    for release, info in sorted(saelens_releases(args.model).items()):
        print(f"{release}\t{info['model']}\t{len(info['ids'])} ids")
    return 0


def _precompute_args(p: argparse.ArgumentParser) -> None:
    """Options of ``precompute``: ours plus the reference runner's names as aliases."""
    _spec_args(p)
    # unset defaults so explicit values, aliases and --config values can be told apart
    p.set_defaults(
        model=None, dictionary=None, dataset=None, n_tokens=None, context_length=None,
        dtype=None, device=None,
    )  # fmt: skip
    p.add_argument("--config", default=None, help="JSON or TOML file with any of these settings")
    g = p.add_argument_group("reference-runner names (SAEDashboard's neuronpedia runner)")
    g.add_argument("--sae-set", default=None, help="SAELens release (and default Neuronpedia set)")
    g.add_argument("--sae-path", default=None, help="SAE id inside --sae-set, or a local directory")
    g.add_argument("--from-local-sae", action="store_true", help="--sae-path is a local directory")
    g.add_argument("--dataset-path", default=None, help="same as --dataset")
    g.add_argument("--n-prompts", type=int, default=None, help="total prompts (rows) to sweep")
    g.add_argument("--n-tokens-in-prompt", type=int, default=None, help="same as --context-length")
    g.add_argument("--model-dtype", "--model_dtype", dest="model_dtype", default=None)
    g.add_argument("--sae-dtype", "--sae_dtype", dest="sae_dtype", default=None)
    g.add_argument("--hf-model-path", default=None, help="local Hugging Face model directory")
    g.add_argument("--use-clt", action="store_true", help="--sae-path is a cross-layer transcoder")
    g.add_argument("--clt-layer-idx", type=int, default=None, help="same as --clt-layer")
    g.add_argument("--clt-weights-filename", default=None, help="same as --clt-weights")
    g = p.add_argument_group("what to compute")
    g.add_argument("--features", default=None, help="'all' (default), '0:4096', '1,5,9'")
    g.add_argument(
        "--transcoder", "--use-transcoder", dest="transcoder", action="store_true",
        help="the dictionary must be a transcoder",
    )  # fmt: skip
    g.add_argument(
        "--skip-transcoder", "--use-skip-transcoder", dest="skip_transcoder",
        action="store_true", help="the dictionary must be a skip transcoder",
    )  # fmt: skip
    g.add_argument("--hook", default=None, help="hook to read (default: the dictionary's)")
    g.add_argument(
        "--features-at-a-time", "--n-features-at-a-time", "--n-features-per-batch",
        dest="features_at_a_time", type=int, default=None,
        help="features per chunk: one sweep, one HTML page, one batch file (default 512)",
    )  # fmt: skip
    g.add_argument(
        "--batch-size", "--n-prompts-in-forward-pass", dest="batch_size", type=int,
        default=None, help="prompts per forward pass (token batch size)",
    )  # fmt: skip
    g.add_argument("--feature-chunk-size", type=int, default=None, help="engine encode chunk")
    g.add_argument(
        "--min-density", type=float, default=None,
        help="skip (list, don't render) features firing on fewer tokens than this fraction",
    )  # fmt: skip
    g.add_argument(
        "--sparsity-threshold", type=float, default=None,
        help="the same threshold as log10 density (e.g. -6)",
    )  # fmt: skip
    g.add_argument("--n-top-examples", "--top-acts-group-size", dest="n_top_examples", type=int)
    g.add_argument("--n-intervals", "--n-quantiles", dest="n_intervals", type=int)
    g.add_argument(
        "--n-interval-examples", "--quantile-group-size", dest="n_interval_examples", type=int
    )
    g.add_argument("--window-before", type=int, default=None)
    g.add_argument("--window-after", type=int, default=None)
    g.add_argument("--whole-sequence", action="store_true", help="show whole prompts")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--correlation", choices=["all", "requested", "none"], default=None)
    g = p.add_argument_group("outputs")
    g.add_argument("--output-dir", "--outputs-dir", dest="output_dir", default=None)
    g.add_argument("--outputs", default=None, help="comma list of memo,html,neuronpedia (all)")
    g.add_argument("--layout", default=None, help="HTML components in order, comma-separated")
    g.add_argument("--overwrite", action="store_true", help="replace a different run in the dir")
    g.add_argument("--model-id", default=None, help="Neuronpedia model id")
    g.add_argument("--layer", type=int, default=None, help="Neuronpedia layer number")
    g.add_argument("--np-set-name", default=None, help="Neuronpedia source set name")
    g.add_argument("--np-sae-id-suffix", default=None, help="Neuronpedia __suffix")
    g.add_argument("--np-dataset", default=None, help="dataset label in Neuronpedia files")
    g = p.add_argument_group("run")
    g.add_argument("--wandb", "--use-wandb", dest="wandb", action="store_true")
    g.add_argument("--wandb-project", default=None)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument(
        "--writers", default="auto",
        help="processes that build and write the Neuronpedia batches while the run goes on: "
        "a number (0: in the run's own process) or auto (one per core but one, at most 4, for runs "
        "of 4,096 features or more)",
    )  # fmt: skip
    g.add_argument(
        "--memory-budget", default=None,
        help="device memory for the correlated-features table, e.g. 8G, 512M, bytes, or auto "
        "(half the device); past it the table is computed from sparse activations (default 4G)",
    )  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--free-unused-layers", action="store_true",
        help="drop the model's blocks after the hook once loaded (same results, less memory; "
        "with --dtype bfloat16 a 9B model's early-layer dictionary fits a 24 GB card)",
    )  # fmt: skip


def cmd_precompute(args: argparse.Namespace) -> int:
    # imported here: the run needs torch, which --help and inspect must not load
    from core.precompute.args import config_from_args
    from core.precompute.distributed import launch

    cfg = config_from_args(args)
    res = launch(cfg)  # alone, or one rank under torchrun (only rank 0 reports)
    if res is None:
        return 0
    print(
        f"{res['features_done']} features rendered, {res['features_skipped']} skipped, "
        f"{res['chunks_run']}/{res['chunks_total']} chunks computed now "
        f"({res['features_per_second']:.1f} features/s) -> {res['output_dir']}"
    )
    return 0


def _size(path: Path) -> int:
    """Bytes of the regular files below ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"  # pragma: no cover - the loop returns


def inspect_text(store) -> str:
    """A readable summary of a precompute output (what, features, tokens, when, sizes)."""
    d = store.describe()
    dictionary = d["dictionary"]
    if isinstance(dictionary, dict):
        name = dictionary.get("name") or dictionary.get("release") or dictionary.get("path")
        arch = dictionary.get("architecture")
        dictionary = " ".join(str(v) for v in (name, f"({arch})" if arch else None) if v)
    dataset = d["dataset"]
    if isinstance(dataset, dict):
        dataset = dataset.get("label") or dataset.get("path") or dataset.get("kind") or "?"
    status = "complete" if d["complete"] else "incomplete (run the same command to finish)"
    mtime = (store.path / MANIFEST).stat().st_mtime
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(mtime))
    sizes = ", ".join(
        f"{part} {_human(_size(store.path / part))}"
        for part in d["outputs"]
        if (store.path / part).exists()
    )
    density = f" (density below {d['min_density']:g} or never firing)" if d["min_density"] else ""
    rows = [
        ("directory", d["path"]),
        ("status", f"{status}; chunks {d['chunks_done']}/{d['chunks_total']}"),
        ("model", d["model"]),
        ("dictionary", f"{dictionary} · {d['n_features']:,} features"),
        ("hook", d["hook"]),
        ("dataset", dataset),
        (
            "tokens",
            f"{d['n_tokens']:,} ({d['n_sequences']:,} sequences × {d['context_length']:,})",
        ),
        (
            "features",
            f"{d['n_requested']:,} requested · {d['n_done']:,} rendered · "
            f"{d['n_skipped']:,} skipped{density}",
        ),
        ("written", when),
        ("outputs", sizes or "none"),
        ("run id", str(d["run_id"])[:12]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_inspect(args: argparse.Namespace) -> int:
    with open_precomputed(args.path) as store:
        if args.json:
            print(json.dumps(store.describe(), indent=1, default=str))
        else:
            print(inspect_text(store))
    return 0


def _explain_args(p: argparse.ArgumentParser) -> None:
    """Options of ``explain``: the source options of ``precompute`` plus the explainer's."""
    _spec_args(p)
    p.add_argument("--features", default="all", help="'all', '0:4096', '1,5,9'")
    g = p.add_argument_group("explainer")
    g.add_argument("--backend", choices=["openai", "local"], default="local")
    g.add_argument(
        "--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    g.add_argument(
        "--llm", default=None,
        help="explainer model: the endpoint's model name, or a local HF directory ('demo': "
        "the demo's SmolLM2-135M-Instruct, the default for --backend local)",
    )  # fmt: skip
    g.add_argument("--llm-device", default="cpu", help="device of a local explainer model")
    g.add_argument(
        "--n-negatives", type=int, default=10, help="non-activating excerpts per feature"
    )
    g.add_argument(
        "--out",
        default=None,
        help="write explanations to this JSON-lines file instead of the knowledge store "
        "(default: the store at FEATURESCOPE_DB, where the app shows them)",
    )
    g.add_argument(
        "--author",
        default=None,
        help="stored as the author (default: FEATURESCOPE_AUTHOR or the OS user)",
    )
    g.add_argument(
        "--dry-run", action="store_true", help="print the requests and tokens, send nothing"
    )
    g.add_argument("--no-memo", action="store_true", help="compute features without the memo")
    g.add_argument("--no-progress", action="store_true")


def cmd_explain(args: argparse.Namespace) -> int:
    from core.explain.command import run_explain
    from core.workspace import Workspace

    model, dictionary, tokens, identity = load_sources(args)
    memo = None if args.no_memo else Memo()
    return run_explain(args, Workspace(model, dictionary, tokens, identity, memo))


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line: ``(parser, its precompute sub-parser)``."""
    ap = argparse.ArgumentParser(
        prog="python -m core",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo-prepare", help="prepare the offline demo in cache/")
    p.set_defaults(func=cmd_demo_prepare)
    p = sub.add_parser("compute", help="compute feature data as JSON")
    _spec_args(p)
    p.add_argument("--features", default="0:8")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-memo", action="store_true")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_compute)
    p = sub.add_parser("releases", help="list SAELens releases")
    p.add_argument("--model", default=None)
    p.set_defaults(func=cmd_releases)
    pre = sub.add_parser(
        "precompute",
        help="dashboards for a whole dictionary or range: memo, HTML, Neuronpedia (resumable)",
    )
    _precompute_args(pre)
    pre.set_defaults(func=cmd_precompute)
    p = sub.add_parser("inspect", help="describe a precompute output directory")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the full description as JSON")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("explain", help="explain and score features with a language model")
    _explain_args(p)
    p.set_defaults(func=cmd_explain)
    return ap, pre


def main(argv: list[str] | None = None) -> int:
    ap, pre = build_parser()
    # heavy modules (torch, TransformerLens) are imported by the commands that need them,
    # so --help and inspect answer at once; SourceError is a ValueError
    try:
        args = ap.parse_args(argv)
        if args.command == "precompute" and args.config:
            from core.precompute.args import apply_config_file

            args = apply_config_file(ap, pre, argv)
        return args.func(args)
    except (ValueError, KeyError, MemoError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
