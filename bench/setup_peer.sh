#!/usr/bin/env bash
# Create bench/.peer-venv with SAEDashboard 0.8.0 (the benchmark peer).
#
# Idempotent: if the venv exists and already imports sae_dashboard 0.8.0 with a
# CPU torch, nothing is reinstalled.  Pass --force to rebuild from scratch.
#
# Recipe notes (why each step exists):
#   * torch is pinned to the local CPU wheel (torch==2.13.0+cpu) through a
#     constraints file; otherwise sae-dashboard -> decode-clt -> torchvision
#     would pull a CUDA build of torch.  The global pip constraint file from
#     /etc/xdg/pip/pip.conf still applies on top of ours.
#   * pyarrow is capped below 26: pyarrow 26 needs numpy 2, while
#     transformer-lens 2.17 (pulled by sae-dashboard) requires numpy < 2.
#   * torchvision is removed afterwards: the registry's torchvision wheel does
#     not match the CPU torch and breaks `import transformers`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.peer-venv"
PY="${PYTHON:-python3}"
SAED_VERSION="0.8.0"
TORCH_PIN="torch==2.13.0+cpu"

check() {
  "$VENV/bin/python" - "$SAED_VERSION" <<'PYEOF'
import sys
from importlib.metadata import version
want = sys.argv[1]
got = version("sae-dashboard")
assert got == want, f"sae-dashboard {got} != {want}"
import torch
assert not torch.version.cuda, f"CUDA torch installed: {torch.__version__}"
from sae_dashboard.sae_vis_runner import SaeVisRunner  # noqa: F401
from sae_dashboard.sae_vis_data import SaeVisConfig  # noqa: F401
import transformer_lens, transformers, sae_lens  # noqa: F401
print(f"peer venv OK: sae-dashboard {got}, torch {torch.__version__}, "
      f"transformer-lens {version('transformer-lens')}, "
      f"transformers {version('transformers')}, sae-lens {version('sae-lens')}, "
      f"datasets {version('datasets')}")
PYEOF
}

if [[ "${1:-}" == "--force" ]]; then
  rm -rf "$VENV"
fi

if [[ -x "$VENV/bin/python" ]] && check 2>/dev/null; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi

CONSTRAINTS="$VENV/peer-constraints.txt"
printf '%s\n' "$TORCH_PIN" > "$CONSTRAINTS"

PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -c "$CONSTRAINTS" "$TORCH_PIN" "sae-dashboard==$SAED_VERSION" psutil
"${PIP[@]}" install -c "$CONSTRAINTS" "pyarrow<26"
"${PIP[@]}" uninstall -y torchvision || true

check
