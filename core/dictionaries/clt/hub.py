"""Where a CLT's files are: a local directory, or a Hugging Face repo fetched for one layer.

A string that is not an existing path and looks like ``org/name[/sub/folder]`` is fetched
with :func:`huggingface_hub.snapshot_download`, downloading only config files and what the
chosen layer needs into the local Hugging Face cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import snapshot_download

from core.dictionaries.protocol import DictionaryError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")


def resolve_root(
    path_or_repo: str | Path, layer: int, weights_file: str | None
) -> tuple[Path, str | None]:
    """Local directory for ``path_or_repo`` (downloading a hub repo when needed)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        return path, None
    spec = str(path_or_repo)
    if isinstance(path_or_repo, Path) or not _REPO_ID.match(spec) or spec.startswith("."):
        raise DictionaryError(
            f"CLT path {spec!r} does not exist: check the path, or give a Hugging Face repo id "
            "like 'org/name'"
        )
    return fetch_from_hub(spec, layer, weights_file), spec


def fetch_from_hub(spec: str, layer: int, weights_file: str | None) -> Path:
    """Download what layer ``layer`` needs from the hub repo ``org/name[/subfolder]``."""
    parts = spec.split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    prefix = f"{sub}/" if sub else ""

    def fetch(patterns: list[str]) -> Path:
        try:
            root = snapshot_download(repo_id, allow_patterns=[prefix + p for p in patterns])
        except Exception as exc:  # network, auth, missing repo, offline mode
            raise DictionaryError(
                f"{spec!r} is not a local directory and could not be fetched from the Hugging "
                f"Face Hub as repo {repo_id!r}: {exc}. Check the path or repo id (and network / "
                "HF_HUB_OFFLINE), or download the CLT and pass its directory"
            ) from exc
        return Path(root) / sub if sub else Path(root)

    # configs plus this layer's circuit-tracer files: enough to tell the layouts apart
    small = ["*.json", "*.yaml", "*.yml"]
    root = fetch([*small, f"W_enc_{layer}.safetensors", f"W_dec_{layer}.safetensors"])
    if (root / f"W_enc_{layer}.safetensors").exists() or not (root / "cfg.json").exists():
        return root
    weights = [weights_file] if weights_file else ["*.safetensors", "*.pt", "*.pth"]
    return fetch([*small, *weights])
