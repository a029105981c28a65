"""One parser of source strings (core/specs.py): the same string gives the same spec in the
command line (compute and precompute), the app's links, the hosted allowlist and the API."""

from __future__ import annotations

import argparse
import json

import pytest

from core.cli import load_sources as cli_load_sources
from core.precompute.args import config_from_args
from core.source_guard import SourceError
from core.specs import (
    DatasetSpec,
    DictionarySpec,
    ModelSpec,
    looks_like_path,
    parse_dataset,
    parse_dictionary,
    parse_model,
    spec_text,
)


def test_demo_and_hub_names():
    assert parse_model("demo") == ModelSpec(kind="demo")
    assert parse_model("gpt2-small", device="cpu") == ModelSpec(
        kind="hub", name="gpt2-small", device="cpu"
    )
    assert parse_dictionary("gpt2-small-res-jb/blocks.8.hook_resid_pre") == DictionarySpec(
        kind="saelens", release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre"
    )
    assert parse_dataset("NeelNanda/pile-10k", 1024, 64) == DatasetSpec(
        kind="hub", path="NeelNanda/pile-10k", n_tokens=1024, context_length=64
    )


def test_an_existing_path_is_local_and_a_prefix_forces_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NeelNanda" / "pile-10k").mkdir(parents=True)
    # the ambiguous string: a directory of that name exists here, so it is local ...
    assert parse_dataset("NeelNanda/pile-10k").kind == "local"
    # ... and hub: says otherwise
    assert parse_dataset("hub:NeelNanda/pile-10k") == DatasetSpec(
        kind="hub", path="NeelNanda/pile-10k"
    )
    (tmp_path / "sae").mkdir()
    assert parse_dictionary("sae") == DictionarySpec(kind="saelens_local", path="sae")
    assert parse_dictionary("saelens:sae/x") == DictionarySpec(
        kind="saelens", release="sae", sae_id="x"
    )
    assert parse_model("sae").kind == "local"
    assert parse_model("hub:sae") == ModelSpec(kind="hub", name="sae")


@pytest.mark.parametrize(
    "parse, text",
    [
        (parse_dataset, "/no/such/file.jsonl"),
        (parse_dataset, "missing.txt"),
        (parse_dataset, "~/nothing-here-at-all"),
        (parse_dataset, "local:pile"),
        (parse_model, "./no-model-dir"),
        (parse_dictionary, "../no-sae-dir"),
        (parse_dictionary, "local:no-sae-dir"),
    ],
)
def test_a_missing_path_is_an_error_never_a_hub_request(parse, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match="no such file or directory") as err:
        parse(text)
    assert text.removeprefix("local:") in str(err.value)


@pytest.mark.parametrize(
    "parse, text, said",
    [
        (parse_model, "", "empty"),
        (parse_dictionary, "   ", "empty"),
        (parse_dataset, "a\nb", "control characters"),
        (parse_dictionary, "justaname", "RELEASE/ID"),
        (parse_dictionary, "release/", "RELEASE/ID"),
        (parse_dictionary, "clt:some/repo", "needs its layer"),
    ],
)
def test_bad_strings_say_what_to_write(parse, text, said):
    with pytest.raises(SourceError, match=said):
        parse(text)


def test_looks_like_path():
    assert looks_like_path("/a") and looks_like_path("~/a") and looks_like_path("x.parquet")
    assert not looks_like_path("NeelNanda/pile-10k") and not looks_like_path("gpt2-small")


def test_spec_text_reads_back_to_the_same_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    specs = [
        ModelSpec(kind="demo"),
        ModelSpec(kind="hub", name="gpt2-small"),
        ModelSpec(kind="local", path="d"),
        DictionarySpec(kind="demo"),
        DictionarySpec(kind="saelens", release="r", sae_id="a/b"),
        DictionarySpec(kind="saelens_local", path="d"),
        DatasetSpec(kind="demo"),
        DatasetSpec(kind="hub", path="d"),  # the hub, although a directory d exists
        DatasetSpec(kind="local", path="d"),
    ]
    parsers = {ModelSpec: parse_model, DictionarySpec: parse_dictionary, DatasetSpec: parse_dataset}
    for spec in specs:
        assert parsers[type(spec)](spec_text(spec)) == spec, spec
    clt = DictionarySpec(kind="clt", path="org/clt", layer=3)
    assert parse_dictionary(spec_text(clt), clt_layer=3) == clt


def _cli_specs(monkeypatch, argv: list[str]):
    """The specs ``python -m core compute`` builds from ``argv``."""
    import core.sources

    got = {}

    def capture(m, d, t):
        got.update(model=m, dictionary=d, dataset=t)
        return None

    monkeypatch.setattr(core.sources, "load_sources", capture)
    ap = argparse.ArgumentParser()
    from core.cli import _spec_args

    _spec_args(ap)
    cli_load_sources(ap.parse_args(argv))
    return got


#: (model, dictionary, dataset) strings: the demo, hub names, explicit prefixes, local paths
STRINGS = [
    ("demo", "demo", "demo"),
    ("gpt2-small", "gpt2-small-res-jb/blocks.8.hook_resid_pre", "NeelNanda/pile-10k"),
    ("hub:gpt2-small", "saelens:rel/id", "hub:NeelNanda/pile-10k"),
    ("localmodel", "localsae", "text.txt"),
]


