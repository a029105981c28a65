"""Chart and HTML builders: what the dashboard's components say about a feature."""

from __future__ import annotations

import dataclasses
import html

import pytest

from core import charts
from core.config import RunConfig
from core.engine.features import IntervalGroup, Table
from tests.tiny import make_workspace


@pytest.fixture(scope="module")
def fd():
    config = RunConfig(batch_size=8, n_intervals=5, n_interval_examples=2)
    ws = make_workspace(16, config)
    return next(f for f in ws.features(list(range(16))).values() if f.n_active > 3)


def test_intervals_hide_empty_bins_and_count_them(fd):
    ex = fd.top_examples[0]
    groups = [
        IntervalGroup(0.0, 1.0, 0, 0.0, []),
        IntervalGroup(1.0, 2.0, 1, 0.25, [ex]),
        IntervalGroup(2.0, 3.0, 0, 0.0, []),
        IntervalGroup(3.0, 4.0, 3, 0.75, [ex]),
    ]
    page = charts.intervals_html(dataclasses.replace(fd, intervals=groups))
    assert "0 tokens" not in page and "no examples" not in page
    assert "1 token," in page and "1 tokens" not in page and "3 tokens," in page
    assert page.count("Interval (") == 2
    assert "2 empty intervals of 4 were not shown" in page
    one = charts.intervals_html(dataclasses.replace(fd, intervals=groups[:2]))
    assert "1 empty interval of 2 was not shown" in one


def test_density_chart_names_what_it_counts():
    summary = {"density": [0.0, 0.001, 0.01, 0.02, 0.2]}
    spec = charts.density_overview(summary).to_dict()
    enc = spec["encoding"]
    assert enc["y"]["title"] == "features"
    assert "density" in enc["x"]["title"]
    assert [t["title"] for t in enc["tooltip"]] == ["log10 density", "features"]
    assert "1 dead feature not shown" in spec["title"]


def test_correlation_columns_say_they_compare_activations():
    table = Table(indices=[4, 7], columns={"pearson": [0.5, 0.2], "cosine": [0.6, 0.3]})
    page = charts.table_html(table, "feature")
    assert "<th>cosine</th>" not in page and ">cosine<" not in page
    assert "activation cosine" in page and "activation pearson" in page
    assert "over the swept tokens" in page  # the hover explains


def test_extras_are_sentences_not_json(fd):
    extras = {
        "effects": {
            "method": "exact ablation",
            "write_hook": "blocks.1.hook_resid_pre",
            "k": 5,
            "legend": "loss effect = <b>",
            "mean_loss_qualifying": 0.125,
        },
        "decoder_layers": [1, 2],
        "decoder_norms_by_layer": [0.5, 0.25],
    }
    page = charts.extras_html(extras)
    assert "{" not in page and '"effects"' not in page
    assert "mean loss effect at the max token +0.1250" in page
    assert "exact ablation at blocks.1.hook_resid_pre" in page
    assert "<td>2</td><td>0.2500</td>" in page
    assert html.escape("loss effect = <b>") in page and "<b>" not in page
