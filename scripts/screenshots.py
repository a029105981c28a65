"""Screenshots of the app's views for the README, taken in a real browser.

Starts ``streamlit run app.py`` on the offline demo (the converted model, the demo SAE and
the corpus already in ``cache/``, as ``make demo`` leaves them) with a temporary memo and
knowledge store, so the project's ``cache/memo`` and ``cache/knowledge.db`` are not
touched, drives Debian's chromium through Playwright (as ``tests/app/test_browser.py``
does) at 1280 px wide and writes PNGs (palette-compressed with Pillow) into
``assets/screenshots/``:

* ``labels.png``: a demo feature's page with a label and Markdown notes saved through it;
* ``whole-row.png``: the same page with a top example expanded to its whole row;
* ``compare.png``: 2-3 demo features side by side;
* ``corpus-search.png``: the Search page's "In the dataset" mode, one occurrence picked;
* ``map.png``: the PCA map of the demo's 4,096 features (coloured by label);
* ``dfa.png``: direct feature attribution. The demo has no attention-output (``hook_z``)
  dictionary, so this one runs a second server on the tests' tiny random model with a
  16-feature ``hook_z`` SAE (``tests.app.fixtures:make_z_workspace``): real computed data,
  but of a tiny random model;
* ``directions.png``: a signed direction (``directions:`` dictionaries: activation = the
  projection on a given vector) with its most positive and most negative examples, again on
  the tiny random model (``tests.app.fixtures:make_directions_workspace``).

Every page shows what the app computed (nothing is faked). Run by hand (not by
``make test``); a cold demo feature page takes about a minute on two CPU cores::

    OMP_NUM_THREADS=2 .venv/bin/python scripts/screenshots.py [--only map,dfa] [--feature 105]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.app.browser import find_chromium, streamlit_server  # noqa: E402
from tests.conftest import CHROMIUM_ARGS  # noqa: E402

OUT = ROOT / "assets" / "screenshots"
WIDTH = 1280
HEIGHT = 900
#: a PNG above this is re-saved with fewer colours
MAX_BYTES = 300_000
Z_FACTORY = "tests.app.fixtures:make_z_workspace"
D_FACTORY = "tests.app.fixtures:make_directions_workspace"
SHOTS = ("labels", "whole-row", "compare", "corpus-search", "map", "dfa", "directions")
LABEL = "bind / binding(s)"
NOTES = "Fires on **bind** in *binding* and *bindings* (socket and name binding in the docs)."
STEP_MS = 600_000  # a cold demo page on two cores


def compress(path: Path) -> int:
    """Re-save ``path`` as a palette PNG (256 colours, then fewer until under
    :data:`MAX_BYTES`); returns its size."""
    img = Image.open(path).convert("RGB")
    for colours in (256, 128, 64):
        img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            break
    return path.stat().st_size


def settle(page, ms: int = 1500) -> None:
    """Wait until no Streamlit element is running, then let charts draw."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=STEP_MS
    )
    page.wait_for_timeout(ms)


#: scrolls the nearest scrollable ancestor of an element so that it sits ``offset`` px below
#: that ancestor's top (Streamlit scrolls its main block, not the window)
SCROLL_JS = """([e, offset]) => {
  let p = e.parentElement;
  while (p && !(p.scrollHeight > p.clientHeight + 2
                && /(auto|scroll)/.test(getComputedStyle(p).overflowY))) p = p.parentElement;
  if (!p) return;
  p.scrollTop += e.getBoundingClientRect().top - p.getBoundingClientRect().top - offset;
}"""


def to_top(locator, offset: int = 70) -> None:
    """Scroll ``locator``'s first element to ``offset`` px below the top of its scroller."""
    locator.page.evaluate(SCROLL_JS, [locator.first.element_handle(), offset])
    locator.first.page.wait_for_timeout(500)


def nearest_features(page, feature: int, k: int = 2) -> list[int]:
    """The first ``k`` features of the page's "Nearest by decoder cosine" chips."""
    got: list[int] = []
    for text in page.locator('[data-testid="stButtonGroup"] button').all_inner_texts():
        m = re.fullmatch(r"\s*(\d+) · -?\d+\.\d+\s*", text)
        if m and int(m.group(1)) != feature and int(m.group(1)) not in got:
            got.append(int(m.group(1)))
    return got[:k]


def shoot(page, name: str, height: int | None = None) -> None:
    """Screenshot of the view (its top ``height`` pixels when given), compressed."""
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path))
    img = Image.open(path)
    if height is not None and img.height > height:
        img.crop((0, 0, img.width, height)).save(path)
    print(f"{path.relative_to(ROOT)}: {compress(path):,} bytes")


