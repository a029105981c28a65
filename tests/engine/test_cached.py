"""Memoised computation: progress stays honest through building and saving the data."""

from __future__ import annotations

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.cached import compute_features
from core.memo import Memo
from core.models import ModelAdapter
from tests.tiny import HOOK, make_model, make_sae, random_tokens


def test_progress_reaches_the_end_only_after_every_feature_is_saved(tmp_path):
    model = make_model(n_layers=2)
    tokens = random_tokens(12, 10, seed=0)
    sae = make_sae("standard", 32, 40, HOOK, density=0.2)
    memo = Memo(tmp_path / "memo")
    events: list[tuple[str, float | int]] = []
    put = memo.put_bytes

    def recording_put(key, row):
        put(key, row)
        events.append(("saved", int(key.rsplit(":", 1)[1])))

    memo.put_bytes = recording_put
    compute_features(
        ModelAdapter(model, bos_token_id=0),
        SAELensDictionary(sae),
        tokens,
        RunConfig(features=list(range(40)), batch_size=4),
        memo,
        progress=lambda frac, msg: events.append(("progress", frac)),
    )
    fracs = [v for kind, v in events if kind == "progress"]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    last_save = max(i for i, (kind, _) in enumerate(events) if kind == "saved")
    first_full = next(i for i, e in enumerate(events) if e == ("progress", 1.0))
    assert first_full > last_save  # the bar is not full while data is still being written
    assert len([f for f in fracs if 0.8 < f < 1.0]) >= 5  # it moves while saving
