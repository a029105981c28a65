"""A hosted-mode load driver: many concurrent browser sessions against one ``streamlit run``.

Used by ``bench/load_app.py`` (the measurement) and ``tests/app/test_load.py`` (the
assertions). :func:`run_load` writes a hosted site (``tests/app/hosted_site.py``: login
off, but the allowlist, limits and the one-slot compute queue on), starts the app on it,
warms it up with one session, then drives ``sessions`` browser contexts of one Chromium
for ``seconds`` split into ``rounds`` (a session finishes the iteration it has begun, so
a round lasts at least one iteration). Each session loops:

* ``search_page``: open ``/search`` until the prompt box shows;
* ``search``: type a prompt unique to this session and visit, click "Find features",
  until the results table and the token pills show;
* ``feature``: open ``/feature?feature=k`` (k varies) until the heading and the
  top-activation examples show.

Every visit is timed (from the request until its content is visible) and checked: no
Streamlit exception box, no error or warning alert, no timeout, and no other session's
prompt anywhere on the page (the search page must show this session's own tokens). The
server's resident memory (the streamlit process and its children) is read before the
load, after each round and at the end, with the CPU time it used. Each visit opens a
new page, hence a new Streamlit session: closed sessions must not keep memory.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.app.browser import find_chromium, streamlit_server
from tests.app.fixtures import WORDS
from tests.app.hosted_site import write_site
from tests.conftest import CHROMIUM_ARGS

N_FEATURES = 64  # the hosted site's SAE
PROMPT_WORDS = 10
FIRST_LOAD_MS = 240_000  # the warm-up session imports torch and builds the workspace
STEP_MS = 120_000  # one visit under load (8 sessions share 2 cores and one compute slot)
KINDS = ("search_page", "search", "feature")

# Counts the page updates that showed a waiting notice, and the highest queue position in
# them (watched on every DOM change: a notice lives only while the session waits).
QUEUE_PROBE = """
window.__fsQueue = {seen: 0, max: 0};
new MutationObserver(() => {
  let top = 0;
  for (const el of document.querySelectorAll('[data-testid="stAlertContentInfo"]')) {
    const m = /position (\\d+) in the queue/.exec(el.textContent || "");
    if (m) top = Math.max(top, parseInt(m[1], 10));
  }
  if (top > 0) {
    window.__fsQueue.seen += 1;
    window.__fsQueue.max = Math.max(window.__fsQueue.max, top);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def missing_requirements() -> str | None:
    """Why the load cannot run here (with the fix), or ``None``."""
    if find_chromium() is None:
        return (
            "the load test needs Debian's chromium at /usr/bin/chromium: "
            "run `apt-get install -y chromium` (make test does it when missing)"
        )
    try:
        import playwright.async_api  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        return f"the load test needs the {exc.name} package: pip install {exc.name}"
    return None


# ---- server memory -----------------------------------------------------------------------------
def server_process(port: int):
    """The ``streamlit run`` process serving ``port`` (a :class:`psutil.Process`)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        flag = cmd.index("--server.port") if "--server.port" in cmd[:-1] else None
        if flag is not None and "streamlit" in " ".join(cmd) and cmd[flag + 1] == str(port):
            return proc
    raise RuntimeError(f"no streamlit process serves port {port}")


def server_use(proc, at: str) -> dict[str, Any]:
    """Resident memory (MB) and CPU time used so far (s) of ``proc`` and its children."""
    import psutil

    rss, cpu = 0, 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return {"at": at, "rss_mb": rss / 2**20, "cpu_s": cpu, "time": time.monotonic()}


# ---- what the sessions type ----------------------------------------------------------------------
class Prompts:
    """Prompts unique across sessions and visits, each remembered with its owner."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.owner: dict[str, int] = {}

    def new(self, session: int) -> str:
        while True:
            text = " ".join(self.rng.choice(WORDS) for _ in range(PROMPT_WORDS))
            if text not in self.owner:
                self.owner[text] = session
                return text

    def others(self, session: int) -> list[str]:
        return [t for t, s in self.owner.items() if s != session]


# ---- one browser session -------------------------------------------------------------------------
@dataclass
class Visit:
    session: int
    kind: str
    round: int
    seconds: float
    ok: bool
    queue_notices: int = 0
    queue_max: int = 0


@dataclass
class Session:
    index: int
    base: str
    page: Any
    prompts: Prompts
    visits: list[Visit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    step: int = 0

    async def _problems(self) -> list[str]:
        """Exception boxes and error/warning alerts on the page now."""
        found = []
        for testid in ("stException", "stAlertContentError", "stAlertContentWarning"):
            boxes = self.page.locator(f'[data-testid="{testid}"]')
            for k in range(await boxes.count()):
                text = (await boxes.nth(k).inner_text()).strip().replace("\n", " ")
                found.append(f"{testid}: {text[:300]}")
        return found

    async def _leak_check(self, where: str) -> None:
        body = await self.page.locator("body").inner_text()
        for text in self.prompts.others(self.index):
            if text in body:
                owner = self.prompts.owner[text]
                self.leaks.append(f"{where}: shows session {owner}'s prompt {text!r}")

    async def _queue(self) -> tuple[int, int]:
        try:
            q = await self.page.evaluate("window.__fsQueue || {seen: 0, max: 0}")
            return int(q["seen"]), int(q["max"])
        except Exception:
            return 0, 0

    async def _visit(self, kind: str, rnd: int, action) -> bool:
        """Run ``action`` (the visit, ending when its content shows), time and check it."""
        t0 = time.perf_counter()
        ok = True
        try:
            await action()
        except Exception as exc:  # a timeout, a closed page, a failed check
            ok = False
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.errors.append(f"session {self.index} {kind}: {type(exc).__name__}: {msg[:300]}")
        seconds = time.perf_counter() - t0
        problems = await self._problems()
        if problems:
            ok = False
            self.errors.extend(f"session {self.index} {kind}: {p}" for p in problems)
        await self._leak_check(f"session {self.index} {kind}")
        seen, top = await self._queue()
        self.visits.append(Visit(self.index, kind, rnd, seconds, ok, seen, top))
        return ok

    async def search(self, rnd: int) -> None:
        page = self.page
        prompt = self.prompts.new(self.index)
        area = page.locator('[data-testid="stTextArea"] textarea')

        async def open_page() -> None:
            await page.goto(self.base + "/search")
            await area.wait_for()

        async def find() -> None:
            await area.fill(prompt)
            await page.get_by_role("button", name="Find features").click()
            await page.locator('[data-testid="stDataFrame"]').first.wait_for()
            # the second button group: the first is the search mode control
            pills = page.locator('[data-testid="stButtonGroup"]').nth(1).locator("button")
            await pills.first.wait_for()
            # repeated tokens carry zero-width spaces that keep their pills apart
            labels = await pills.all_inner_texts()
            shown = " ".join(t.replace("\u200b", "").strip() for t in labels)
            for text in self.prompts.others(self.index):
                if text in shown:
                    owner = self.prompts.owner[text]
                    self.leaks.append(f"session {self.index} search: tokens of session {owner}")
            if prompt not in shown:
                raise AssertionError(f"the tokens shown are {shown!r}, not this session's prompt")
            if await area.input_value() != prompt:
                raise AssertionError("the prompt box holds another text")

        if await self._visit("search_page", rnd, open_page):
            await self._visit("search", rnd, find)

    async def feature(self, rnd: int) -> None:
        page = self.page
        k = (self.index * 8 + self.step * 5) % N_FEATURES

        async def open_feature() -> None:
            await page.goto(f"{self.base}/feature?feature={k}")
            await page.get_by_role("heading", name=f"Feature {k}", exact=True).wait_for()
            await page.locator(".fs-ex .fs-tok").first.wait_for()

        await self._visit("feature", rnd, open_feature)

    async def run_until(self, deadline: float, rnd: int) -> None:
        """Loop search + feature; an iteration started before ``deadline`` finishes."""
        while time.monotonic() < deadline:
            await self.search(rnd)
            await self.feature(rnd)
            self.step += 1


# ---- the whole load --------------------------------------------------------------------------------
async def _drive(base: str, chromium: str, proc, sessions: int, seconds: float, rounds: int):
    from playwright.async_api import async_playwright

    prompts = Prompts(seed=1234)
    rss: list[dict[str, Any]] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        viewport = {"width": 1400, "height": 1000}

        # warm-up: one session loads the workspace and computes its first features
        ctx = await browser.new_context(viewport=viewport)
        ctx.set_default_timeout(FIRST_LOAD_MS)
        warm = Session(-1, base, await ctx.new_page(), prompts)
        t0 = time.perf_counter()
        await warm.search(0)
        await warm.feature(0)
        warmup = {"seconds": time.perf_counter() - t0, "errors": warm.errors}
        await ctx.close()

        rss.append(server_use(proc, "before"))
        contexts, users = [], []
        for i in range(sessions):
            ctx = await browser.new_context(viewport=viewport)
            ctx.set_default_timeout(STEP_MS)
            await ctx.add_init_script(QUEUE_PROBE)
            contexts.append(ctx)
            users.append(Session(i, base, await ctx.new_page(), prompts))
        started = time.perf_counter()
        for rnd in range(1, rounds + 1):
            deadline = time.monotonic() + seconds / rounds
            await asyncio.gather(*(u.run_until(deadline, rnd) for u in users))
            rss.append(server_use(proc, f"round {rnd}"))
        elapsed = time.perf_counter() - started
        for ctx in contexts:
            await ctx.close()
        await browser.close()
    await asyncio.sleep(3)  # let the server drop the closed sessions
    rss.append(server_use(proc, "end"))
    return users, warmup, rss, elapsed


def _stats(times: list[float]) -> dict[str, Any]:
    if not times:
        return {"n": 0, "median_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "n": len(times),
        "median_s": round(statistics.median(ordered), 3),
        "p95_s": round(p95, 3),
        "max_s": round(ordered[-1], 3),
    }


def summarize(users, warmup, rss, elapsed, sessions, seconds, rounds) -> dict[str, Any]:
    visits = [v for u in users for v in u.visits]
    served = [v for v in visits if v.ok]
    per_kind = {k: _stats([v.seconds for v in served if v.kind == k]) for k in KINDS}
    per_session = [
        {
            "session": u.index,
            **{k: sum(1 for v in u.visits if v.ok and v.kind == k) for k in KINDS},
            "errors": len(u.errors),
        }
        for u in users
    ]
    rounds_rss = [r["rss_mb"] for r in rss if r["at"].startswith("round")]
    growth = rounds_rss[-1] - rounds_rss[0] if len(rounds_rss) > 1 else 0.0
    return {
        "sessions": sessions,
        "seconds": seconds,
        "rounds": rounds,
        "elapsed_s": round(elapsed, 1),
        "warmup": warmup,
        "requests": len(visits),
        "served": len(served),
        "per_kind": per_kind,
        "overall": _stats([v.seconds for v in served]),
        "per_session": per_session,
        "errors": [e for u in users for e in u.errors],
        "leaks": [e for u in users for e in u.leaks],
        "queue": {
            "visits_with_notice": sum(1 for v in visits if v.queue_notices),
            "max_position": max((v.queue_max for v in visits), default=0),
        },
        "rss_mb": [{"at": r["at"], "rss_mb": round(r["rss_mb"], 1)} for r in rss],
        # the server's share of the machine while the sessions ran (CPU seconds per second;
        # the browsers run on the same cores)
        "server_cpu_cores": round(
            (rss[-2]["cpu_s"] - rss[0]["cpu_s"]) / max(1e-9, rss[-2]["time"] - rss[0]["time"]), 2
        ),
        "rss_growth_after_round_1_mb": round(growth, 1),
        # a steady server: no more than 25 MB (or 5 %) more after the last round than after
        # the first, once the first round has filled the caches
        "rss_grew": bool(rounds_rss and growth > max(25.0, 0.05 * rounds_rss[0])),
        "visits": [v.__dict__ for v in visits],
    }


def run_load(
    sessions: int = 8,
    seconds: float = 60.0,
    rounds: int = 3,
    workdir: Path | None = None,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Write the hosted site, start the app on it, drive the load; returns the summary."""
    why = missing_requirements()
    if why:
        raise RuntimeError(why)
    chromium = find_chromium()
    assert chromium is not None
    with tempfile.TemporaryDirectory(prefix="fs-load-") as tmp:
        work = Path(workdir or tmp)
        conf = write_site(work / "site", auth_required=False)
        env = {"FEATURESCOPE_HOSTED": str(conf), "FEATURESCOPE_TEST_WORKSPACE": ""}
        log = log_path or work / "streamlit.log"
        with streamlit_server(work / "memo", log, env=env) as base:
            proc = server_process(int(base.rsplit(":", 1)[1]))
            users, warmup, rss, elapsed = asyncio.run(
                _drive(base, chromium, proc, sessions, seconds, rounds)
            )
    out = summarize(users, warmup, rss, elapsed, sessions, seconds, rounds)
    out["cpu_count"] = os.cpu_count()
    return out


def report(res: dict[str, Any]) -> str:
    """The summary as a plain-text table."""
    lines = [
        f"{res['sessions']} sessions · {res['rounds']} rounds · {res['elapsed_s']} s of load "
        f"(warm-up {res['warmup']['seconds']:.1f} s) · {res['cpu_count']} CPU cores",
        f"requests {res['requests']} · served {res['served']} · errors {len(res['errors'])} · "
        f"cross-session leaks {len(res['leaks'])}",
        "",
        f"{'page':<12} {'n':>5} {'median s':>9} {'p95 s':>7} {'max s':>7}",
    ]
    for name, st in [*res["per_kind"].items(), ("overall", res["overall"])]:
        if st["n"]:
            lines.append(
                f"{name:<12} {st['n']:>5} {st['median_s']:>9.2f} {st['p95_s']:>7.2f} "
                f"{st['max_s']:>7.2f}"
            )
        else:
            lines.append(f"{name:<12} {0:>5}")
    q = res["queue"]
    lines += [
        "",
        f"queue: {q['visits_with_notice']} visits showed a waiting notice, highest position "
        f"{q['max_position']}",
        "",
        "server RSS (MB): " + " · ".join(f"{r['at']} {r['rss_mb']:.0f}" for r in res["rss_mb"]),
        f"growth from round 1 to the last round: {res['rss_growth_after_round_1_mb']:+.1f} MB "
        f"({'grew' if res['rss_grew'] else 'steady'})",
        f"server CPU during the load: {res['server_cpu_cores']:.2f} cores "
        f"(of the {res['cpu_count']} the browsers share)",
    ]
    for e in res["errors"][:20]:
        lines.append(f"error: {e}")
    for e in res["leaks"][:20]:
        lines.append(f"leak: {e}")
    return "\n".join(lines)
