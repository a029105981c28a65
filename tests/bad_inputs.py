"""Bad inputs, written once as data: what is tried, how it is run, what the user must read.

Each :class:`Case` tries one bad input against the real code (the workspace API, source
loading, the hosted configuration, the memo layer, the HTML renderers, the Streamlit app
through ``AppTest``) and returns an :class:`Outcome`: the message the user gets (an error,
or for inputs that are accepted or survived, the warning logged or what came back) and
whether everything else is intact. "Intact" always includes: the features computed
before the case are still served by the memo (hits, equal data, no forward pass), the
workspace still answers a prompt search exactly as before, and no hosted limits are left
set. Cases add their own checks (the token cache is unchanged, good sources still load,
no pickle payload ran, the app renders a feature afterwards...).

``tests/test_bad_inputs.py`` runs every case under pytest and checks ``expect`` (all the
substrings, case-insensitive, in the message) and ``intact``;
``python -m tests.bad_input_report`` runs them and prints a Markdown table.

Everything is built locally in one temporary directory by :class:`Env`: the tiny app
workspace of :mod:`tests.app.fixtures` (the app builds the same object through the
factory :func:`app_workspace`), a tiny GPT-2 directory whose word-level vocabulary holds
HTML payloads and Unicode oddities as single tokens, SAE and CLT directories, a text
corpus, and the hosted site of :mod:`tests.app.hosted_site`. One :class:`Env` per process.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import dataclasses
import errno
import hashlib
import html
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.tiny import HOOK, make_model, make_sae, random_tokens, write_hf_model

ROOT = Path(__file__).resolve().parent.parent
APP_FACTORY = "tests.bad_inputs:app_workspace"
HOSTILE_FACTORY = "tests.bad_inputs:hostile_workspace"
BASELINE = (1, 2, 3)  # features computed before any case; they must survive every case

# ---- payloads ------------------------------------------------------------------------------------
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SVG = '"><svg onload=alert(1)>'
#: the same payloads as single whitespace-free tokens (``/`` separates attributes in HTML)
IMG_TOKEN = "<img/src=x/onerror=alert(1)>"
SVG_TOKEN = '"><svg/onload=alert(1)>'
PAYLOAD_TOKENS = [SCRIPT, IMG_TOKEN, SVG_TOKEN, *IMG.split(), *SVG.split()]
#: markers that must never appear in generated HTML (they only appear if a payload is raw)
RAW_MARKERS = ("<script>alert", "<img", "<svg", "onerror=alert(1)>", "onload=alert(1)>")
HOSTILE_PROMPT = f"the cat {SCRIPT} sat {IMG} on {SVG} mat"

EMOJI_ZWJ = "\U0001f469\u200d\U0001f469\u200d\U0001f467"  # family: woman, ZWJ, woman, ZWJ, girl
COMBINING = "e\u0301\u0327\u0308"  # e + acute + cedilla + diaeresis
RTL = "\u05e9\u05dc\u05d5\u05dd"  # Hebrew "shalom"
RLO = "\u202eevil"  # right-to-left override
ZWJ_WORD = "a\u200db"
NUL_WORD = "nul\x00byte"
LONG_WORD = "x" * 3000
UNICODE_TOKENS = [EMOJI_ZWJ, COMBINING, RTL, RLO, ZWJ_WORD, NUL_WORD, LONG_WORD]
NORMAL_WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then"]


# ---- cases ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a case produced."""

    message: str  # what the user is told (error, warning) or, when accepted, what came back
    intact: bool  # nothing computed or saved was lost and everything still works
    notes: str = ""  # what the intact check found wrong (empty when intact)


@dataclass(frozen=True)
class Case:
    """One bad input."""

    name: str  # short id (pytest id)
    group: str  # which kind of bad input (see GROUPS)
    tried: str  # what is tried, in words
    run: Callable[[Env], Outcome]
    expect: tuple[str, ...]  # substrings the message must contain (case-insensitive)


GROUPS = {
    "index": "invalid feature index",
    "budget": "negative or huge token budgets",
    "prompt": "empty and very long prompts",
    "html": "HTML and script in prompts and tokens",
    "unicode": "Unicode edge cases",
    "mismatch": "dictionary that does not fit the model",
    "corrupt": "corrupted and truncated files",
    "pickle": "pickled payloads",
    "paths": "paths escaping the allowed roots (hosted)",
    "cache": "read-only or full cache",
    "links": "links naming what the server may load (size, depth, devices, local files)",
    "files": "code, devices, memory and hangs from files (models, dictionaries, datasets)",
}

UNEXPECTED = "unexpected error type"


class _Payload:
    """Unpickling this touches ``marker`` (a harmless stand-in for running code)."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---- the environment -----------------------------------------------------------------------------
_APP_WS: Any = None
_HOSTILE_WS: Any = None


def app_workspace() -> Any:
    """The app's test workspace (the factory named by ``FEATURESCOPE_TEST_WORKSPACE``);
    one object per process, shared with the cases, forward passes counted."""
    global _APP_WS
    if _APP_WS is None:
        from tests.app.fixtures import make_workspace

        _APP_WS = _count_forward_passes(make_workspace())
    return _APP_WS


def hostile_workspace() -> Any:
    """The workspace whose vocabulary and dataset hold HTML payloads (built by :class:`Env`)."""
    if _HOSTILE_WS is None:
        raise RuntimeError("build an Env first: it writes the hostile model and dataset")
    return _HOSTILE_WS


def _count_forward_passes(ws: Any) -> Any:
    real = ws.model.run_to_hooks
    ws.forward_passes = 0

    def counted(*args, **kwargs):
        ws.forward_passes += 1
        return real(*args, **kwargs)

    ws.model.run_to_hooks = counted
    return ws


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def logged_warnings() -> Iterator[list[str]]:
    """Warnings logged by ``core`` while the block runs."""
    handler = _Records()
    logger = logging.getLogger("core")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever the root logger lets through
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def same_feature(a: Any, b: Any) -> bool:
    """Two computations of one feature agree (up to float rounding: a feature computed
    alone or from stored activations may differ from a batch sweep in the last bits)."""
    return (
        a.index == b.index
        and a.n_active == b.n_active
        and abs(a.max_act - b.max_act) <= 1e-4 * max(1.0, abs(b.max_act))
        and [(e.seq, e.pos) for e in a.top_examples] == [(e.seq, e.pos) for e in b.top_examples]
    )


def error_of(fn: Callable[[], Any]) -> str:
    """The message ``fn()`` fails with. The project's own errors are ``ValueError``
    subclasses (the app shows them verbatim); anything else is marked unexpected."""
    from core.memo import MemoError

    try:
        fn()
    except (ValueError, MemoError) as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc} ({UNEXPECTED}: no clear message)"
    return "(no error: the input was accepted)"


def digest_tree(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (to prove nothing was changed or removed)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


class Env:
    """Everything the cases need, built once in a temporary directory.

    Sets ``FEATURESCOPE_CACHE_DIR`` and ``FEATURESCOPE_TEST_WORKSPACE`` (the app then
    opens :func:`app_workspace`), unsets ``FEATURESCOPE_HOSTED`` and points the token
    cache (``core.sources.CACHE_ROOT``) into the directory; :meth:`close` restores all.
    """

    def __init__(self, root: str | Path | None = None):
        import core.sources as sources

        self._owns_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="fs-bad-inputs-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._saved_env: dict[str, str | None] = {}
        self._set_env(
            FEATURESCOPE_CACHE_DIR=str(self.root / "memo"),
            FEATURESCOPE_TEST_WORKSPACE=APP_FACTORY,
            FEATURESCOPE_HOSTED=None,
        )
        self._saved_cache_root = sources.CACHE_ROOT
        sources.CACHE_ROOT = self.root / "data"
        self._baseline: dict[int, Any] | None = None
        self._prompt_baseline: Any = None
        self._hostile: dict[str, Any] | None = None
        self._site: Path | None = None

    # --- environment ----------------------------------------------------------------------
    def _set_env(self, **values: str | None) -> None:
        for k, v in values.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    @contextlib.contextmanager
    def environ(self, **values: str | None) -> Iterator[None]:
        """Environment variables set (``None``: unset) for the block only."""
        old = {k: os.environ.get(k) for k in values}
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def close(self) -> None:
        import core.sources as sources

        sources.CACHE_ROOT = self._saved_cache_root
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def marker(self) -> Path:
        """A fresh path that a pickle payload would create."""
        return self.root / f"pwned-{uuid.uuid4().hex}"

    # --- the app workspace and its baseline -----------------------------------------------------
    @property
    def ws(self) -> Any:
        ws = app_workspace()
        if self._baseline is None:
            self._baseline = ws.features(list(BASELINE))
            self._prompt_baseline = ws.prompt_search(_app_prompt())
        return ws

    def workspace_problems(self) -> list[str]:
        """What is no longer intact in the app workspace (empty list: all is well)."""
        ws = self.ws
        assert self._baseline is not None
        problems = []
        if ws.limits is not None:
            problems.append("hosted limits were left set on the workspace")
        for i, fd in self._baseline.items():
            if ws.cached(i) != fd:
                problems.append(f"feature {i} is no longer in the memo")
        passes, hits, misses = ws.forward_passes, ws.memo.hits, ws.memo.misses
        got = ws.features(list(self._baseline))
        if ws.forward_passes != passes:
            problems.append("features in the memo needed a forward pass")
        if ws.memo.hits - hits != len(self._baseline) or ws.memo.misses != misses:
            problems.append("features in the memo were not served by the memo")
        if any(got[i] != fd for i, fd in self._baseline.items()):
            problems.append("features in the memo changed")
        res = ws.prompt_search(_app_prompt())
        if res != self._prompt_baseline:
            problems.append("the prompt search answers differently now")
        return problems

    def outcome(self, message: str, problems: list[str] | None = None) -> Outcome:
        """The outcome, with the app workspace's intact check added."""
        problems = [*(problems or []), *self.workspace_problems()]
        return Outcome(message=message, intact=not problems, notes="; ".join(problems))

    # --- the hostile model, dictionary, corpus ------------------------------------------------
    @property
    def hostile(self) -> dict[str, Any]:
        """Paths and specs of a tiny GPT-2 whose vocabulary holds the payloads, its SAE, a
        CLT, a corpus full of payloads, and the workspace built from them."""
        global _HOSTILE_WS
        if self._hostile is not None:
            return self._hostile
        from core.config import RunConfig
        from core.memo import Memo
        from core.sources import DatasetSpec, DictionarySpec, ModelSpec, load_model, load_tokens
        from core.workspace import Workspace

        base = self.root / "hostile"
        model_dir, sae_dir, text = base / "model", base / "sae", base / "corpus.txt"
        words = NORMAL_WORDS + PAYLOAD_TOKENS + UNICODE_TOKENS
        write_hf_model(model_dir, words, split_punctuation=False)
        g = torch.Generator().manual_seed(0)
        special = PAYLOAD_TOKENS + UNICODE_TOKENS
        docs = []
        for _ in range(24):
            picks = torch.rand(40, generator=g)
            ids = torch.randint(0, 10**6, (40,), generator=g)
            docs.append(
                " ".join(
                    special[int(k) % len(special)]
                    if p < 0.3
                    else NORMAL_WORDS[int(k) % len(NORMAL_WORDS)]
                    for p, k in zip(picks, ids, strict=True)
                )
            )
        text.write_text("\n\n\n".join(docs), encoding="utf-8")
        model_spec = ModelSpec(kind="local", path=str(model_dir), device="cpu")
        data_spec = DatasetSpec(kind="local", path=str(text), n_tokens=48 * 16, context_length=16)
        model = load_model(model_spec)
        tokens, _ = load_tokens(data_spec, model)
        sample = model.run_to_hooks(tokens, [HOOK])[HOOK].reshape(-1, 32)
        make_sae("standard", 32, 16, HOOK, sample=sample, density=0.25).save_model(str(sae_dir))
        sae_spec = DictionarySpec(kind="saelens_local", path=str(sae_dir))
        ws = Workspace.from_specs(
            model_spec,
            sae_spec,
            data_spec,
            memo=Memo(self.root / "memo-hostile"),
            config=RunConfig(n_top_examples=6, n_interval_examples=2, n_intervals=3),
        )
        _HOSTILE_WS = ws
        clt_dir = base / "clt"
        write_clt(clt_dir, d_model=32)
        self._hostile = {
            "model_dir": model_dir,
            "sae_dir": sae_dir,
            "clt_dir": clt_dir,
            "text": text,
            "model_spec": model_spec,
            "sae_spec": sae_spec,
            "data_spec": data_spec,
            "tokens": tokens,
            "ws": ws,
        }
        return self._hostile

    def copy_of(self, what: str, name: str) -> Path:
        """A fresh copy of the hostile model, SAE or CLT directory, to damage."""
        dst = self.root / "damaged" / f"{name}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.hostile[f"{what}_dir"], dst)
        return dst

    def sources_problems(self) -> list[str]:
        """Good sources still load to the same tokens; the token cache was not touched."""
        from core.sources import load_sources

        h = self.hostile
        problems = []
        try:
            _, d, tokens, _ = load_sources(h["model_spec"], h["sae_spec"], h["data_spec"])
            if not torch.equal(tokens, h["tokens"]) or d.n_features != 16:
                problems.append("the good sources now load differently")
        except Exception as exc:
            problems.append(f"the good sources no longer load: {exc}")
        return problems

    @contextlib.contextmanager
    def token_cache_watch(self, problems: list[str]) -> Iterator[None]:
        """Adds a problem when the token cache changes while the block runs."""
        self.hostile  # noqa: B018 - build (and cache the good tokens) before taking the digest
        before = digest_tree(self.root / "data")
        yield
        if digest_tree(self.root / "data") != before:
            problems.append("the token cache changed")

    # --- the hosted site ------------------------------------------------------------------------
    @property
    def site(self) -> Path:
        """A hosted site (tiny model, SAE, corpus under one root); returns the root."""
        if self._site is None:
            from tests.app.hosted_site import write_site

            root = self.root / "site"
            write_site(root)
            # an SAE outside the root, reachable through a symlink inside it
            outside = self.root / "outside"
            shutil.copytree(root / "sae", outside / "sae")
            (root / "sae-link").symlink_to(outside / "sae")
            (root / "escape").symlink_to(outside)
            self._site = root
        return self._site

    def hosted_config(self) -> Any:
        from core.hosted import HostedConfig

        return HostedConfig.load(self.site / "hosted.toml")


