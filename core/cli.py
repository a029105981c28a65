"""Command line: ``python -m core <command>``.

Commands:
    demo-prepare   convert the embedded demo model, build and tokenise the demo corpus
                   (idempotent: a second run reuses what is in ``cache/``)
    compute        compute feature data for a model, dictionary and dataset and write
                   it as JSON (one object per feature), through the memo layer
    releases       list pretrained SAELens releases (offline), optionally for one model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core.config import RunConfig, parse_features


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


def load_sources(args: argparse.Namespace):
    """Specs from command-line arguments -> (model, dictionary, tokens, dataset identity)."""
    from core.sources import (
        DatasetSpec,
        DictionarySpec,
        ModelSpec,
        load_dictionary,
        load_model,
        load_tokens,
        model_kwargs_for,
    )

    if args.clt:
        dspec = DictionarySpec(
            kind="clt", path=args.clt, layer=args.clt_layer, weights_file=args.clt_weights
        )
    elif args.dictionary == "demo":
        dspec = DictionarySpec(kind="demo")
    elif Path(args.dictionary).expanduser().exists():
        dspec = DictionarySpec(kind="saelens_local", path=args.dictionary)
    elif "/" in args.dictionary:
        release, sae_id = args.dictionary.split("/", 1)
        dspec = DictionarySpec(kind="saelens", release=release, sae_id=sae_id)
    else:
        raise SystemExit(f"--dictionary {args.dictionary!r}: use demo, RELEASE/ID or a directory")
    if args.model == "demo":
        mspec = ModelSpec(kind="demo", dtype=args.dtype, device=args.device)
    elif Path(args.model).expanduser().exists():
        mspec = ModelSpec(kind="local", path=args.model, dtype=args.dtype, device=args.device)
    else:
        mspec = ModelSpec(kind="hub", name=args.model, dtype=args.dtype, device=args.device)
    if args.dataset == "demo":
        data = DatasetSpec(kind="demo", n_tokens=args.n_tokens, context_length=args.context_length)
    elif args.dataset.startswith("hub:"):
        data = DatasetSpec(
            kind="hub",
            path=args.dataset[4:],
            n_tokens=args.n_tokens,
            context_length=args.context_length,
        )
    else:
        data = DatasetSpec(
            kind="local",
            path=args.dataset,
            n_tokens=args.n_tokens,
            context_length=args.context_length,
        )
    dictionary = load_dictionary(dspec, device=args.device)
    model = load_model(mspec, dictionary_kwargs=model_kwargs_for(dictionary))
    tokens, identity = load_tokens(data, model)
    return model, dictionary, tokens, identity


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
    from core.engine import compute_features
    from core.memo import Memo

    model, dictionary, tokens, identity = load_sources(args)
    cfg = RunConfig(
        features=parse_features(args.features, dictionary.n_features),
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
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


def main(argv: list[str] | None = None) -> int:
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
    args = ap.parse_args(argv)
    from core.sources import SourceError

    try:
        return args.func(args)
    except (SourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
