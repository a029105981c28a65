"""Settings: environment variables read when asked, dtype names, devices, no torch at import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core import settings
from core.config import ConfigError, RunConfig
from core.engine.sweep import run_sweep
from core.memo import Memo
from core.source_guard import SourceError, validate_device


def test_environment_is_read_when_asked(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(settings.CACHE_DIR_ENV, raising=False)
    assert settings.data_dir() == settings.PROJECT_ROOT / "cache"
    assert settings.memo_dir() == settings.PROJECT_ROOT / "cache" / "memo"
    monkeypatch.setenv(settings.DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(settings.CACHE_DIR_ENV, str(tmp_path / "memo"))
    monkeypatch.setenv(settings.CACHE_SIZE_ENV, "12345678")
    assert settings.data_dir() == tmp_path / "data"
    memo = Memo()  # the memo follows the settings
    assert memo.directory == tmp_path / "memo"
    assert settings.memo_size_limit() == 12345678


def test_dtype_names_map_to_torch():
    assert [settings.torch_dtype(n) for n in settings.DTYPE_NAMES] == [
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ]


def test_importing_settings_loads_no_torch():
    code = "import sys, core.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_device_resolver_for_sources_and_the_engine():
    assert settings.resolve_device(" CPU ") == "cpu"
    assert settings.resolve_device(torch.device("cpu")) == "cpu"
    assert settings.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "cpu" in settings.available_devices()
    for bad in ("meta", "cuda:999", "gpu", "", None):
        with pytest.raises(settings.DeviceError, match="is not available on this machine"):
            settings.resolve_device(bad)
    # the sources and the engine refuse with the same message, each as its own error type
    with pytest.raises(SourceError, match="'meta' is not available on this machine"):
        validate_device("meta")
    with pytest.raises(ConfigError, match="'meta' is not available on this machine"):
        run_sweep(None, None, torch.zeros(1, 4, dtype=torch.long), RunConfig(device="meta"))  # type: ignore[arg-type]


def test_knowledge_db_url_and_author(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.DB_ENV, raising=False)
    monkeypatch.setenv(settings.DATA_DIR_ENV, str(tmp_path))
    assert settings.knowledge_db_url() == f"sqlite:///{tmp_path / 'knowledge.db'}"
    monkeypatch.setenv(settings.DB_ENV, str(tmp_path / "elsewhere.db"))
    assert settings.knowledge_db_url() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv(settings.DB_ENV, " postgresql+psycopg://u@host/db ")
    assert settings.knowledge_db_url() == "postgresql+psycopg://u@host/db"
    monkeypatch.setenv(settings.AUTHOR_ENV, " ")
    assert settings.knowledge_author() is None
    monkeypatch.setenv(settings.AUTHOR_ENV, "Ada")
    assert settings.knowledge_author() == "Ada"