def _app_prompt() -> str:
    from tests.app.fixtures import PROMPT

    return PROMPT


def write_clt(root: Path, d_model: int, n_feat: int = 8, n_layers: int = 2) -> Path:
    """A small ReLU CLT in the reference layout (``cfg.json`` + safetensors weights)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    t: dict[str, torch.Tensor] = {}
    for i in range(n_layers):
        t[f"encoder_module.encoders.{i}.weight"] = torch.randn(n_feat, d_model, generator=g)
        t[f"encoder_module.encoders.{i}.bias_param"] = torch.zeros(n_feat)
        for j in range(i, n_layers):
            t[f"decoder_module.decoders.{i}->{j}.weight"] = torch.randn(
                d_model, n_feat, generator=g
            )
            t[f"decoder_module.decoders.{i}->{j}.bias_param"] = torch.zeros(d_model)
    root.mkdir(parents=True, exist_ok=True)
    cfg = {
        "num_features": n_feat,
        "num_layers": n_layers,
        "d_model": d_model,
        "activation_fn": "relu",
        "normalization_method": "none",
    }
    (root / "cfg.json").write_text(json.dumps(cfg))
    save_file(t, str(root / "clt_weights.safetensors"))
    return root


# ---- helpers for the app -------------------------------------------------------------------------
def run_app(page: str | None = None, **params: str) -> Any:
    """The app after one run; exceptions are left for the case to judge."""
    from tests.app.conftest import run_app as run

    return run(page, check=False, **params)


def texts(elements: Any) -> str:
    from tests.app.conftest import texts as join

    return join(elements)


def app_problems(at: Any) -> list[str]:
    return [f"the app raised {e.value}" for e in at.exception]


def app_html(at: Any) -> str:
    return "\n".join(str(h.value) for h in at.get("html"))


def link(sources: dict[str, Any]) -> str:
    raw = json.dumps(sources, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def html_leaks(page: str) -> list[str]:
    """Raw payload markers found in generated HTML."""
    low = page.lower()
    return [m for m in RAW_MARKERS if m in low]


def html_outcome(env: Env, pages: list[str], must_show: list[str]) -> Outcome:
    """No raw payload in ``pages``; each of ``must_show`` appears escaped (so the check is
    not vacuous)."""
    page = "\n".join(pages)
    leaks = html_leaks(page)
    shown = [p for p in must_show if html.escape(p, quote=True) in page]
    problems = [f"raw {m!r} in the HTML" for m in leaks]
    if len(shown) < len(must_show):
        missing = sorted(set(must_show) - set(shown))
        problems.append(f"payloads not shown escaped: {missing}")
    message = (
        f"escaped: {len(shown)} payload(s) shown as text, {len(leaks)} raw"
        if not leaks
        else f"NOT escaped: raw {leaks}"
    )
    return env.outcome(message, problems)


# ==== 1. invalid feature index =====================================================================
def _index_api(value: Any, via: str = "feature") -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        ws = env.ws
        calls = {
            "feature": lambda: ws.feature(value),
            "check_index": lambda: ws.check_index(value),
            "similar": lambda: ws.similar(value),
            "feature_on_text": lambda: ws.feature_on_text(value, _app_prompt()),
            "steer": lambda: ws.steer(value, _app_prompt(), coefficient=1.0, max_new_tokens=4),
        }
        return env.outcome(error_of(calls[via]))

    return run


def _index_app(raw: str) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        env.ws  # noqa: B018 - baseline first
        at = run_app("pages/feature.py", feature=raw)
        message = texts(at.error) or "(no error shown)"
        problems = app_problems(at)
        at.text_input(key="fs_jump").input("2").run()
        if at.exception or at.error or "## Feature 2" not in texts(at.markdown):
            problems.append("the app did not show feature 2 afterwards")
        return env.outcome(message, problems)

    return run


# ---- 1. search links (issue 12, Engineer D) --------------------------------------------------------
def _search_link_app(params: dict[str, str]) -> Callable[[Env], Outcome]:
    """A search link with a bad value: a warning naming it, and the search still works."""

    def run(env: Env) -> Outcome:
        env.ws  # noqa: B018 - baseline first
        at = run_app("pages/search.py", **params)
        message = texts(at.warning) or texts(at.error) or "(no warning shown)"
        problems = app_problems(at)
        if at.exception or not at.dataframe:
            problems.append("the search page showed no results afterwards")
        return env.outcome(message, problems)

    return run


# ==== 2. token budgets =============================================================================
def _budget_local(n_tokens: Any, context: Any) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        from core.sources import DatasetSpec, load_tokens

        h = env.hostile
        model = h["ws"].model
        spec = DatasetSpec(
            kind="local", path=str(h["text"]), n_tokens=n_tokens, context_length=context
        )
        problems: list[str] = []
        with env.token_cache_watch(problems):
            message = error_of(lambda: load_tokens(spec, model))
        return env.outcome(message, problems + env.sources_problems())

    return run


def _budget_hosted(n_tokens: Any, context: Any) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        cfg = env.hosted_config()
        _, spec = cfg.choices("dataset")[0]
        message = error_of(
            lambda: cfg.check_spec(
                "dataset", {**spec, "n_tokens": n_tokens, "context_length": context}
            )
        )
        problems = []
        try:
            cfg.check_sources({p: cfg.choices(p)[0][1] for p in ("model", "dictionary", "dataset")})
        except ValueError as exc:
            problems.append(f"the allowlisted sources are refused now: {exc}")
        return env.outcome(message, problems)

    return run


def _budget_app_link(n_tokens: Any) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        return _hosted_link(env, {"da": {"n_tokens": n_tokens}}, dataset_default=True)

    return run


# ==== 3. empty and very long prompts ===============================================================
LIMITS = {"max_prompt_chars": 400, "max_prompt_tokens": 48, "max_new_tokens": 16}


def _prompt(
    call: str, text: str, limits: bool = False, max_new_tokens: int = 4
) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        from core.hosted import Limits

        ws = env.ws
        calls = {
            "prompt_search": lambda: ws.prompt_search(text),
            "feature_on_text": lambda: ws.feature_on_text(3, text),
            "steer": lambda: ws.steer(3, text, coefficient=1.0, max_new_tokens=max_new_tokens),
        }
        ws.limits = Limits(**LIMITS) if limits else None
        try:
            message = error_of(calls[call])
        finally:
            ws.limits = None
        return env.outcome(message)

    return run


def _prompt_app_long(env: Env) -> Outcome:
    env.ws  # noqa: B018
    at = run_app("pages/search.py")
    at.text_area(key="fs_prompt").input("the cat " * 600)
    next(b for b in at.button if b.label == "Find features").click().run()
    message = texts(at.error) or "(no error shown)"
    problems = app_problems(at)
    at.text_area(key="fs_prompt").input(_app_prompt())
    next(b for b in at.button if b.label == "Find features").click().run()
    if at.exception or at.error or not at.dataframe:
        problems.append("the search did not work afterwards")
    return env.outcome(message, problems)


# ==== 4. HTML and script ===========================================================================
def _hostile_features(env: Env) -> list[Any]:
    """Features of the hostile workspace whose top examples hold payload tokens."""
    ws = env.hostile["ws"]
    feats = ws.features(list(range(ws.n_features)))
    with_payload = [
        fd
        for fd in feats.values()
        if any(t in PAYLOAD_TOKENS for e in fd.top_examples for t in e.tokens)
    ]
    assert with_payload, "no feature of the hostile workspace shows a payload token"
    return with_payload


def _shown_payloads(fds: list[Any]) -> list[str]:
    toks = {t for fd in fds for e in fd.top_examples for t in e.tokens}
    toks |= {t for fd in fds for t in fd.top_logits.tokens + fd.bottom_logits.tokens}
    return [p for p in PAYLOAD_TOKENS if p in toks]


def _html_fragments(env: Env) -> Outcome:
    from core import charts

    fds = _hostile_features(env)[:4]
    pages = []
    for fd in fds:
        pages.append(charts.examples_html(fd.top_examples, fd.max_act, title=SCRIPT))
        pages.append(charts.intervals_html(fd))
        pages.append(charts.logit_table_html(fd.top_logits, fd.bottom_logits))
    return html_outcome(env, pages, _shown_payloads(fds))


def _html_prompt_tokens(env: Env) -> Outcome:
    from core import charts

    ws = env.hostile["ws"]
    res = ws.feature_on_text(0, HOSTILE_PROMPT)
    page = charts.tokens_html(res["tokens"], res["acts"])
    return html_outcome(env, [page], [SCRIPT, *IMG.split(), *SVG.split()])


def _html_steer(env: Env) -> Outcome:
    from pages._ui import continuation_html

    ws = env.hostile["ws"]
    res = ws.steer(0, HOSTILE_PROMPT, coefficient=20.0, max_new_tokens=16)
    pages = [
        continuation_html(res["prompt"], res["steered_tokens"], res.get("diverges_at")),
        continuation_html(res["prompt"], res["unsteered_tokens"], res.get("diverges_at")),
    ]
    return html_outcome(env, pages, [SCRIPT, IMG, SVG])


def _html_export(env: Env) -> Outcome:
    from core.export.html import render_features_html

    fds = _hostile_features(env)[:3]
    meta = {
        "title": f"Feature {SCRIPT}",
        "labels": {fds[0].index: f"label {IMG}"},
        "dataset": SVG,
        "config": {"hook": "</script><!--"},
    }
    page = render_features_html(fds, meta)
    outside = page.split('<script type="application/json" id="fs-data">')[0]
    m = re.search(r'<script type="application/json" id="fs-data">(.*?)</script>', page, re.S)
    data = json.loads(m.group(1)) if m else {}
    in_table = {t[0] for t in data.get("tokens", [])}
    problems = []
    if page.lower().count("<script") != 4 or page.lower().count("</script>") != 4:
        problems.append("a payload opened or closed a <script> element")
    missing = [p for p in _shown_payloads(fds) if p not in in_table]
    if missing:
        problems.append(f"payload tokens missing from the page's token table: {missing}")
    out = html_outcome(env, [page], [])
    shown = [p for p in (SCRIPT, IMG, SVG) if html.escape(p, quote=True) in outside]
    if len(shown) < 3:
        problems.append("the title, label or dataset payload is not shown escaped")
    notes = "; ".join(problems + ([out.notes] if out.notes else []))
    n_table = len(in_table & set(PAYLOAD_TOKENS))
    message = (
        f"escaped: title, label and dataset payloads shown as text ({len(shown)} of 3); "
        f"{n_table} payload tokens only as escaped JSON in the data element; "
        f"{len(html_leaks(page))} raw"
    )
    return Outcome(message=message, intact=out.intact and not problems, notes=notes)


def _html_app(env: Env) -> Outcome:
    fd = _hostile_features(env)[0]
    env.ws  # noqa: B018
    with env.environ(FEATURESCOPE_TEST_WORKSPACE=HOSTILE_FACTORY):
        at = run_app("pages/feature.py", feature=str(fd.index))
        at.text_area(key="fs_try_text").input(HOSTILE_PROMPT)
        next(b for b in at.button if b.label == "Run").click().run()
        at.text_area(key="fs_steer_prompt").input(HOSTILE_PROMPT)
        next(b for b in at.button if b.label == "Steer").click().run()
    problems = app_problems(at)
    if at.error:
        problems.append(f"the app showed an error: {texts(at.error)}")
    out = html_outcome(env, [app_html(at)], [SCRIPT, IMG, SVG, *_shown_payloads([fd])])
    return dataclasses.replace(
        out,
        intact=out.intact and not problems,
        notes="; ".join(filter(None, [out.notes, *problems])),
    )


# ==== 5. Unicode ===================================================================================
def _unicode_prompt(text: str, call: str = "feature_on_text") -> Callable[[Env], Outcome]:
    """A prompt of odd Unicode on the hostile workspace (whose vocabulary has these words):
    an error must be clear; an accepted prompt must come back token for token and render."""

    def run(env: Env) -> Outcome:
        from core import charts

        ws = env.hostile["ws"]
        calls = {
            "feature_on_text": lambda: ws.feature_on_text(0, text),
            "prompt_search": lambda: ws.prompt_search(text),
            "steer": lambda: ws.steer(0, text, coefficient=1.0, max_new_tokens=4),
        }
        result: dict[str, Any] = {}
        message = error_of(lambda: result.setdefault("value", calls[call]()))
        problems: list[str] = []
        if "value" in result and call == "feature_on_text":
            toks = result["value"]["tokens"]
            words = [w for w in text.split() if w]
            if toks[1:] != words:
                problems.append(f"tokens came back as {toks[1:]!r}, not {words!r}")
            page = charts.tokens_html(toks, result["value"]["acts"])
            if not all(html.escape(charts.visible_token(w)) in page for w in words):
                problems.append("a token is missing from the highlighted text")
            message = f"accepted: {len(toks)} tokens, shown as text ({len(page):,} chars of HTML)"
        elif "value" in result:
            message = "accepted: result returned"
        return env.outcome(message, problems)

    return run


def _unicode_dataset(env: Env) -> Outcome:
    """A JSON Lines corpus whose text holds a lone surrogate (valid JSON, invalid UTF-8)."""
    from core.sources import DatasetSpec, load_tokens

    h = env.hostile
    path = env.root / "surrogate.jsonl"
    words = " ".join(NORMAL_WORDS * 4)
    path.write_text(
        "\n".join(json.dumps({"text": f"{words} \ud800 {EMOJI_ZWJ} {words}"}) for _ in range(4)),
        encoding="utf-8",
    )
    spec = DatasetSpec(kind="local", path=str(path), n_tokens=64, context_length=16)
    got: dict[str, Any] = {}
    message = error_of(lambda: got.setdefault("t", load_tokens(spec, h["ws"].model)[0]))
    problems = []
    if "t" in got:
        strings = h["ws"].model.token_strings(got["t"].flatten())
        message = f"accepted: {tuple(got['t'].shape)} tokens; the lone surrogate became '?'"
        if EMOJI_ZWJ not in strings:
            problems.append("the emoji token was lost")
    return env.outcome(message, problems + env.sources_problems())


def _unicode_export(env: Env) -> Outcome:
    """Token strings with emoji, combining marks, RTL, ZWJ, NUL and a 3,000-character word
    in the standalone export: the embedded JSON must give them back exactly."""
    from core.export.html import render_features_html

    ws = env.hostile["ws"]
    feats = ws.features(list(range(ws.n_features)))
    fds = [
        fd
        for fd in feats.values()
        if any(t in UNICODE_TOKENS for e in fd.top_examples for t in e.tokens)
    ][:3]
    page = render_features_html(fds, {"title": f"{RTL} {EMOJI_ZWJ} {COMBINING}"})
    m = re.search(r'<script type="application/json" id="fs-data">(.*?)</script>', page, re.S)
    problems = []
    table = set()
    if m is None:
        problems.append("no data element")
    else:
        table = {t[0] for t in json.loads(m.group(1))["tokens"]}
    want = {t for fd in fds for e in fd.top_examples for t in e.tokens if t in UNICODE_TOKENS}
    if not want or not want <= table:
        problems.append(f"tokens lost in the export: {sorted(want - table)[:3]}")
    try:
        page.encode("utf-8")
    except UnicodeEncodeError as exc:
        problems.append(f"the page cannot be saved as UTF-8: {exc}")
    message = f"accepted: {len(want)} odd token strings exported intact"
    return env.outcome(message, problems)


# ==== 6. a dictionary that does not fit ============================================================
def _mismatch(kind: str, call: str) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        from core.dictionaries.saelens import SAELensDictionary
        from core.workspace import Workspace

        ws = env.ws
        if kind == "width":
            sae = make_sae("standard", 16, 8, HOOK)
        else:
            sae = make_sae("standard", 32, 8, "blocks.9.hook_resid_pre")
        wrong = Workspace(
            ws.model, SAELensDictionary(sae), ws.tokens, ws.dataset, ws.memo, ws.config
        )
        calls = {
            "feature": lambda: wrong.feature(0),
            "prompt_search": lambda: wrong.prompt_search(_app_prompt()),
            "feature_on_text": lambda: wrong.feature_on_text(0, _app_prompt()),
            "steer": lambda: wrong.steer(0, _app_prompt(), coefficient=1.0, max_new_tokens=4),
            "effects": lambda: wrong.effects(0),
        }
        return env.outcome(error_of(calls[call]))

    return run


def _mismatch_sources(env: Env) -> Outcome:
    """load_sources with a 16-wide SAE directory for a 32-wide model, then a feature."""
    from core.sources import DictionarySpec
    from core.workspace import Workspace

    h = env.hostile
    sae_dir = env.root / "damaged" / "sae16"
    make_sae("standard", 16, 8, HOOK).save_model(str(sae_dir))
    spec = DictionarySpec(kind="saelens_local", path=str(sae_dir))
    problems: list[str] = []
    with env.token_cache_watch(problems):
        message = error_of(
            lambda: Workspace.from_specs(h["model_spec"], spec, h["data_spec"]).feature(0)
        )
    return env.outcome(message, problems + env.sources_problems())


def _mismatch_clt(env: Env) -> Outcome:
    """A CLT written for a 16-wide model, loaded as a source for the 32-wide model."""
    from core.sources import DictionarySpec
    from core.workspace import Workspace

    h = env.hostile
    clt = write_clt(env.root / "damaged" / "clt16", d_model=16)
    spec = DictionarySpec(kind="clt", path=str(clt), layer=0)
    message = error_of(
        lambda: Workspace.from_specs(h["model_spec"], spec, h["data_spec"]).feature(0)
    )
    return env.outcome(message, env.sources_problems())


# ==== 7. corrupted files ===========================================================================
def _load_damaged(env: Env, part: str, damage: Callable[[Path], None]) -> Outcome:
    """Damage a copy of the hostile model, SAE or CLT directory and load it as a source."""
    from core.sources import DictionarySpec, ModelSpec, load_sources

    h = env.hostile
    src = {"model": "model", "sae": "sae", "clt": "clt"}[part]
    path = env.copy_of(src, f"{part}-damaged")
    damage(path)
    model_spec, dict_spec = h["model_spec"], h["sae_spec"]
    if part == "model":
        model_spec = ModelSpec(kind="local", path=str(path), device="cpu")
    elif part == "sae":
        dict_spec = DictionarySpec(kind="saelens_local", path=str(path))
    else:
        dict_spec = DictionarySpec(kind="clt", path=str(path), layer=0)
    problems: list[str] = []
    with env.token_cache_watch(problems):
        message = error_of(lambda: load_sources(model_spec, dict_spec, h["data_spec"]))
    return env.outcome(message, problems + env.sources_problems())


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        f = path / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    return damage


def _garbage(name: str, data: bytes | None = None) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        (path / name).write_bytes(data if data is not None else os.urandom(4096))

    return damage


def _corrupt(part: str, damage: Callable[[Path], None]) -> Callable[[Env], Outcome]:
    return lambda env: _load_damaged(env, part, damage)


# ==== 8. pickles ===================================================================================
def _pickle_file(part: str) -> Callable[[Env], Outcome]:
    """A weights file whose pickle would touch a marker file when loaded."""

    def run(env: Env) -> Outcome:
        marker = env.marker()
        payload = {"weight": torch.zeros(2), "extra": _Payload(marker)}

        def damage(path: Path) -> None:
            if part == "clt":
                (path / "clt_weights.safetensors").unlink()
                torch.save(payload, path / "clt.pt")
            elif part == "model":
                (path / "model.safetensors").unlink()
                torch.save(payload, path / "pytorch_model.bin")
            else:  # a pickle under the safetensors name
                torch.save(payload, path / "sae_weights.safetensors")

        out = _load_damaged(env, part, damage)
        if marker.exists():
            return Outcome(out.message, False, "THE PICKLE PAYLOAD RAN")
        return out

    return run


def _pickle_memo(env: Env) -> Outcome:
    """Someone with write access to the cache directory stores a pickle under the key of a
    computed feature (diskcache's default Disk pickles)."""
    import diskcache

    from core.engine.cached import source_key
    from core.memo import feature_key

    ws = env.ws
    i = 7
    before = ws.feature(i)  # computed and stored; the attacker replaces the entry
    cfg = dataclasses.replace(ws.config, features=[i])
    key = feature_key(source_key(ws.model, ws.dictionary, ws.tokens, cfg), i)  # correlation "all"
    if ws.memo.get_feature(key) != before:
        raise AssertionError("the memo key of the case is wrong")
    marker = env.marker()
    evil = diskcache.Cache(str(ws.memo.directory))
    evil.set(key, _Payload(marker))
    evil.close()
    with logged_warnings() as warnings:
        got = ws.feature(i)
    problems = []
    if marker.exists():
        problems.append("THE PICKLE PAYLOAD RAN")
    if not same_feature(got, before):
        problems.append("the recomputed feature differs")
    if not same_feature(ws.cached(i) or got, before) or ws.cached(i) is None:
        problems.append("the recomputed feature was not stored again")
    message = "; ".join(warnings) or "(nothing logged)"
    return env.outcome(message, problems)


def _unsafe_call(node: ast.Call) -> str | None:
    """Why a call deserialises unsafely, or ``None``: torch.load without
    ``weights_only=True``, any pickle-family loader, ``yaml.load`` without a safe loader,
    ``numpy.load(allow_pickle=True)``."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        return None
    owner, name = func.value.id, func.attr
    kw = {k.arg: k.value for k in node.keywords}

    def true(key: str) -> bool:
        v = kw.get(key)
        return isinstance(v, ast.Constant) and v.value is True

    if owner == "torch" and name == "load":
        return None if true("weights_only") else "torch.load without weights_only=True"
    if owner in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve") and name in (
        "load",
        "loads",
        "Unpickler",
        "open",
    ):
        return f"{owner}.{name}"
    if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
        loader = kw.get("Loader")
        safe = isinstance(loader, ast.Attribute | ast.Name) and "Safe" in ast.unparse(loader)
        return None if name == "load" and safe else f"yaml.{name} without SafeLoader"
    if owner in ("np", "numpy") and name == "load" and true("allow_pickle"):
        return "numpy.load(allow_pickle=True)"
    return None


def _pickle_scan(env: Env) -> Outcome:
    """Every deserialiser call in the project's own code (not tests, parsed with ``ast`` so
    strings and comments do not count): torch.load must pass weights_only=True; pickle,
    dill, joblib, marshal, shelve, unsafe yaml and numpy pickle loads must not occur."""
    files = [ROOT / "app.py"]
    for top in ("core", "pages", "scripts", "bench"):
        for here, dirs, names in os.walk(ROOT / top):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            files += [Path(here) / n for n in names if n.endswith(".py")]
    loads, problems = [], []
    for p in files:
        rel = p.relative_to(ROOT)
        tree = ast.parse(p.read_text(encoding="utf-8", errors="replace"), str(rel))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if ast.unparse(node.func) == "torch.load":
                loads.append(f"{rel}:{node.lineno}")
            why = _unsafe_call(node)
            if why:
                problems.append(f"{rel}:{node.lineno}: {why}")
    message = (
        f"{len(loads)} torch.load call(s) ({', '.join(loads)}), all weights_only=True; "
        f"no unsafe deserialisers in {len(files)} files"
        if not problems
        else "UNSAFE: " + "; ".join(problems)
    )
    return env.outcome(message, problems)


# ==== 9. paths (hosted) ============================================================================
def _hosted_link(env: Env, sources: dict[str, Any], dataset_default: bool = False) -> Outcome:
    """Open the feature page of the hosted site with ``src=`` pointing at ``sources``."""
    site = env.site
    env.ws  # noqa: B018
    if "p" not in sources:  # parts the link does not name are the allowlisted ones
        cfg = env.hosted_config()
        full = {p[:2]: dict(cfg.choices(p)[0][1]) for p in ("model", "dictionary", "dataset")}
        if dataset_default:  # change only the given fields of the dataset
            full["da"].update(sources.pop("da"))
        sources = {**full, **sources}
    with env.environ(
        FEATURESCOPE_HOSTED=str(site / "hosted.toml"), FEATURESCOPE_TEST_WORKSPACE=None
    ):
        at = run_app("pages/feature.py", feature="1", src=link(sources))
    warning = texts(at.warning)
    message = warning or texts(at.error) or "(no message shown)"
    problems = app_problems(at)
    if "showing the default sources instead" not in warning:
        problems.append("the app did not fall back to the allowlisted sources")
    if "· 64 features ·" not in texts(at.caption) or "## Feature 1" not in texts(at.markdown):
        problems.append("the allowlisted workspace's feature did not render")
    return env.outcome(message, problems)


def _path_link(build: Callable[[Path], dict[str, Any]]) -> Callable[[Env], Outcome]:
    return lambda env: _hosted_link(env, build(env.site))


# ==== 10. read-only or full cache ==================================================================
def _readonly_memo(exc: BaseException, activations: bool = True) -> Callable[[Env], Outcome]:
    """Every write to the memo (and to the activation store) fails with ``exc`` while new
    features are computed on a token set the cache has not seen."""

    def run(env: Env) -> Outcome:
        import safetensors.torch as activations_mod  # core.storage writes caches through it
        from safetensors import SafetensorError

        from core.workspace import Workspace

        ws = env.ws
        fresh = Workspace(ws.model, ws.dictionary, ws.tokens[:20], ws.dataset, ws.memo, ws.config)
        real_set, real_save = ws.memo._cache.set, activations_mod.save_file

        def refuse(*args, **kwargs):
            raise exc

        def refuse_file(*args, **kwargs):
            raise SafetensorError(f"Error while serializing: I/O error: {exc}")

        expected = Workspace(ws.model, ws.dictionary, ws.tokens[:20], config=ws.config).features(
            [10, 11]
        )
        ws.memo._cache.set = refuse
        if activations:
            activations_mod.save_file = refuse_file
        problems = []
        got: dict[str, Any] = {}
        try:
            with logged_warnings() as warnings:
                err = error_of(lambda: got.setdefault("d", fresh.features([10, 11])))
        finally:
            del ws.memo._cache.set
            activations_mod.save_file = real_save
        if "d" not in got:
            problems.append(f"the computation failed: {err}")
        elif not all(same_feature(got["d"][f], expected[f]) for f in expected):
            problems.append("the results differ from a computation without cache")
        if ws.memo._cache.set != real_set:
            problems.append("the memo's write method was not restored")
        if ws.memo.put_bytes("bad-inputs-probe", b"ok") is False:
            problems.append("the memo does not write again once the disk is back")
        memo_first = sorted(dict.fromkeys(warnings), key=lambda w: "cannot write" not in w)
        message = " | ".join(memo_first) or "(nothing logged)"
        if not any("FEATURESCOPE_CACHE_DIR" in w and str(ws.memo.directory) in w for w in warnings):
            problems.append("no warning names the cache directory and the fix")
        return env.outcome(message, problems)

    return run


def _tiny_memo(env: Env) -> Outcome:
    """A cache whose size limit is one byte: diskcache evicts everything it stores."""
    from core.memo import Memo
    from core.workspace import Workspace

    ws = env.ws
    memo = Memo(env.root / "tiny-memo", size_limit=1)
    small = Workspace(ws.model, ws.dictionary, ws.tokens, ws.dataset, memo, ws.config)
    problems = []
    got = error_of(lambda: small.features([4, 5, 6]))
    if not got.startswith("(no error"):
        problems.append(f"the computation failed: {got}")
    kept = len(memo)
    if memo.volume() > 64 * 1024:
        problems.append(f"the cache grew to {memo.volume():,} bytes")
    memo.close()
    message = f"accepted: results returned; the cache kept {kept} of 3 entries (size limit 1 B)"
    return env.outcome(message, problems)


def _unopenable_memo(env: Env) -> Outcome:
    from core.memo import Memo

    env.ws  # noqa: B018
    not_a_dir = env.root / "cache-is-a-file"
    not_a_dir.write_text("x")
    with env.environ(FEATURESCOPE_CACHE_DIR=str(not_a_dir)):
        message = error_of(Memo)
    return env.outcome(message)


def _full_token_cache(env: Env) -> Outcome:
    """The disk holding the token cache is full while a dataset is tokenised."""
    import safetensors.torch as sources  # core.storage writes the token cache through it
    from safetensors import SafetensorError

    from core.sources import DatasetSpec, load_tokens

    h = env.hostile
    spec = DatasetSpec(kind="local", path=str(h["text"]), n_tokens=32 * 16, context_length=16)
    real = sources.save_file

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    sources.save_file = full
    problems = []
    try:
        with logged_warnings() as warnings:
            got: dict[str, Any] = {}
            err = error_of(lambda: got.setdefault("t", load_tokens(spec, h["ws"].model)[0]))
    finally:
        sources.save_file = real
    if "t" not in got:
        problems.append(f"loading failed: {err}")
    elif not torch.equal(got["t"], h["tokens"][:32]):
        problems.append("the tokens differ")
    if list((env.root / "data").rglob("*.tmp*")):
        problems.append("a temporary file was left behind")
    message = " | ".join(warnings) or err
    return env.outcome(message, problems + env.sources_problems())


# ==== the list =====================================================================================
def _cases() -> list[Case]:
    out: list[Case] = []

    def add(name: str, group: str, tried: str, run: Callable[[Env], Outcome], *expect: str):
        slug = re.sub(r"[^a-z0-9]+", "-", name.encode("ascii", "replace").decode().lower())
        out.append(Case(slug.strip("-")[:60], group, tried, run, tuple(expect)))

    # 1. feature index: API
    for value, via, tried, expect in [
        (-1, "feature", "ws.feature(-1)", ("feature -1 does not exist", "0-63")),
        (64, "feature", "ws.feature(64) (= n_features)", ("feature 64 does not exist", "0-63")),
        ("abc", "feature", "ws.feature('abc')", ("whole number", "'abc'")),
        ("1e3", "feature", "ws.feature('1e3')", ("whole number", "'1e3'")),
        ("3.5", "feature", "ws.feature('3.5')", ("whole number", "'3.5'")),
        (3.5, "check_index", "ws.check_index(3.5) (a float)", ("whole number", "3.5")),
        (True, "check_index", "ws.check_index(True)", ("whole number", "True")),
        (float("inf"), "check_index", "ws.check_index(inf)", ("whole number", "inf")),
        (None, "check_index", "ws.check_index(None)", ("whole number", "None")),
        (
            "99999999999999999999",
            "feature",
            "ws.feature('99999999999999999999')",
            ("feature 99999999999999999999 does not exist", "0-63"),
        ),
        (10**30, "similar", "ws.similar(10**30)", ("does not exist", "0-63")),
        (-5, "feature_on_text", "ws.feature_on_text(-5, prompt)", ("does not exist",)),
        ("x1", "steer", "ws.steer('x1', prompt)", ("whole number", "'x1'")),
    ]:
        add(f"index-api-{value!s}-{via}", "index", tried, _index_api(value, via), *expect)
    # 1. feature index: app deep links
    for raw, expect in [
        ("abc", ("whole number", "'abc'", "0-63")),
        ("1e3", ("whole number", "'1e3'", "0-63")),
        ("3.5", ("whole number", "'3.5'", "0-63")),
        ("-1", ("feature -1 does not exist", "0-63")),
        ("64", ("feature 64 does not exist", "0-63")),
        ("99999999999999999999", ("does not exist", "0-63")),
        (SCRIPT, ("whole number", "0-63")),
    ]:
        add(
            f"index-app-{raw}",
            "index",
            f"app link ?feature={raw}",
            _index_app(raw),
            *expect,
        )

    # 1. feature index: search links (issue 12, Engineer D)
    for params, expect in [
        ({"mode": "similar", "of": "abc"}, ("of='abc'", "feature index from 0 to 63")),
        ({"mode": "similar", "of": "64"}, ("of='64'", "feature index from 0 to 63")),
        ({"mode": "similar", "of": "3", "k": "1e9"}, ("k='1e9'", "from 5 to 50")),
    ]:
        add(
            "index-search-link-" + "-".join(params.values()),
            "index",
            "search link ?" + "&".join(f"{k}={v}" for k, v in params.items()),
            _search_link_app(params),
            *expect,
        )

    # 2. token budgets
    for n, ctx, expect in [
        (-5, 16, ("token budget must be a positive integer", "-5")),
        (0, 16, ("token budget must be a positive integer",)),
        (10**12, 16, ("too large", "200,000,000")),
        ("4096", 16, ("token budget must be a positive integer",)),
        (256, 0, ("context_length must be between 2 and 65536", "0")),
        (256, 1, ("context_length must be between 2 and 65536",)),
        (256, 10**9, ("context_length must be between 2 and 65536",)),
        (256, 65536, ("fewer than 65536 tokens", "shorter context length")),
    ]:
        add(
            f"budget-local-{n}-{ctx}",
            "budget",
            f"load_tokens(n_tokens={n!r}, context_length={ctx:,})",
            _budget_local(n, ctx),
            *expect,
        )
    for n, ctx, expect in [
        (-5, 32, ("must be positive", "-5")),
        (0, 32, ("must be positive",)),
        (10**12, 32, ("this server allows 8,192",)),
        (2048, 1, ("must be positive", "context 1")),
        (2048, 10**9, ("context length 1000000000", "this server allows 64")),
        ("abc", 32, ("whole numbers", "'abc'")),
        (None, 32, ("whole numbers", "None")),
    ]:
        add(
            f"budget-hosted-{n}-{ctx}",
            "budget",
            f"hosted check_spec(dataset, n_tokens={n!r}, context_length={ctx!r})",
            _budget_hosted(n, ctx),
            *expect,
        )
    add(
        "budget-app-negative",
        "budget",
        "hosted app link with dataset n_tokens=-5",
        _budget_app_link(-5),
        "must be positive",
        "showing the default sources",
    )
    add(
        "budget-app-huge",
        "budget",
        "hosted app link with dataset n_tokens=10**12",
        _budget_app_link(10**12),
        "this server allows 8,192",
        "showing the default sources",
    )

    # 3. prompts
    long_text = "the cat " * 600
    for call, text, limits, tried, expect in [
        ("prompt_search", "", False, "prompt_search('')", ("prompt is empty",)),
        ("prompt_search", " \n\t ", False, "prompt_search(whitespace)", ("prompt is empty",)),
        ("feature_on_text", "", False, "feature_on_text(3, '')", ("prompt is empty",)),
        ("steer", "", False, "steer(3, '')", ("prompt is empty",)),
        ("prompt_search", "", True, "prompt_search('') with limits", ("prompt is empty",)),
        (
            "prompt_search",
            long_text,
            False,
            "prompt_search(1,201 tokens), no limits",
            ("1,201 tokens", "the limit is 64", "shorten"),
        ),
        (
            "feature_on_text",
            long_text,
            False,
            "feature_on_text(1,201 tokens), no limits",
            ("1,201 tokens", "the limit is 64"),
        ),
        (
            "steer",
            long_text,
            False,
            "steer(1,201 tokens), no limits",
            ("1201 tokens", "context of 64", "shorten"),
        ),
        (
            "prompt_search",
            "x" * 500,
            True,
            "prompt_search(500 chars), limit 400",
            ("500 characters", "this server allows 400", "shorten"),
        ),
        (
            "prompt_search",
            "the cat " * 30,
            True,
            "prompt_search(61 tokens), limit 48",
            ("61 tokens", "the limit is 48"),
        ),
        (
            "feature_on_text",
            "x" * 500,
            True,
            "feature_on_text(500 chars), limit 400",
            ("this server allows 400",),
        ),
        ("steer", "x" * 500, True, "steer(500 chars), limit 400", ("this server allows 400",)),
        (
            "prompt_search",
            "x" * 100_000,
            False,
            "prompt_search(one 100,000-character word), no limits",
            ("accepted",),
        ),
    ]:
        if expect == ("accepted",):
            run = _unicode_prompt_on_app(text)
        else:
            run = _prompt(call, text, limits)
        add(f"prompt-{call}-{tried}", "prompt", tried, run, *expect)
    add(
        "prompt-steer-new-tokens",
        "prompt",
        "steer(max_new_tokens=10**9)",
        _prompt("steer", "the cat", max_new_tokens=10**9),
        "max_new_tokens must be between 1 and 256",
    )
    add(
        "prompt-steer-new-tokens-limit",
        "prompt",
        "steer(max_new_tokens=17), limit 16",
        _prompt("steer", "the cat", limits=True, max_new_tokens=17),
        "17 new tokens requested",
        "this server allows 16",
    )
    add(
        "prompt-app-long",
        "prompt",
        "app search page, prompt of 1,201 tokens",
        _prompt_app_long,
        "1,201 tokens",
        "the limit is 64",
    )

    # 4. HTML
    add(
        "html-fragments",
        "html",
        "examples / intervals / logit tables of features whose tokens are payloads",
        _html_fragments,
        "escaped",
    )
    add(
        "html-prompt-tokens",
        "html",
        f"tokens_html of feature_on_text({HOSTILE_PROMPT!r})",
        _html_prompt_tokens,
        "escaped",
    )
    add("html-steer", "html", "continuation_html of steer(payload prompt)", _html_steer, "escaped")
    add(
        "html-export",
        "html",
        "standalone export: payload tokens, title, label, dataset name",
        _html_export,
        "escaped",
    )
    add(
        "html-app",
        "html",
        "app feature page + own-text + steer with payload tokens and prompt",
        _html_app,
        "escaped",
    )

    # 5. Unicode
    for text, call, tried, expect in [
        (EMOJI_ZWJ, "feature_on_text", "emoji with zero-width joiners", ("accepted",)),
        (COMBINING, "feature_on_text", "stacked combining marks", ("accepted",)),
        (f"{RTL} {RLO}", "feature_on_text", "Hebrew + right-to-left override", ("accepted",)),
        (f"{ZWJ_WORD} the", "feature_on_text", "zero-width joiner inside a word", ("accepted",)),
        (f"the {NUL_WORD} cat", "feature_on_text", "NUL inside a word", ("accepted",)),
        (LONG_WORD, "feature_on_text", "a 3,000-character word (one token)", ("accepted",)),
        ("the \ud800 cat", "feature_on_text", "lone surrogate \\ud800", ("not valid text",)),
        ("\udfff", "prompt_search", "lone surrogate \\udfff", ("not valid text", "U+DFFF")),
        ("cat \ud800", "steer", "lone surrogate in steer", ("not valid text",)),
    ]:
        add(
            f"unicode-{call}-{tried}",
            "unicode",
            f"{call}: {tried}",
            _unicode_prompt(text, call),
            *expect,
        )
    add(
        "unicode-dataset-surrogate",
        "unicode",
        "dataset JSONL text with a lone surrogate and emoji",
        _unicode_dataset,
        "accepted",
    )
    add(
        "unicode-export",
        "unicode",
        "export of features whose tokens are emoji/RTL/ZWJ/NUL/3,000 chars",
        _unicode_export,
        "accepted",
    )

    # 6. dictionary that does not fit
    width = ("reads 16-wide inputs", "is 32 wide", "pick the hook (or model)")
    hook = ("'blocks.9.hook_resid_pre' is not in model", "same ending")
    for kind, call, expect in [
        ("width", "feature", width),
        ("width", "prompt_search", width),
        ("width", "steer", width),
        ("hook", "feature", hook),
        ("hook", "feature_on_text", hook),
        ("hook", "steer", hook),
        ("hook", "effects", hook),
    ]:
        what = "SAE d_in 16 on a 32-wide hook" if kind == "width" else "SAE on a missing hook"
        add(
            f"mismatch-{kind}-{call}", "mismatch", f"{what}: {call}", _mismatch(kind, call), *expect
        )
    add(
        "mismatch-sources",
        "mismatch",
        "local SAE dir (d_in 16) with a 32-wide local model: load, then a feature",
        _mismatch_sources,
        *width,
    )
    add(
        "mismatch-clt",
        "mismatch",
        "CLT for a 16-wide model with a 32-wide model",
        _mismatch_clt,
        "16-wide",
        "32 wide",
    )

    # 7. corrupted files
    sae_msg = ("could not load the SAELens dictionary", "copy or download the directory again")
    model_msg = ("could not read the model", "copy or download the model again")
    for part, damage, tried, expect in [
        (
            "sae",
            _truncate("sae_weights.safetensors"),
            "sae_weights.safetensors cut in half",
            sae_msg,
        ),
        (
            "sae",
            _garbage("sae_weights.safetensors"),
            "sae_weights.safetensors random bytes",
            sae_msg,
        ),
        ("sae", _garbage("cfg.json", b"{not json"), "SAE cfg.json garbage", (*sae_msg, "JSON")),
        ("sae", _garbage("cfg.json", b""), "SAE cfg.json empty", sae_msg),
        ("model", _truncate("model.safetensors"), "model.safetensors cut in half", model_msg),
        ("model", _garbage("model.safetensors"), "model.safetensors random bytes", model_msg),
        ("model", _garbage("config.json", b"{oops"), "model config.json garbage", model_msg),
        (
            "clt",
            _garbage("clt_weights.safetensors"),
            "CLT weights random bytes",
            ("not a readable safetensors file", "download or export it again"),
        ),
        (
            "clt",
            _truncate("clt_weights.safetensors"),
            "CLT weights cut in half",
            ("truncated or corrupt", "download or export it again"),
        ),
        ("clt", _garbage("cfg.json", b"{nope"), "CLT cfg.json garbage", ("not valid JSON",)),
    ]:
        add(f"corrupt-{part}-{tried}", "corrupt", tried, _corrupt(part, damage), *expect)

    # 8. pickles
    add(
        "pickle-clt-pt",
        "pickle",
        "CLT clt.pt whose pickle would run code",
        _pickle_file("clt"),
        "refused to load 'clt.pt'",
        "weights_only=True",
        "re-export the weights as safetensors",
    )
    add(
        "pickle-model-bin",
        "pickle",
        "HF model pytorch_model.bin whose pickle would run code",
        _pickle_file("model"),
        "refused unrun",
        "re-save the model with safetensors",
    )
    add(
        "pickle-sae-weights",
        "pickle",
        "sae_weights.safetensors that is really a pickle",
        _pickle_file("sae"),
        "could not load the SAELens dictionary",
    )
    add(
        "pickle-memo",
        "pickle",
        "pickle planted in the memo under a computed feature's key",
        _pickle_memo,
        "refusing to unpickle",
    )
    add(
        "pickle-scan",
        "pickle",
        "static scan: torch.load / pickle / yaml.load in the project's code",
        _pickle_scan,
        "all weights_only=True",
        "no unsafe deserialisers",
    )

    # 9. paths (hosted, through app links)
    for name, build, tried, expect in [
        (
            "precomputed-relative",
            lambda site: {"p": "run"},
            "precomputed 'run' (relative)",
            ("give an absolute path",),
        ),
        (
            "precomputed-nul",
            lambda site: {"p": f"{site}/run\x00.txt"},
            "precomputed path with NUL",
            ("NUL character",),
        ),
        (
            "precomputed-dotdot",
            lambda site: {"p": f"{site}/sae/../../outside"},
            "precomputed path with '..'",
            ("'..' is not allowed",),
        ),
        (
            "precomputed-symlink",
            lambda site: {"p": f"{site}/escape"},
            "precomputed: symlink in the root pointing out",
            ("outside the directories this server may read",),
        ),
        (
            "dictionary-symlink",
            lambda site: {"di": {"kind": "saelens_local", "path": f"{site}/sae-link"}},
            "dictionary: symlink to an SAE outside the root",
            ("not on this server's allowlist", "allowed: Tiny SAE"),
        ),
        (
            "model-absolute-outside",
            lambda site: {"mo": {"kind": "local", "path": str(site.parent / "hostile" / "model")}},
            "model: absolute path outside the root",
            ("not on this server's allowlist", "allowed: Tiny GPT-2"),
        ),
        (
            "dataset-nul",
            lambda site: {"da": {"kind": "local", "path": f"{site}/corpus.txt\x00"}},
            "dataset path with NUL",
            ("not on this server's allowlist",),
        ),
    ]:
        add(f"paths-app-{name}", "paths", f"hosted app link: {tried}", _path_link(build), *expect)

    # 10. cache
    cache_fix = ("cannot write to the cache directory", "FEATURESCOPE_CACHE_DIR")
    add(
        "cache-readonly",
        "cache",
        "cache directory read-only (memo + activation writes fail with EROFS)",
        _readonly_memo(OSError(errno.EROFS, "Read-only file system")),
        *cache_fix,
        "activations",
        "they will be recomputed next time",
    )
    add(
        "cache-full",
        "cache",
        "cache disk full (writes fail with ENOSPC)",
        _readonly_memo(OSError(errno.ENOSPC, "No space left on device")),
        *cache_fix,
        "No space left",
    )
    add(
        "cache-sqlite-full",
        "cache",
        "cache database full (sqlite 'database or disk is full')",
        _readonly_memo(sqlite3.OperationalError("database or disk is full"), activations=False),
        *cache_fix,
        "disk is full",
    )
    add(
        "cache-sqlite-readonly",
        "cache",
        "cache database read-only (sqlite 'attempt to write a readonly database')",
        _readonly_memo(
            sqlite3.OperationalError("attempt to write a readonly database"), activations=False
        ),
        *cache_fix,
    )
    add("cache-tiny", "cache", "cache size limit of 1 byte", _tiny_memo, "results returned")
    add(
        "cache-unopenable",
        "cache",
        "FEATURESCOPE_CACHE_DIR names a file",
        _unopenable_memo,
        "cannot open the cache directory",
        "FEATURESCOPE_CACHE_DIR",
    )
    add(
        "cache-tokens-full",
        "cache",
        "token cache disk full while a dataset is tokenised",
        _full_token_cache,
        "the dataset will be tokenised again next time",
        "FEATURESCOPE_DATA_DIR",
    )
    # 12. files: code, devices, memory and hangs (issue 11, Engineer B)
    for name, part, damage, tried, expect in [
        (
            "files-clt-template-code",
            "clt",
            _clt_cfg(tl_input_template="blocks.{}.hook_resid_pre; import os"),
            "CLT cfg.json tl_input_template 'blocks.{}.hook_resid_pre; import os'",
            ("is not a hook name template", "one '{}' for the layer"),
        ),
        (
            "files-clt-template-format",
            "clt",
            _clt_cfg(tl_input_template="{0.__class__}"),
            "CLT cfg.json tl_input_template '{0.__class__}'",
            ("is not a hook name template",),
        ),
        (
            "files-clt-num-layers",
            "clt",
            _clt_cfg(num_layers=10**9),
            "CLT cfg.json num_layers = 10**9",
            ("declares 1,000,000,000 layers", "fix num_layers"),
        ),
        (
            "files-sae-nan",
            "sae",
            _sae_weight("W_enc", float("nan")),
            "SAE W_enc with 3 NaN",
            ("tensor 'W_enc'", "3 NaN", "download or export them again"),
        ),
        (
            "files-sae-inf",
            "sae",
            _sae_weight("W_dec", float("inf")),
            "SAE W_dec with 3 infinite values",
            ("tensor 'W_dec'", "3 infinite"),
        ),
        (
            "files-sae-hook-code",
            "sae",
            _sae_cfg(hook_name="blocks.1.hook_resid_pre; import os"),
            "SAE cfg.json metadata hook_name with code appended",
            ("not a TransformerLens hook name",),
        ),
    ]:
        add(name, "files", tried, _corrupt(part, damage), *expect)
    for config in ("config.json", "tokenizer_config.json"):
        add(
            f"files-remote-code-{config}",
            "files",
            f"model {config} auto_map to a Python file + SAE metadata trust_remote_code",
            _remote_code(config),
            "asks to run its own Python code",
            "convert it",
        )
    add(
        "files-sae-n-devices",
        "files",
        "SAE metadata model_from_pretrained_kwargs {n_devices: 8, trust_remote_code: true}",
        _sae_model_kwargs,
        "n_devices=8",
        "trust_remote_code=True",
        "dropped",
    )
    for device in ("meta", "cuda:7"):
        add(
            f"files-model-device-{device}",
            "files",
            f"load_sources with the model device {device!r}",
            _model_device(device),
            f"device {device!r} is not available on this machine",
            "'cpu'",
        )
    for name, write, tried, expect in [
        ("fifo", _fifo, "dataset fifo.txt, a named pipe", ("is a FIFO",)),
        ("dev-zero", _dev_zero, "dataset zero.txt, a link to /dev/zero", ("character device",)),
        ("sparse-nul", _sparse_nul, "dataset of 2 GiB NUL bytes (sparse) named .txt", ("binary",)),
        (
            "utf16-no-bom",
            _utf16,
            "dataset .txt in UTF-16 without a byte-order mark",
            ("binary", "save it as UTF-8"),
        ),
        ("nested-json", _nested_json, "dataset .json of 200,000 nested arrays", ("nested too",)),
        (
            "input-ids-floats",
            _ids_floats,
            "dataset .jsonl whose input_ids hold 1.7",
            ("row 1 of column 'input_ids' holds 1.7",),
        ),
        (
            "input-ids-vocab",
            _ids_vocab,
            "dataset .jsonl whose input_ids go past the vocabulary",
            ("row 1 of column 'input_ids' holds token id 10000", "another model"),
        ),
    ]:
        add(f"files-dataset-{name}", "files", tried, _dataset_file(write), *expect)
    # 11. links (issue 11, Engineer A)
    nested = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    for name, src, tried, expect in [
        (
            "link-src-nested-100k",
            nested,
            "app link whose src= is base64 of 100,000 nested JSON arrays",
            ("more than the 4,096", "copy the link again"),
        ),
        (
            "link-src-nested-deep",
            link({"mo": {"kind": [[[[[[["local"]]]]]]]}}),
            "app link whose src= nests 9 levels",
            ("nests 9 levels deep", "copy the link again"),
        ),
        (
            "link-device-meta",
            link({"mo": {"kind": "demo", "device": "meta"}}),
            "app link naming the model device 'meta'",
            ("device 'meta' is not available on this machine", "use 'auto' or one of"),
        ),
        (
            "link-device-cuda-7",
            link({"mo": {"kind": "demo", "device": "cuda:7"}}),
            "app link naming the model device 'cuda:7'",
            ("device 'cuda:7' is not available on this machine", "use 'auto' or one of"),
        ),
    ]:
        add(name, "links", tried, _link_app(src), *expect, "showing the default sources")
    add(
        "link-local-notes-file",
        "links",
        "app link naming a local notes file as the dataset (server not hosted)",
        _link_notes,
        "This link asks to load",
        "notes.txt",
        "Load?",
    )
    # 13. memo rows, feature selections, weights damaged after loading (issue 11)
    for spec, expect in [
        ("0:60000000", ("feature range 0:60000000 is out of range", "0-63")),
        ("0:9999999999999", ("feature range 0:9999999999999 is out of range", "0-63")),
        ("1,2,99999999", ("feature index 99999999 is out of range", "0-63")),
    ]:
        add(
            f"index-spec-{spec}",
            "index",
            f"precompute feature box {spec!r} (checked before it is expanded)",
            _feature_spec(spec),
            *expect,
        )
    for where, expect in [
        ("absolute", ("not one of its own",)),
        ("dotdot", ("not one of its own",)),
        ("fifo", ("not a regular file",)),
    ]:
        add(
            f"cache-row-{where}",
            "cache",
            f"a memo row's file name rewritten to a {where} path",
            _memo_row(where),
            *expect,
        )
    add(
        "cache-settings-garbage",
        "cache",
        "unknown and malformed rows in the memo's Settings table",
        _memo_settings,
        "unknown or malformed settings",
    )
    for part in ("W_enc", "W_dec"):
        add(
            f"corrupt-sweep-{part}",
            "corrupt",
            f"NaN/Inf written into {part} after the SAE was loaded",
            _damaged_after_load(part),
            "feature(s) 3",
            "NaN or infinite",
        )
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "case names must be unique"
    return out


def _unicode_prompt_on_app(text: str) -> Callable[[Env], Outcome]:
    """A very long single word on the app workspace: accepted (one unknown token)."""

    def run(env: Env) -> Outcome:
        ws = env.ws
        got: dict[str, Any] = {}
        message = error_of(lambda: got.setdefault("r", ws.prompt_search(text)))
        if "r" in got:
            message = f"accepted: {len(got['r'].tokens)} tokens (BOS + one unknown word)"
        return env.outcome(message)

    return run


# ---- 12. files: code, devices, memory and hangs (issue 11, Engineer B) --------------------------
def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _clt_cfg(**values: Any) -> Callable[[Path], None]:
    return lambda path: _edit_json(path / "cfg.json", lambda cfg: cfg.update(values))


def _sae_cfg(**metadata: Any) -> Callable[[Path], None]:
    return lambda path: _edit_json(path / "cfg.json", lambda cfg: cfg["metadata"].update(metadata))


def _sae_weight(name: str, value: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        file = path / "sae_weights.safetensors"
        tensors = load_file(str(file))
        tensors[name].view(-1)[[0, 5, 9]] = value
        save_file(tensors, str(file))

    return damage


def _remote_code(config: str) -> Callable[[Env], Outcome]:
    """A model directory whose ``config`` maps a class to a Python file that touches a
    marker when imported, with an SAE whose metadata asks for trust_remote_code."""

    def run(env: Env) -> Outcome:
        from core.sources import DictionarySpec, ModelSpec, load_sources

        h = env.hostile
        marker = env.marker()
        model = env.copy_of("model", "model-remote-code")
        (model / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
        auto_map = (
            {"AutoConfig": "evil.C"} if config == "config.json" else {"AutoTokenizer": "evil.T"}
        )
        _edit_json(model / config, lambda cfg: cfg.update(auto_map=auto_map))
        sae = env.copy_of("sae", "sae-remote-code")
        _sae_cfg(model_from_pretrained_kwargs={"trust_remote_code": True})(sae)
        problems: list[str] = []
        with env.token_cache_watch(problems):
            message = error_of(
                lambda: load_sources(
                    ModelSpec(kind="local", path=str(model), device="cpu"),
                    DictionarySpec(kind="saelens_local", path=str(sae)),
                    h["data_spec"],
                )
            )
        if marker.exists():
            problems.append("THE MODEL'S PYTHON FILE WAS IMPORTED")
        return env.outcome(message, problems + env.sources_problems())

    return run


def _sae_model_kwargs(env: Env) -> Outcome:
    """Accepted: the unsafe loader options are dropped with a warning, the model loads."""
    from core.sources import DictionarySpec, load_sources

    h = env.hostile
    sae = env.copy_of("sae", "sae-n-devices")
    kwargs = {"n_devices": 8, "trust_remote_code": True}
    _sae_cfg(model_from_pretrained_kwargs=kwargs)(sae)
    problems: list[str] = []
    with env.token_cache_watch(problems), logged_warnings() as warnings:
        message = error_of(
            lambda: load_sources(
                h["model_spec"], DictionarySpec(kind="saelens_local", path=str(sae)), h["data_spec"]
            )
        )
    if message.startswith("(no error"):
        message = "accepted; warned: " + " | ".join(warnings)
    return env.outcome(message, problems + env.sources_problems())


def _model_device(device: str) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        from core.sources import ModelSpec, load_sources

        h = env.hostile
        spec = ModelSpec(kind="local", path=str(h["model_dir"]), device=device)
        message = error_of(lambda: load_sources(spec, h["sae_spec"], h["data_spec"]))
        return env.outcome(message, env.sources_problems())

    return run


def _fifo(path: Path) -> Path:
    fifo = path / "fifo.txt"
    os.mkfifo(fifo)
    return fifo


def _dev_zero(path: Path) -> Path:
    (path / "zero.txt").symlink_to("/dev/zero")
    return path / "zero.txt"


def _sparse_nul(path: Path) -> Path:
    with (path / "nul.txt").open("wb") as fh:
        fh.truncate(2 << 30)
    return path / "nul.txt"


def _utf16(path: Path) -> Path:
    (path / "u16.txt").write_bytes((" ".join(NORMAL_WORDS) + "\n").encode("utf-16-le") * 50)
    return path / "u16.txt"


def _nested_json(path: Path) -> Path:
    (path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    return path / "deep.json"


def _ids_rows(path: Path, bad: list[Any]) -> Path:
    rows = [{"input_ids": list(range(16))}, {"input_ids": bad}]
    (path / "ids.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return path / "ids.jsonl"


def _ids_floats(path: Path) -> Path:
    return _ids_rows(path, [1.7, *range(15)])


def _ids_vocab(path: Path) -> Path:
    return _ids_rows(path, [*range(15), 10_000])


def _dataset_file(write: Callable[[Path], Path]) -> Callable[[Env], Outcome]:
    """A local dataset file written by ``write``, tokenised for the hostile model. A FIFO
    that is read (instead of refused) is ended after 20 s, so nothing hangs."""

    def run(env: Env) -> Outcome:
        import threading

        from core.sources import DatasetSpec, load_tokens

        h = env.hostile
        folder = env.root / "damaged" / f"data-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        path = write(folder)
        spec = DatasetSpec(kind="local", path=str(path), n_tokens=64, context_length=16)

        def unblock() -> None:
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

        timer = threading.Timer(20, unblock)
        timer.start()
        problems: list[str] = []
        try:
            with env.token_cache_watch(problems):
                message = error_of(lambda: load_tokens(spec, h["ws"].model))
        finally:
            timer.cancel()
        return env.outcome(message, problems + env.sources_problems())

    return run


# ---- 11. links (issue 11, Engineer A) -----------------------------------------------------------
NOTES_TEXT = "PRIVATE NOTES: the reviewer's password is hunter2"


def _link_app(src: str) -> Callable[[Env], Outcome]:
    """A feature link with a bad ``src=``: a warning, and the default sources' feature."""

    def run(env: Env) -> Outcome:
        env.ws  # noqa: B018 - baseline first
        at = run_app("pages/feature.py", feature="1", src=src)
        message = texts(at.warning) or texts(at.error) or "(no warning shown)"
        problems = app_problems(at)
        if "## Feature 1" not in texts(at.markdown):
            problems.append("the default sources' feature did not render")
        return env.outcome(message, problems)

    return run


