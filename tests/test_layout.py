"""The README's Layout section names every module of core/ and pages/ (it is how a newcomer
finds where a change belongs), and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def test_every_module_is_in_the_layout():
    layout = _layout()
    modules = [*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").glob("*.py")]
    missing = [
        str(p.relative_to(ROOT))
        for p in modules
        if p.name != "__init__.py" and not re.search(rf"\b{re.escape(p.name)}\b", layout)
    ]
    assert not missing, f"README Layout does not name: {missing}"


def test_every_module_the_layout_names_exists():
    names = set(re.findall(r"\b([a-z_]+\.py)\b", _layout()))
    files = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    assert names <= files, f"README Layout names modules that do not exist: {names - files}"
