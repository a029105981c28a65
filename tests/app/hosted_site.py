"""A small hosted site on disk: allowlisted local model, dictionary and corpus under one root.

``write_site(root)`` writes a tiny GPT-2 (word-level tokenizer), a 64-feature SAELens SAE
at ``blocks.1.hook_resid_pre``, a text corpus and ``hosted.toml`` naming them; point
``$FEATURESCOPE_HOSTED`` at the returned file and the app serves exactly those (the
hosted-mode app tests and the load test use it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.app.fixtures import WORDS, make_workspace
from tests.tiny import HOOK, make_sae, write_hf_model

SITE_PROMPT = "the cat sat on a mat and the dog ran home"
#: an OIDC ``[auth]`` secrets section (never contacted: the sign-in is not completed offline)
AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "test-only-cookie-secret-0123456789abcdef",  # 40 bytes
    "client_id": "id",
    "client_secret": "secret",
    "server_metadata_url": "https://login.example/.well-known/openid-configuration",
}


def write_site(
    root: Path,
    auth_required: bool = False,
    allowed_emails: tuple[str, ...] = ("alice@lab.example",),
    allowed_domains: tuple[str, ...] = ("team.example",),
    limits: dict | None = None,
) -> Path:
    """Write the site under ``root`` (reusing the model files when present); returns the
    hosted configuration file."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    model_dir, sae_dir, corpus = root / "model", root / "sae", root / "corpus.txt"
    if not (model_dir / "config.json").exists():
        write_hf_model(model_dir, WORDS)
    if not (sae_dir / "cfg.json").exists():
        sae = make_sae("standard", 32, 64, HOOK, density=0.15, seed=3)
        with torch.no_grad():
            sae.b_enc.fill_(-0.05)
        sae.save_model(str(sae_dir))
    if not corpus.exists():
        g = torch.Generator().manual_seed(7)
        lines = [
            " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (40,), generator=g))
            for _ in range(120)
        ]
        corpus.write_text("\n".join(lines) + "\n")
    lim = {
        "max_prompt_chars": 400,
        "max_prompt_tokens": 48,
        "max_dataset_tokens": 8192,
        "max_context_length": 64,
        "max_features_per_export": 8,
        "max_features_per_job": 64,
        "max_concurrent_computations": 1,
        "max_new_tokens": 16,
        "cache_size_gb": 1.0,
    }
    lim.update(limits or {})
    conf = root / "hosted.toml"
    model = {"label": "Tiny GPT-2", "kind": "local", "path": str(model_dir), "device": "cpu"}
    toml = [
        f"path_roots = [{json.dumps(str(root))}]",
        "",
        "[auth]",
        f"required = {str(auth_required).lower()}",
        f"allowed_emails = {json.dumps(list(allowed_emails))}",
        f"allowed_domains = {json.dumps(list(allowed_domains))}",
        "",
        "[limits]",
        *(f"{k} = {json.dumps(v)}" for k, v in lim.items()),
        "",
        "[[models]]",
        *(f"{k} = {json.dumps(v)}" for k, v in model.items()),
        "",
        "[[dictionaries]]",
        'label = "Tiny SAE (64 features)"',
        'kind = "saelens_local"',
        f"path = {json.dumps(str(sae_dir))}",
        "",
        "[[datasets]]",
        'label = "Tiny corpus"',
        'kind = "local"',
        f"path = {json.dumps(str(corpus))}",
        "n_tokens = 2048",
        "context_length = 32",
        "",
    ]
    conf.write_text("\n".join(toml))
    return conf


#: file to which :func:`counted_workspace` appends a line per build
BUILDS_ENV = "FEATURESCOPE_TEST_BUILDS"


def counted_workspace():
    """The app tests' workspace (:func:`tests.app.fixtures.make_workspace`); every build
    appends a line to ``$FEATURESCOPE_TEST_BUILDS``, so a test can see rebuilds."""
    with open(os.environ[BUILDS_ENV], "a", encoding="utf-8") as f:
        f.write("built\n")
    return make_workspace()
