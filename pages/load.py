"""Sources page: what is loaded, loading other sources, and precomputing features.

Loading builds the workspace once per process (shared by every session). Precomputing
runs in a background thread, pass by pass; each finished pass is in the memo, so the
page can be left, and a stopped run resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.config import ConfigError, parse_features, parse_positions
from core.hosted import server_devices
from core.specs import DEMO_MODEL_NAME
from pages import _auth as auth
from pages import _jobs as jobs
from pages import _links as links
from pages import _messages as messages
from pages import _sidebar as sidebar
from pages import _state as state
from pages import _ui as ui
from pages import _workspaces as workspaces

ui.inject_css()
st.markdown("## Sources")

ws = state.workspace()
src = links.sources()
load_error = st.session_state.get("fs_load_error")


@st.cache_data(show_spinner=False)
def _releases(model: str | None) -> dict[str, dict[str, Any]]:
    from core.sources import saelens_releases

    return saelens_releases(model)


@st.cache_data(show_spinner=False)
def _tl_model_names() -> list[str]:
    """TransformerLens model names: the short aliases (``gpt2-small``) and the official ones."""
    try:
        from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES
    except ImportError:
        return []
    names: dict[str, None] = {}
    for official in OFFICIAL_MODEL_NAMES:
        for alias in MODEL_ALIASES.get(official, []):
            names.setdefault(alias)
        names.setdefault(official)
    return list(names)


def _try_load(new: dict[str, Any]) -> None:
    """Load ``new`` sources; switch this session to them only when loading works."""
    try:
        new = links.canonical(new)
        with st.spinner(f"Loading {links.sources_label(new)} …", show_time=True):
            workspaces.open_workspace(new)
    except Exception as exc:
        st.error(
            f"{messages.error_message(exc)}. The loaded sources did not change.",
            icon=":material/error:",
        )
        return
    links.set_sources(new)
    state.retry_load()
    st.rerun()


# ---- what is loaded ------------------------------------------------------------------------------
if ws is not None:
    d = ws.describe()
    with st.container(border=True):
        cols = st.columns([3, 1, 1, 1])
        with cols[0]:
            st.markdown(
                "  \n".join(f"**{k}** {messages.md(v)}" for k, v in sidebar.describe_lines(ws))
            )
            st.caption(f"Workspace id `{workspaces.identity(ws)}` (it goes into links)")
        cols[1].metric("Features", f"{int(ws.n_features):,}")
        cols[2].metric("Tokens", f"{int(d.get('n_tokens', 0)):,}")
        cols[3].metric("Device", str(d.get("device", "cpu")))
        nav = st.container(horizontal=True)
        nav.page_link(
            links.FEATURE_PAGE,
            label="Open feature 0",
            icon=":material/insights:",
            query_params=links.feature_params(ws, 0),
        )
        nav.page_link(links.SEARCH_PAGE, label="Search features", icon=":material/search:")
elif load_error:
    st.error(f"Could not load {links.sources_label(src)}: {load_error}", icon=":material/error:")
    c = st.container(horizontal=True)
    if c.button("Try again", icon=":material/refresh:"):
        state.retry_load()
        st.rerun()
    if src != links.default_sources() and c.button("Back to the default", icon=":material/undo:"):
        links.set_sources(links.default_sources())
        st.rerun()

# ---- precompute ------------------------------------------------------------------------------------
if ws is not None and workspaces.is_live(ws):
    st.markdown(
        "#### Precompute features",
        help="Feature pages open instantly for precomputed features; the statistics "
        "search needs all of them.",
    )
    n = int(ws.n_features)
    job = ui.job_panel(ws)
    if job is None or not job.running:
        c1, c2, c3 = st.columns([2, 1, 2], vertical_alignment="bottom")
        which = c1.text_input(
            "Features",
            value="all",
            key="fs_pre_features",
            help="'all', a range like 0:512 (end excluded), or a list like 1,5,9",
        )
        per_pass = c2.number_input(
            "Features per pass",
            min_value=1,
            max_value=max(1, n),
            value=ui.default_per_pass(ws),
            step=256,
            key="fs_pre_per_pass",
            help="Each pass runs the model once over the whole token set: larger passes are "
            "faster overall, smaller ones are saved more often.",
        )
        indices: list[int] | None = None
        with messages.shown_errors():
            parsed = parse_features(which, n)
            indices = list(range(n)) if parsed is None else [ui.check_index(ws, i) for i in parsed]
            indices = sorted(set(indices))
        if indices:
            mem = ws.memory_estimate(min(int(per_pass), len(indices)))
            passes = -(-len(indices) // int(per_pass))
            st.caption(
                f"{len(indices):,} features in {passes} pass(es) over "
                f"{int(ws.describe().get('n_tokens', 0)):,} tokens · peak memory about "
                f"**{mem['total_mb']:,.0f} MB** (hook cache {mem['hook_cache_mb']:,.0f}, "
                f"activations {mem['activations_mb']:,.0f}, correlations "
                f"{mem['correlations_mb']:,.0f}, results {mem['per_feature_mb']:,.0f}) · "
                "features already in the cache are skipped"
            )
            if c3.button("Compute", type="primary", icon=":material/play_arrow:"):
                with messages.shown_errors():
                    jobs.start_job(ws, indices, int(per_pass), label=f"{len(indices):,} features")
                    st.rerun()

# ---- choose sources --------------------------------------------------------------------------------
st.markdown("#### Load other sources")


def _dataset_size(
    dataset: dict[str, Any], max_tokens: int, max_context: int, keys: tuple[str, str], hint: str
) -> None:
    """Token budget and context length inputs, written into ``dataset`` (its values, or
    65,536 and 128, are the starting values, capped at the maxima)."""
    c1, c2 = st.columns(2)
    dataset["n_tokens"] = int(
        c1.number_input(
            "Token budget",
            min_value=min(256, max_tokens),
            max_value=max_tokens,
            value=min(int(dataset.get("n_tokens", 65_536)), max_tokens),
            step=8192,
            key=keys[0],
            help=hint,
        )
    )
    dataset["context_length"] = int(
        c2.number_input(
            "Context length",
            min_value=2,
            max_value=max_context,
            value=min(int(dataset.get("context_length", 128)), max_context),
            step=32,
            key=keys[1],
        )
    )


def _hosted_picker(cfg: Any) -> None:
    """Hosted mode: only what the operator listed (:mod:`core.hosted`), within its limits."""
    st.caption("This server offers the models, dictionaries and datasets its operator listed.")
    picks: dict[str, dict[str, Any]] = {}
    cols = st.columns(3, gap="large")
    for col, part in zip(cols, links.PARTS, strict=True):
        choices = cfg.choices(part)
        with col:
            st.markdown(f"**{part.capitalize()}**")
            if not choices:
                st.caption("none offered")
                continue
            labels = [label for label, _ in choices]
            k = st.selectbox(
                part.capitalize(),
                range(len(choices)),
                format_func=labels.__getitem__,
                key=f"fs_h_{part}",
                label_visibility="collapsed",
            )
            picks[part] = dict(choices[k][1])
    if "dataset" in picks:
        lim = cfg.limits
        with cols[2]:
            _dataset_size(
                picks["dataset"],
                int(lim.max_dataset_tokens),
                int(lim.max_context_length),
                ("fs_h_budget", "fs_h_ctx"),
                f"At most {int(lim.max_dataset_tokens):,} tokens on this server.",
            )
    if len(picks) == len(links.PARTS) and st.button(
        "Load", type="primary", icon=":material/download:", key="fs_load_btn"
    ):
        _try_load(picks)
    if cfg.precomputed:
        st.markdown("**Precomputed outputs**")
        c = st.container(horizontal=True, vertical_alignment="bottom")
        path = c.selectbox("Output", cfg.precomputed, key="fs_h_pre")
        if c.button("Open", icon=":material/folder_open:", key="fs_pre_open"):
            _try_load({"precomputed": path})


hosted_cfg = auth.hosted()
if hosted_cfg is not None:
    _hosted_picker(hosted_cfg)
    st.stop()

tab_specs, tab_pre = st.tabs(["Model, dictionary, dataset", "Precomputed output"])
with tab_specs:
    cm, cd, ct = st.columns(3, gap="large")
    with cm:
        st.markdown("**Model**")
        m_kind = st.radio(
            "Model source",
            ["demo", "hub", "local"],
            format_func={
                "demo": "Demo: SmolLM2-135M (offline)",
                "hub": "TransformerLens name",
                "local": "Local Hugging Face directory",
            }.__getitem__,
            key="fs_m_kind",
            label_visibility="collapsed",
        )
        model: dict[str, Any] = {"kind": m_kind}
        if m_kind == "hub":
            names = _tl_model_names()
            model["name"] = st.selectbox(
                "Model name",
                names,
                index=names.index("gpt2-small") if "gpt2-small" in names else None,
                accept_new_options=True,
                key="fs_m_name",
                help="Downloaded by TransformerLens (needs the network the first time).",
            )
        elif m_kind == "local":
            model["path"] = st.text_input(
                "Directory",
                key="fs_m_path",
                placeholder="/path/to/model (config.json, weights, tokenizer)",
            )
        with st.expander("Device and precision"):
            model["device"] = st.selectbox(
                "Device", server_devices(), key="fs_m_dev", help="The devices this server has."
            )
            model["dtype"] = st.selectbox(
                "dtype", ["float32", "bfloat16", "float16"], key="fs_m_dtype"
            )
    with cd:
        st.markdown("**Dictionary**")
        d_kind = st.radio(
            "Dictionary source",
            ["demo", "saelens", "saelens_local", "clt", "directions"],
            format_func={
                "demo": "Demo TopK SAE",
                "saelens": "SAELens release",
                "saelens_local": "Local SAELens directory",
                "clt": "Local cross-layer transcoder",
                "directions": "Directions file (probes, steering vectors)",
            }.__getitem__,
            key="fs_d_kind",
            label_visibility="collapsed",
        )
        dictionary: dict[str, Any] = {"kind": d_kind}
        if d_kind == "saelens":
            # only the releases made for the chosen model: another model's would be refused
            # at load (checked offline, before any download)
            model_name = {"hub": model.get("name"), "demo": DEMO_MODEL_NAME}.get(m_kind)
            n_all = len(_releases(None))
            releases = _releases(model_name) if model_name else _releases(None)
            if model_name and not releases:
                st.caption(
                    f"None of the {n_all} SAELens releases is for {model_name}. Pick a model "
                    "that has releases (e.g. gpt2-small, gemma-2-2b), or load a local dictionary."
                )
            elif model_name:
                st.caption(f"{len(releases)} of {n_all} SAELens releases are for {model_name}.")
            else:
                st.caption(
                    "A local model's name is read when it loads: a release for another model "
                    "is refused then, before anything is downloaded."
                )
            rel = st.selectbox(
                "Release",
                list(releases),
                format_func=lambda r: f"{r} ({releases[r]['model']})",
                key="fs_d_release",
                index=0 if releases else None,
            )
            dictionary["release"] = rel
            if rel:
                dictionary["sae_id"] = st.selectbox(
                    "SAE id", releases[rel]["ids"], key="fs_d_sae_id"
                )
        elif d_kind == "directions":
            dictionary["path"] = st.text_input(
                "Directions file",
                key="fs_d_path",
                placeholder="/path/vecs.safetensors ([n, d] 'directions', hook_name metadata)",
            )
        elif d_kind in ("saelens_local", "clt"):
            dictionary["path"] = st.text_input(
                "Directory",
                key="fs_d_path",
                placeholder="/path/to/sae (cfg.json + sae_weights.safetensors)"
                if d_kind == "saelens_local"
                else "/path/to/clt or a Hugging Face repo id",
            )
            if d_kind == "clt":
                dictionary["layer"] = int(
                    st.number_input("Layer", min_value=0, value=0, step=1, key="fs_d_layer")
                )
                wf = st.text_input("Weights file (optional)", key="fs_d_weights")
                dictionary["weights_file"] = wf or None
    with ct:
        st.markdown("**Dataset**")
        t_kind = st.radio(
            "Dataset source",
            ["demo", "hub", "local"],
            format_func={
                "demo": "Demo: Python stdlib docs",
                "hub": "Hugging Face dataset",
                "local": "Local file (.txt, .jsonl, .parquet)",
            }.__getitem__,
            key="fs_t_kind",
            label_visibility="collapsed",
        )
        dataset: dict[str, Any] = {"kind": t_kind}
        if t_kind == "hub":
            dataset["path"] = st.text_input(
                "Dataset path", key="fs_t_path", placeholder="e.g. NeelNanda/pile-10k"
            )
            c1, c2 = st.columns(2)
            dataset["split"] = c1.text_input("Split", value="train", key="fs_t_split")
            dataset["name"] = c2.text_input("Configuration", key="fs_t_name") or None
        elif t_kind == "local":
            dataset["path"] = st.text_input(
                "File or directory", key="fs_t_path_local", placeholder="/path/to/texts.jsonl"
            )
        if t_kind != "demo":
            dataset["text_column"] = (
                st.text_input("Text column", key="fs_t_col", placeholder="detected") or None
            )
        _dataset_size(
            dataset,
            200_000_000,
            65_536,
            ("fs_t_budget", "fs_t_ctx"),
            "Tokens swept for every feature: more tokens, better statistics, slower passes.",
        )
        with st.expander("Advanced: text around every document"):
            dataset["prefix"] = st.text_input(
                "Prefix",
                key="fs_t_prefix",
                placeholder="e.g. <|im_start|>user\n",
                help="Put before every document (a chat template's turn start); part of the "
                "token set's identity.",
            )
            dataset["suffix"] = st.text_input(
                "Suffix",
                key="fs_t_suffix",
                placeholder="e.g. <|im_end|>",
                help="Put after every document, before the separator.",
            )
    new = {"model": model, "dictionary": dictionary, "dataset": dataset}
    run_src = src.get("run", {})
    with st.expander("Advanced: examples per feature, tokens to ignore"):
        n_top = st.number_input(
            "Top examples per feature",
            1,
            1000,
            value=int(run_src.get("n_top_examples", 20)),
            key="fs_run_top",
            help="How many top-activating examples (one per sequence) each feature keeps; "
            "the Feature page shows 20 at a time. Part of the results' identity: other "
            "features computed with another number are computed again.",
        )
        positions = st.text_input(
            "Ignore positions",
            value=",".join(str(p) for p in run_src.get("ignore_positions") or []),
            key="fs_run_positions",
            placeholder="e.g. 0 or 0,1 or 0:4",
            help="Positions within every sequence that are never examples nor counted "
            "(e.g. a chat template's first tokens). Part of the results' identity.",
        )
        ratio = st.number_input(
            "Ignore tokens whose activation norm exceeds this multiple of the median",
            0.0,
            value=float(run_src.get("max_norm_ratio") or 0.0),
            key="fs_run_ratio",
            help="Attention sinks (Qwen, Gemma) have hook activations many times larger "
            "than other tokens; 0 keeps every token. The median is taken over the first 64 "
            "sequences (README, 'The engine'). Part of the results' identity.",
        )
    run: dict[str, Any] = {}
    if int(n_top) != 20:
        run["n_top_examples"] = int(n_top)
    try:
        ignored = parse_positions(positions)
    except ConfigError as exc:
        st.error(str(exc))
        ignored = None
    if ignored:
        run["ignore_positions"] = ignored
    if ratio > 0:
        run["max_norm_ratio"] = float(ratio)
    if run:
        new["run"] = run
    b = st.container(horizontal=True)
    if b.button("Load", type="primary", icon=":material/download:", key="fs_load_btn"):
        _try_load(new)
    if src != links.default_sources() and b.button(
        "Back to the default", icon=":material/undo:", key="fs_default_btn"
    ):
        _try_load(links.default_sources())
    st.caption(
        "Models, dictionaries and token sets load once per server process and are shared "
        "by every session; computed features are kept on disk, so nothing is computed twice."
    )

with tab_pre:
    path = st.text_input(
        "Output directory",
        key="fs_pre_path",
        placeholder="/path/to/run (written by the batch runner)",
    )
    if st.button("Open", icon=":material/folder_open:", key="fs_pre_open"):
        _try_load({"precomputed": path})
