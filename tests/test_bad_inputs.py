"""Every bad input of :mod:`tests.bad_inputs`: a clear message, and nothing else harmed.

The cases (what is tried, how, which words the message must contain) are data in
``tests/bad_inputs.py``, shared with :mod:`tests.bad_input_report`. Each case here
asserts the message (a substring naming the problem and, where there is one, the fix) and
the intact part: features computed before are still served by the memo without a forward
pass, the workspace answers as before, and the case's own checks (token cache unchanged,
good sources still load, no pickle payload ran, the app renders afterwards...).
"""

from __future__ import annotations

import pytest

from tests.bad_input_report import cell
from tests.bad_inputs import CASES, GROUPS, Env, check


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("bad-inputs"))
    yield e
    e.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, env):
    outcome = case.run(env)
    wrong = check(case, outcome)
    assert not wrong, f"{case.tried}\n  produced: {outcome.message}\n  " + "\n  ".join(wrong)


def test_every_kind_of_bad_input_is_tried():
    assert {c.group for c in CASES} == set(GROUPS)
    assert all(c.expect for c in CASES), "every case names what its message must say"


def test_report_cells_cannot_break_the_table():
    got = cell("a|b <script>alert(1)</script>\n\x00\u202e\ud800 " + "x" * 300)
    assert "|" not in got.replace("\\|", "")
    assert "<" not in got and ">" not in got and "\n" not in got
    assert "\\u0000" in got and "\\u202e" in got and "\\ud800" in got
    assert len(got) < 200
