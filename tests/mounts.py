"""Real tmpfs mounts for tests of read-only and full disks (the tests run as root, where a
chmod stops nothing). Every helper skips the test, with the reason, where mounting is not
permitted."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str = "4m") -> None:
    """Mount an empty tmpfs of ``size`` at ``path`` (created)."""
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    got = subprocess.run(cmd, capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip() or got.returncode})")


def remount(path: Path, options: str) -> None:
    """``mount -o remount,OPTIONS`` (``ro``, ``size=550k``...)."""
    got = subprocess.run(
        ["mount", "-o", f"remount,{options}", str(path)], capture_output=True, text=True
    )
    if got.returncode != 0:
        pytest.skip(f"cannot remount {options} here ({got.stderr.strip()})")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs at ``path`` for the block, unmounted afterwards."""
    mount_tmpfs(path, size)
    try:
        yield path
    finally:
        unmount(path)


@contextlib.contextmanager
def read_only_copy(src: Path, path: Path) -> Iterator[Path]:
    """``src`` copied onto a tmpfs at ``path`` that is then remounted read-only."""
    import shutil

    with tmpfs(path, size="64m"):
        shutil.copytree(src, path / src.name)
        remount(path, "ro")
        with pytest.raises(OSError, match="Read-only"):
            (path / src.name / "probe").write_bytes(b"x")
        yield path / src.name