@pytest.fixture()
def local_sources(tmp_path, monkeypatch):
    """A working directory holding the local paths of :data:`STRINGS`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "localmodel").mkdir()
    (tmp_path / "localsae").mkdir()
    (tmp_path / "text.txt").write_text("hello", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("model, dictionary, dataset", STRINGS)
def test_compute_and_precompute_read_strings_alike(
    local_sources, tmp_path, monkeypatch, model, dictionary, dataset
):
    """Before: compute took an unknown dataset for a local file, precompute for a hub one."""
    common = ["--model", model, "--dictionary", dictionary, "--dataset", dataset]
    sizes = ["--n-tokens", "4096", "--context-length", "64", "--device", "cpu"]
    cli = _cli_specs(monkeypatch, common + sizes)
    from core.cli import build_parser

    ap, _ = build_parser()
    args = ap.parse_args(["precompute", "--output-dir", str(tmp_path / "out"), *common, *sizes])
    pre = config_from_args(args)
    assert pre.model == cli["model"] == parse_model(model, device="cpu")
    assert pre.dictionary == cli["dictionary"] == parse_dictionary(dictionary)
    assert pre.dataset == cli["dataset"] == parse_dataset(dataset, 4096, 64)


@pytest.mark.parametrize("model, dictionary, dataset", STRINGS)
def test_links_and_the_allowlist_read_strings_like_the_command_line(
    local_sources, monkeypatch, model, dictionary, dataset
):
    from core.hosted import HostedConfig
    from pages._links import sources_from_params

    cli = _cli_specs(
        monkeypatch,
        ["--model", model, "--dictionary", dictionary, "--dataset", dataset, "--n-tokens", "4096"],
    )
    link = sources_from_params(
        {"model": model, "dictionary": dictionary, "dataset": dataset, "n_tokens": "4096"}
    )
    assert link == {part: spec.to_dict() for part, spec in cli.items()}
    hosted = HostedConfig.from_dict(
        {
            "models": [model],
            "dictionaries": [dictionary],
            "datasets": [{"source": dataset, "n_tokens": 4096, "label": "text"}],
        },
        source="hosted.toml",
    )
    for part in ("model", "dictionary", "dataset"):
        [(_, allowed)] = hosted.choices(part)
        assert allowed == link[part], part
    assert hosted.choices("dataset")[0][0] == "text"


def test_links_without_sources_and_with_bad_numbers():
    from pages._links import sources_from_params

    assert sources_from_params({"feature": "3", "ws": "abc"}) is None
    assert sources_from_params({"model": "demo"})["dataset"] == DatasetSpec().to_dict()
    with pytest.raises(SourceError, match="n_tokens= must be a whole number"):
        sources_from_params({"dataset": "demo", "n_tokens": "lots"})
    clt = sources_from_params({"dictionary": "clt:org/clt", "layer": "2"})["dictionary"]
    assert clt == DictionarySpec(kind="clt", path="org/clt", layer=2).to_dict()


def test_a_bad_allowlist_string_is_an_operator_error(tmp_path):
    from core.hosted import HostedConfig, HostedConfigError

    with pytest.raises(HostedConfigError, match=r"hosted.toml: dictionary entry 'nothing'"):
        HostedConfig.from_dict({"dictionaries": ["nothing"]}, source="hosted.toml")
    with pytest.raises(HostedConfigError, match="no such file"):
        HostedConfig.from_dict({"datasets": [str(tmp_path / "gone.jsonl")]}, source="h")


def test_cleaner_activation_options_reach_compute_and_precompute(monkeypatch, tmp_path):
    """--prompt-prefix/--prompt-suffix go into the dataset spec, --ignore-positions and
    --max-norm-ratio into the run config, from the command line and from a config file."""
    from core.cli import build_parser
    from core.config import ConfigError, parse_positions
    from core.precompute.args import apply_config_file
    from core.precompute.manifest import RunnerError

    opts = ["--prompt-prefix", "<user>", "--prompt-suffix", "</user>"]
    opts += ["--ignore-positions", "0,2:4", "--max-norm-ratio", "20"]
    cli = _cli_specs(monkeypatch, opts)
    want = parse_dataset("demo", prefix="<user>", suffix="</user>")
    assert cli["dataset"] == want
    ap, sub = build_parser()
    pre = config_from_args(ap.parse_args(["precompute", "--output-dir", str(tmp_path), *opts]))
    assert pre.dataset == want
    assert pre.run.ignore_positions == [0, 2, 3] and pre.run.max_norm_ratio == 20.0
    conf = tmp_path / "run.json"
    conf.write_text(
        json.dumps({"prompt_prefix": "A:", "ignore_positions": "1", "max_norm_ratio": 5})
    )
    args = apply_config_file(
        ap, sub, ["precompute", "--output-dir", str(tmp_path), "--config", str(conf)]
    )
    pre = config_from_args(args)
    assert pre.dataset.prefix == "A:" and pre.run.ignore_positions == [1]
    assert pre.run.max_norm_ratio == 5.0
    assert parse_positions("") is None and parse_positions([3, 1, 3]) == [1, 3]
    with pytest.raises(ConfigError, match="cannot read positions 'x'"):
        parse_positions("x")
    bad = ["precompute", "--output-dir", str(tmp_path), "--ignore-positions", "-1"]
    with pytest.raises(RunnerError, match="--ignore-positions: ignore_positions must be"):
        config_from_args(ap.parse_args(bad))