def _link_notes(env: Env) -> Outcome:
    """A link naming a local notes file as the dataset is not loaded on open: it asks."""
    from pages import _links as links
    from pages import _workspaces as workspaces

    site = env.site
    env.ws  # noqa: B018
    notes = env.root / "notes.txt"
    notes.write_text("\n".join([NOTES_TEXT] * 600) + "\n")
    src = link(
        {
            "mo": {"kind": "local", "path": str(site / "model"), "device": "cpu"},
            "di": {"kind": "saelens_local", "path": str(site / "sae")},
            "da": {"kind": "local", "path": str(notes), "n_tokens": 2048, "context_length": 32},
        }
    )
    at = run_app("pages/feature.py", feature="1", src=src)
    message = texts(at.warning) or "(no question asked)"
    problems = app_problems(at)
    shown = "\n".join(texts(p) for p in (at.markdown, at.caption, at.code)) + app_html(at)
    if "hunter2" in shown:
        problems.append("the notes file's text was shown")
    if workspaces.is_loaded(links.decode_sources(src)):
        problems.append("the link's sources were loaded without asking")
    return env.outcome(message, problems)


# ---- 13. memo rows, feature selections, weights damaged after loading (issue 11) -------------
def _feature_spec(spec: str) -> Callable[[Env], Outcome]:
    """The Sources page's precompute box: bounds checked on the text, in constant memory."""

    def run(env: Env) -> Outcome:
        import tracemalloc

        from core.config import parse_features

        n = env.ws.dictionary.n_features
        tracemalloc.start()
        try:
            message = error_of(lambda: parse_features(spec, n))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        problems = [f"{peak:,} bytes allocated reading the spec"] if peak > 1 << 20 else []
        return env.outcome(message, problems)

    return run


