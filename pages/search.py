"""Search page: find features by prompt, by token, by statistics, by similarity or by
the words people and models wrote about them; find text in the dataset (pages/_corpus.py).

Every result table opens a feature: click a row to open it here, or its link to open it
in a new tab.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import charts
from pages import _corpus as corpus
from pages import _export as export
from pages import _jobs as jobs
from pages import _knowledge as knowledge
from pages import _links as links
from pages import _messages as messages
from pages import _results as results
from pages import _state as state
from pages import _ui as ui
from pages import _workspaces as workspaces

ui.inject_css()
ws = state.require_workspace()
n = int(ws.n_features)
ident = workspaces.identity(ws)

MODES = {
    "prompt": "By prompt",
    "token": "By token",
    "stats": "By statistics",
    "similar": "By similarity",
    "words": "By words",
    "corpus": "In the dataset",
}
#: query parameters that hold a search (so a reload or a shared link runs it again)
QUERY_PARAMS = ("q", "token", "of", "k", "words")


def parse_mode(raw: str | None) -> tuple[str, str | None]:
    """The mode a link names (its key, or the label older links used) and a warning for a
    name that is neither."""
    if not raw:
        return "prompt", None
    name = raw.strip()
    if name in MODES:
        return name, None
    by_label = {label.lower(): key for key, label in MODES.items()}
    if name.lower() in by_label:
        return by_label[name.lower()], None
    return "prompt", (
        f"Unknown search mode {raw!r} in the link; modes are {', '.join(MODES)} "
        "(e.g. ?mode=similar): showing the search by prompt."
    )


def url_int(name: str, lo: int, hi: int, default: int, what: str = "a whole number") -> int:
    """Whole number ``name`` from the URL, in ``[lo, hi]``; a warning saying what was
    used instead for anything else."""
    raw = st.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        st.warning(
            f"{name}={raw!r} in the link is not {what} from {lo} to {hi}: using {default}; "
            "pick another value below",
            icon=":material/link_off:",
        )
        return default
    return value


def words_search(ws, words: str) -> list:
    """Search hits of ``words`` among this dictionary's features (labels, notes,
    explanations), best first."""
    key = knowledge.dictionary_key(ws)
    if key is None:
        raise ValueError("this output has no dictionary fingerprint, so it has no notes")
    return knowledge.store().search(words, key)


def token_labels(tokens: list[str]) -> list[str]:
    """One distinct label per position: a token that occurs again gets invisible
    zero-width spaces appended, since pills tell their options apart by label."""
    seen: set[str] = set()
    out = []
    for tok in tokens:
        label = charts.visible_token(tok) or "∅"
        while label in seen:
            label += "\u200b"
        seen.add(label)
        out.append(label)
    return out


raw_mode = st.query_params.get("mode")
url_mode, bad_mode = parse_mode(raw_mode)
if st.session_state.get("fs_mode_url") != raw_mode or "mode" not in st.session_state:
    st.session_state["mode"] = url_mode
    st.session_state["fs_mode_url"] = raw_mode
    if not bad_mode and raw_mode is not None and raw_mode != url_mode:  # an old label
        st.query_params["mode"] = url_mode
        st.session_state["fs_mode_url"] = url_mode


def _mode_changed() -> None:
    """Keep the mode's stable key in the URL; the other modes' queries leave it."""
    mode = st.session_state["mode"]
    st.query_params["mode"] = mode
    st.session_state["fs_mode_url"] = mode
    for name in QUERY_PARAMS:
        st.query_params.pop(name, None)


head = st.container(horizontal=True, vertical_alignment="bottom")
head.markdown("## Search", width="content")
mode = head.segmented_control(
    "Search",
    list(MODES),
    format_func=MODES.__getitem__,
    required=True,
    key="mode",
    on_change=_mode_changed,
    label_visibility="collapsed",
)
if bad_mode:
    st.warning(bad_mode, icon=":material/link_off:")
needs_model = not workspaces.is_live(ws)


def _no_model(what: str) -> None:
    st.info(
        f"Search {what} needs the model, and this is a precomputed output without one. "
        "Load the model and dictionary on the Sources page.",
        icon=":material/info:",
    )


def _from_url(param: str, tried_key: str) -> bool:
    """True when the URL holds a search (``param``) not run yet in this session (the
    caller puts its values in the form's widgets, before they are drawn, and runs it)."""
    value = st.query_params.get(param)
    if not value or st.session_state.get(tried_key) == (ident, value):
        return False
    st.session_state[tried_key] = (ident, value)
    return True


# ---- by prompt --------------------------------------------------------------------------------------
if mode == "prompt":
    st.caption("Type text: the features most active on it overall, and per token (pick a token).")
    if needs_model:
        _no_model("by prompt")
        st.stop()
    st.session_state.setdefault("fs_prompt_k", 10)
    auto = _from_url("q", "fs_prompt_url")
    if auto:
        st.session_state["fs_prompt"] = st.query_params.get("q")
        st.session_state["fs_prompt_k"] = url_int("k", 5, 50, 10, "a list length")
    with st.form("fs_prompt_form", border=False):
        text = st.text_area(
            "Prompt",
            key="fs_prompt",
            height=90,
            placeholder="e.g. Return a new sorted list from the items in iterable.",
            label_visibility="collapsed",
        )
        c1, c2 = st.columns([1, 5], vertical_alignment="bottom")
        k = c2.slider("Features per list", 5, 50, key="fs_prompt_k", width=260)
        go = c1.form_submit_button("Find features", type="primary", icon=":material/search:")
    if go or auto:
        with messages.shown_errors():
            r = ws.prompt_search(text, k=k)
            st.session_state["fs_prompt_result"] = {
                "ident": ident,
                "text": text,
                "tokens": r.tokens,
                "top": r.top_overall,
                "per": r.per_token,
            }
            st.session_state.pop("fs_tok_pick", None)
            st.query_params.update({"mode": "prompt", "q": text, "k": str(k)})
            st.session_state["fs_prompt_url"] = (ident, text)
    res = st.session_state.get("fs_prompt_result")
    if res and res["ident"] == ident:
        left, right = st.columns(2, gap="large")
        with left:
            st.markdown(
                "**Most active overall**",
                help="Highest activation anywhere in the prompt; mean over all its tokens.",
            )
            rows = [
                {
                    "feature": r["feature"],
                    "max": r["max"],
                    "mean": r["mean"],
                    "at token": charts.visible_token(r["token"]),
                    "position": r["position"],
                }
                for r in res["top"]
            ]
            results.feature_table(
                ws,
                rows,
                key="fs_prompt_top",
                columns={
                    "max": st.column_config.NumberColumn(format="%.3f"),
                    "mean": st.column_config.NumberColumn(format="%.3f"),
                },
            )
            export.export_features_button(ws, [r["feature"] for r in rows], key="fs_prompt_export")
        with right:
            tokens = res["tokens"]
            st.markdown("**Per token**", help="Pick a token to see its most active features.")
            labels = token_labels(tokens)  # one per position: repeated tokens differ
            pick = st.pills(
                "Token",
                list(range(len(tokens))),
                format_func=labels.__getitem__,
                key="fs_tok_pick",
                label_visibility="collapsed",
                wrap=True,
            )
            if pick is None:
                st.caption("Pick a token above.")
            else:
                st.caption(f"Position {pick}: {messages.md(charts.visible_token(tokens[pick]))!s}")
                results.feature_table(
                    ws,
                    [{"feature": f["feature"], "activation": f["act"]} for f in res["per"][pick]],
                    key=f"fs_tok_table_{pick}",
                    columns={"activation": st.column_config.NumberColumn(format="%.3f")},
                )

# ---- by token ---------------------------------------------------------------------------------------
elif mode == "token":
    st.caption(
        "Features whose decoder direction most promotes or suppresses a token's logit "
        "(direct effect through the unembedding)."
    )
    if needs_model:
        _no_model("by token")
        st.stop()
    st.session_state.setdefault("fs_token_k", 15)
    auto = _from_url("token", "fs_token_url")
    if auto:
        st.session_state["fs_token"] = st.query_params.get("token")
        st.session_state["fs_token_k"] = url_int("k", 5, 50, 15, "a list length")
    with st.form("fs_token_form", border=False):
        c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
        token = c1.text_input(
            "Token",
            key="fs_token",
            help="The exact token string, leading space included (e.g. ' the'), or a token id.",
        )
        k = c2.slider("Features per list", 5, 50, key="fs_token_k")
        go = c3.form_submit_button("Search", type="primary", icon=":material/search:")
    if go or auto:
        with messages.shown_errors():
            st.session_state["fs_token_result"] = (ident, ws.token_search(token, k=k))
            st.query_params.update({"mode": "token", "token": token, "k": str(k)})
            st.session_state["fs_token_url"] = (ident, token)
    got = st.session_state.get("fs_token_result")
    if got and got[0] == ident:
        res = got[1]
        st.caption(f"Token {messages.md(repr(res['token']))} (id {res['token_id']})")
        fmt = {"effect": st.column_config.NumberColumn(format="%+.4f")}
        left, right = st.columns(2, gap="large")
        with left:
            st.markdown("**Promote**")
            results.feature_table(ws, res["promote"], key="fs_token_promote", columns=fmt)
        with right:
            st.markdown("**Suppress**")
            results.feature_table(ws, res["suppress"], key="fs_token_suppress", columns=fmt)

# ---- by statistics ----------------------------------------------------------------------------------
elif mode == "stats":
    st.caption(
        "Every feature's density, activation, the tokens it fires on and the tokens it "
        "promotes: sort by a column, filter, e.g. to find dead or dense features."
    )
    summary = None
    with messages.shown_errors():
        summary = jobs.summary_if_ready(ws)
    if summary is None and needs_model:
        st.stop()
    if summary is None:
        job = ui.job_panel(ws)
        if job is None or not job.running:
            d = ws.describe()
            est = ws.memory_estimate(min(n, ui.default_per_pass(ws)))["total_mb"]
            st.info(
                f"The table needs all {n:,} features computed over {d.get('n_tokens', 0):,} "
                f"tokens (peak memory about {est:,.0f} MB per pass). Finished passes are kept: "
                "you can leave and come back, or stop and resume.",
                icon=":material/table_chart:",
            )
            if st.button("Compute the table", type="primary", icon=":material/play_arrow:"):
                with messages.shown_errors():
                    jobs.start_job(
                        ws,
                        list(range(n)),
                        ui.default_per_pass(ws),
                        label="Summary of all features",
                        then_summary=True,
                    )
                    st.rerun()
    else:
        df = pd.DataFrame(summary).drop(columns=["skipped"], errors="ignore")
        if "fires_on" not in df:  # a table stored before the column existed
            got = results.previews(ws, [int(f) for f in df["feature"]])
            df["fires_on"] = [got.get(int(f), {}).get("fires_on", []) for f in df["feature"]]
        df["fires_on"] = [charts.tokens_text(t) for t in df["fires_on"]]
        df["top_tokens"] = [charts.tokens_text(t) for t in df["top_tokens"]]
        dead = int((df["n_active"] == 0).sum())
        st.caption(
            f"{len(df):,} features · {dead:,} dead · median density "
            f"{df['density'].median():.4%} · densest {df['density'].max():.3%}"
        )
        fcol, ccol = st.columns([1, 2], gap="large")
        with fcol:
            show = st.segmented_control(
                "Show",
                ["all", "dead", "alive", "dense"],
                default="all",
                required=True,
                key="fs_stats_show",
                help="dense: density above the threshold below",
            )
            dense_at = st.number_input(
                "Dense above (%)", 0.0, 100.0, 1.0, step=0.5, key="fs_stats_dense"
            )
            min_max = st.number_input(
                "Min max activation", value=0.0, step=0.1, key="fs_stats_min_max"
            )
            fires_filter = st.text_input(
                "Fires on a token containing",
                key="fs_stats_fires",
                placeholder="e.g. def",
                help="The tokens the feature fires on most (its top examples' max tokens).",
            )
            tok_filter = st.text_input(
                "Promotes a token containing",
                key="fs_stats_tok",
                placeholder="e.g. def",
                help="The tokens whose logits the feature's decoder raises most.",
            )
        with ccol:
            if (df["density"] > 0).any():
                st.altair_chart(charts.density_overview(summary), width="stretch")
        view = df
        if show == "dead":
            view = view[view["n_active"] == 0]
        elif show == "alive":
            view = view[view["n_active"] > 0]
        elif show == "dense":
            view = view[view["density"] > dense_at / 100]
        if min_max > 0:
            view = view[view["max_act"] >= min_max]
        if fires_filter:
            view = view[view["fires_on"].str.contains(fires_filter, regex=False)]
        if tok_filter:
            view = view[view["top_tokens"].str.contains(tok_filter, regex=False)]
        st.caption(f"{len(view):,} features match · click a row to open it")
        results.feature_table(
            ws,
            view.to_dict("records"),
            key="fs_stats_table",
            height=460,
            preview=False,  # the table has both columns already
            columns={
                "density": st.column_config.NumberColumn(format="percent"),
                "max_act": st.column_config.NumberColumn("max act", format="%.3f"),
                "mean_act": st.column_config.NumberColumn("mean act", format="%.3f"),
                "n_active": st.column_config.NumberColumn("active tokens", format="%d"),
                "fires_on": results.PREVIEW_COLUMNS["fires_on"],
                "top_tokens": st.column_config.TextColumn(
                    "promotes", help="The tokens whose logits its decoder raises most."
                ),
            },
        )
        export.export_features_button(ws, [int(f) for f in view["feature"]], key="fs_stats_export")

# ---- by similarity ----------------------------------------------------------------------------------
elif mode == "similar":
    st.caption("Nearest features by the cosine similarity of their decoder directions.")
    if needs_model:
        _no_model("by similarity")
        st.stop()
    if st.query_params.get("of") is not None and st.session_state.get("fs_sim_url") != (
        st.query_params.get("of"),
        st.query_params.get("k"),
    ):
        st.session_state["fs_sim_url"] = (st.query_params.get("of"), st.query_params.get("k"))
        st.session_state["fs_sim_feature"] = url_int("of", 0, n - 1, 0, "a feature index")
        st.session_state["fs_sim_k"] = url_int("k", 5, 50, 15)
    st.session_state.setdefault(
        "fs_sim_feature", min(int(st.session_state.get("fs_last_feature", 0)), n - 1)
    )
    st.session_state.setdefault("fs_sim_k", 15)
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    i = c1.number_input("Feature", 0, n - 1, key="fs_sim_feature")
    k = c2.slider("Neighbours", 5, 50, key="fs_sim_k", width=300)
    with messages.shown_errors():
        near = ws.similar(int(i), k=k)
        st.query_params.update({"mode": "similar", "of": str(int(i)), "k": str(k)})
        st.session_state["fs_sim_url"] = (str(int(i)), str(k))
        st.page_link(
            links.FEATURE_PAGE,
            label=f"open feature {int(i)}",
            icon=":material/insights:",
            query_params=links.feature_params(ws, int(i)),
        )
        results.feature_table(
            ws,
            [{"feature": r["feature"], "decoder cosine": r["cosine"]} for r in near],
            key="fs_sim_table",
            columns={
                "decoder cosine": st.column_config.NumberColumn(
                    format="%.3f",
                    help="Cosine similarity of the two features' decoder directions "
                    "(not of their activations).",
                )
            },
        )

# ---- by words -----------------------------------------------------------------------------------
elif mode == "words":
    st.caption(
        "Features whose label, notes or explanations contain these words (full-text search "
        "of what people and models wrote), best match first."
    )
    if _from_url("words", "fs_words_url"):
        st.session_state["fs_words"] = st.query_params.get("words")
    with st.form("fs_words_form", border=False):
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        words = c1.text_input("Words", key="fs_words", placeholder="e.g. docstring returns")
        c2.form_submit_button("Search", type="primary", icon=":material/search:")
    if words and words.strip():
        st.query_params.update({"mode": "words", "words": words})
        st.session_state["fs_words_url"] = (ident, words)
        hits = []
        with messages.shown_errors():
            hits = words_search(ws, words)
        results.feature_table(
            ws,
            [{"feature": h.feature, "matched in": h.matched, "score": h.score} for h in hits],
            key="fs_words_table",
            columns={"score": st.column_config.NumberColumn(format="%.3f")},
        )

# ---- in the dataset ---------------------------------------------------------------------------------
elif mode == "corpus":
    st.caption(
        "Find a string or a regular expression in the loaded token set; pick an occurrence "
        "to see the features most active at its token."
    )
    if needs_model:
        _no_model("in the dataset")
        st.stop()
    corpus.corpus_panel(ws, ident)