def demo_shots(page, base: str, feature: int, compare: str, query: str, want: set[str]) -> None:
    page.goto(f"{base}/feature?feature={feature}")
    page.wait_for_selector(".fs-ex .fs-tok", timeout=STEP_MS)
    settle(page)
    if compare == "auto":  # the feature and its nearest features by decoder cosine
        compare = ",".join(map(str, [feature, *nearest_features(page, feature)]))
    if want & {"labels", "map"}:
        label = page.locator('input[aria-label="Label"]')
        label.fill(LABEL)
        page.locator('textarea[aria-label="Notes (Markdown)"]').fill(NOTES)
        page.get_by_role("button", name="Save").click()
        page.get_by_text(f"Feature {feature} · {LABEL}").first.wait_for(timeout=STEP_MS)
        settle(page)
    if "labels" in want:
        shoot(page, "labels")
    if "whole-row" in want:
        page.get_by_text("Whole sequence of an example").click()
        page.get_by_text("tokens of row").first.wait_for(timeout=STEP_MS)
        settle(page)
        to_top(page.get_by_text("Whole sequence of an example"))
        to_top(page.locator(".st-key-fs_whole_seq .fs-ex"), 60)  # the row in its box
        page.mouse.move(5, 5)  # no tooltip left open over the row
        page.wait_for_timeout(300)
        shoot(page, "whole-row", height=660)
    if "compare" in want:
        page.goto(f"{base}/compare?features={compare}")
        page.wait_for_selector(".fs-ex .fs-tok", timeout=STEP_MS)
        settle(page)
        shoot(page, "compare")
    if "corpus-search" in want:
        page.set_viewport_size({"width": WIDTH, "height": 1300})  # occurrences and features
        page.goto(f"{base}/search?mode=corpus")
        page.locator('input[aria-label="Find in the dataset"]').fill(query)
        page.get_by_role("button", name="Find").click()
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.wait_for(timeout=STEP_MS)
        settle(page, 800)
        box = grid.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 14, box["y"] + 35 + 17)  # first row's selection cell
        page.get_by_text("Features most active at row").wait_for(timeout=STEP_MS)
        page.locator('[data-testid="stDataFrame"]').nth(1).wait_for(timeout=STEP_MS)
        settle(page, 2500)
        shoot(page, "corpus-search")
        page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    if "map" in want:
        page.goto(f"{base}/map?method=pca&colour=label&find={feature}")
        page.wait_for_selector('[data-testid="stVegaLiteChart"] canvas, '
                               '[data-testid="stVegaLiteChart"] svg', timeout=STEP_MS)  # fmt: skip
        settle(page, 2500)
        shoot(page, "map")


def dfa_shot(page, base: str) -> None:
    page.goto(f"{base}/feature?feature=2")
    page.get_by_role("heading", name="Direct feature attribution").wait_for(timeout=STEP_MS)
    settle(page, 2000)
    to_top(page.get_by_role("heading", name="Direct feature attribution"))
    shoot(page, "dfa", height=640)


def directions_shot(page, base: str) -> None:
    page.goto(f"{base}/feature?feature=1")
    page.get_by_text("Most negative").first.wait_for(timeout=STEP_MS)
    settle(page, 2000)
    to_top(page.get_by_text("Most positive"), 90)
    shoot(page, "directions")


def run_server(env: dict[str, str], work: Path, name: str, body: Callable) -> None:
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    with (
        streamlit_server(work / name / "memo", work / f"{name}.log", env=env) as base,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        try:
            body(page, base)
        except Exception:
            page.screenshot(path=str(work / f"{name}-failed.png"), full_page=True)
            print(f"failed: see {work / f'{name}-failed.png'} and {work / f'{name}.log'}")
            raise
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SHOTS), help=f"some of {', '.join(SHOTS)}")
    ap.add_argument("--feature", type=int, default=105, help="the demo feature shown")
    ap.add_argument(
        "--compare",
        default="auto",
        help="features compared (default: the feature and its 2 nearest by decoder cosine)",
    )
    ap.add_argument("--query", default="binding", help="the corpus search")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    want = {s.strip() for s in args.only.split(",") if s.strip()}
    if want - set(SHOTS):
        ap.error(f"unknown screenshots {sorted(want - set(SHOTS))}; choose from {SHOTS}")
    if find_chromium() is None:
        print("needs Debian's chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="featurescope-shots-")
    work = Path(tmp)
    print(f"working in {work} (memo, knowledge store, server logs)")
    author = {"FEATURESCOPE_AUTHOR": "screenshots"}
    if want - {"dfa", "directions"}:
        run_server(
            {"FEATURESCOPE_TEST_WORKSPACE": "", **author},  # the demo
            work,
            "demo",
            lambda page, base: demo_shots(page, base, args.feature, args.compare, args.query, want),
        )
    if "dfa" in want:
        run_server({"FEATURESCOPE_TEST_WORKSPACE": Z_FACTORY, **author}, work, "z", dfa_shot)
    if "directions" in want:
        env = {"FEATURESCOPE_TEST_WORKSPACE": D_FACTORY, **author}
        run_server(env, work, "directions", directions_shot)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