def _memo_row(where: str) -> Callable[[Env], Outcome]:
    """A memo row pointing at a file the memo did not write: dropped, the path untouched."""

    def run(env: Env) -> Outcome:
        from core.memo import Memo

        env.ws  # noqa: B018 - baseline first
        root = env.root / f"memo-row-{where}-{uuid.uuid4().hex[:6]}"
        victim = root / "outside" / "deep" / "victim.txt"
        victim.parent.mkdir(parents=True)
        victim.write_bytes(b"keep me")
        memo = Memo(root / "memo")
        memo.put_bytes("k", b"v" * 100_000)
        name = {
            "absolute": str(victim),
            "dotdot": os.path.relpath(victim, root / "memo"),
            "fifo": f"ab/cd/{'e' * 28}.val",
        }[where]
        if where == "fifo":
            (root / "memo" / "ab" / "cd").mkdir(parents=True, exist_ok=True)
            os.mkfifo(root / "memo" / name)
        con = sqlite3.connect(str(root / "memo" / "cache.db"))
        with con:
            con.execute("UPDATE Cache SET filename = ?, size = ? WHERE key = 'k'", (name, 1 << 40))
        con.close()
        problems = []
        with logged_warnings() as warnings:
            got: dict[str, Any] = {}
            reader = threading.Thread(target=lambda: got.setdefault("b", memo.get_bytes("k")))
            reader.daemon = True
            reader.start()
            reader.join(20)  # a FIFO would block the read forever
            if reader.is_alive():
                problems.append("the read hung")
            elif got.get("b") is not None:
                problems.append("the bad row was served")
        if reader.is_alive():
            return env.outcome("(the read hung)", problems)
        if "k" in memo:
            problems.append("the bad row was kept")
        if victim.read_bytes() != b"keep me" or not victim.parent.is_dir():
            problems.append("a file outside the cache was removed")
        if not memo.put_bytes("k", b"again") or memo.get_bytes("k") != b"again":
            problems.append("the memo does not store the entry again")
        memo.close()
        return env.outcome(" | ".join(warnings) or "(nothing logged)", problems)

    return run


