"""``--free-unused-layers``: the blocks after the hook are dropped, the results are not changed."""

from __future__ import annotations

import pytest
import torch

from core.cli import build_parser
from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.rows import feature_from_row
from core.memo import Memo
from core.models import ModelAdapter, ModelError
from core.precompute.args import config_from_args
from core.precompute.config import NeuronpediaOptions, PrecomputeConfig
from core.precompute.run import Sources, run_precompute
from tests.test_runner import _files, _memo_entries
from tests.tiny import BOS_ID, make_model, random_tokens, sae_at

HOOK = "blocks.1.hook_resid_post"


def test_blocks_after_the_hook_are_freed_and_outputs_unchanged():
    adapter = ModelAdapter(make_model(n_layers=4, d_model=32))
    tokens = random_tokens(3, 8, seed=0)
    before = adapter.run_to_hooks(tokens, [HOOK])[HOOK].clone()
    direction = torch.randn(5, adapter.d_model, generator=torch.Generator().manual_seed(1))
    logits = adapter.logit_directions(direction).clone()
    fingerprint = adapter.fingerprint()
    params = dict(adapter.model.named_parameters())
    later = [n for n in params if n.startswith(("blocks.2.", "blocks.3."))]
    want = sum(params[n].numel() * params[n].element_size() for n in later)
    total = sum(p.numel() * p.element_size() for p in params.values())

    freed = adapter.free_unused_layers([HOOK])

    print(f"freed {freed:,} of {total:,} parameter bytes ({freed / total:.0%})")
    assert freed == want > 0
    left = dict(adapter.model.named_parameters())
    assert not any(n.startswith(("blocks.2.", "blocks.3.")) for n in left)
    assert {"unembed.W_U", "ln_final.w", "blocks.1.mlp.W_in"} <= set(left)
    assert torch.equal(adapter.run_to_hooks(tokens, [HOOK])[HOOK], before)
    assert torch.equal(adapter.logit_directions(direction), logits)
    assert adapter.fingerprint() == fingerprint  # memo keys do not change
    with pytest.raises(ModelError, match="Blocks 2 and later were freed"):
        adapter.check_hook("blocks.3.hook_resid_post")
    assert adapter.free_unused_layers([HOOK]) == 0  # nothing more to free
    assert adapter.free_unused_layers(["hook_embed"]) == 0  # outside the blocks: keep all


def _sources():
    model = make_model(n_layers=4, d_model=32)  # the same weights each time (seed 0)
    tokens = random_tokens(16, 12, seed=1)
    dictionary = SAELensDictionary(sae_at(model, tokens, HOOK, d_sae=24))
    return Sources(ModelAdapter(model, bos_token_id=BOS_ID), dictionary, tokens, {"name": "t"})


def test_precompute_with_freed_layers_writes_the_same(tmp_path, monkeypatch):
    freed: list[int] = []
    free = ModelAdapter.free_unused_layers
    monkeypatch.setattr(
        ModelAdapter, "free_unused_layers", lambda self, hooks: freed.append(free(self, hooks))
    )
    outs = [tmp_path / "full", tmp_path / "lean"]
    for out, lean in zip(outs, (False, True), strict=True):
        cfg = PrecomputeConfig(
            output_dir=str(out),
            run=RunConfig(device="cpu", n_table_rows=4),
            features_per_chunk=8,
            neuronpedia=NeuronpediaOptions(set_name="tiny"),
            progress=False,
            free_unused_layers=lean,
        )
        app_memo = Memo(tmp_path / f"app-{lean}")
        try:
            run_precompute(cfg, _sources(), app_memo)
        finally:
            app_memo.close()
    assert len(freed) == 1 and freed[0] > 0  # blocks 2 and 3 were dropped in the second run
    full, lean = outs
    assert _files(lean) == _files(full)
    got, want = _memo_entries(lean), _memo_entries(full)
    assert got.keys() == want.keys()
    for key, blob in want.items():  # the same bytes, features included
        assert got[key] == blob, key
    features = [b for k, b in got.items() if not k.startswith("chunk:")]
    assert features and any(feature_from_row(b).top_examples for b in features)


def test_command_line_flag(tmp_path):
    ap, _ = build_parser()
    argv = ["precompute", "--output-dir", str(tmp_path), "--device", "cpu"]
    assert not config_from_args(ap.parse_args(argv)).free_unused_layers
    cfg = config_from_args(ap.parse_args([*argv, "--free-unused-layers"]))
    assert cfg.free_unused_layers and "free_unused_layers" in cfg.to_dict()