def _memo_settings(env: Env) -> Outcome:
    from core.memo import Memo

    env.ws  # noqa: B018 - baseline first
    directory = env.root / f"memo-settings-{uuid.uuid4().hex[:6]}"
    memo = Memo(directory)
    memo.put_bytes("kept", b"k")
    memo.close()
    con = sqlite3.connect(str(directory / "cache.db"))
    with con:
        for key, value in [("disk_surprise", 1), ("eviction_policy", "bogus"), ("_sql", "x")]:
            con.execute("INSERT OR REPLACE INTO Settings VALUES (?, ?)", (key, value))
    con.close()
    problems: list[str] = []
    with logged_warnings() as warnings:
        got: dict[str, Any] = {}
        err = error_of(lambda: got.setdefault("m", Memo(directory)))
    if "m" not in got:
        problems.append(f"the memo no longer opens: {err}")
    else:
        if got["m"].get_bytes("kept") != b"k":
            problems.append("the stored entry was lost")
        got["m"].close()
    return env.outcome(" | ".join(warnings) or err, problems)


def _damaged_after_load(part: str) -> Callable[[Env], Outcome]:
    """Weights damaged after the load-time check: the sweep names the feature and the hook."""

    def run(env: Env) -> Outcome:
        from core.config import RunConfig
        from core.dictionaries.saelens import SAELensDictionary
        from core.engine.sweep import run_sweep
        from core.models import ModelAdapter

        env.ws  # noqa: B018 - baseline first
        model = ModelAdapter(make_model(), bos_token_id=0)
        sae = make_sae("standard", 32, 16, HOOK)
        d = SAELensDictionary(sae)
        with torch.no_grad():
            if part == "W_enc":
                sae.W_enc[:, 3] = float("nan")
            else:
                sae.W_dec[3, 0] = float("inf")
        tokens = random_tokens(8, 12, seed=0, bos=None)
        message = error_of(lambda: run_sweep(model, d, tokens, RunConfig(features=[1, 3])))
        problems = []
        if "bincount" in message:
            problems.append("failed inside bincount")
        return env.outcome(message, problems)

    return run


CASES: list[Case] = _cases()


def check(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with ``outcome`` for ``case`` (empty: the case passes)."""
    wrong = []
    low = outcome.message.lower()
    if UNEXPECTED in low:
        wrong.append("the error is not one of the project's clear errors")
    for s in case.expect:
        if s.lower() not in low:
            wrong.append(f"the message lacks {s!r}")
    if not outcome.intact:
        wrong.append(f"not intact: {outcome.notes}")
    return wrong


def shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
