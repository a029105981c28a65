"""Database setup: migrations up and down, FEATURESCOPE_DB forms, bad URLs, SQLite settings,
and 8 concurrent writers on one feature losing nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time

import pytest
from alembic import command
from sqlalchemy import inspect, text

from core import settings
from core.knowledge import KnowledgeError, default_author, open_store
from core.knowledge.db import (
    current_revision,
    downgrade,
    make_engine,
    migrations_config,
    parse_url,
    upgrade,
)

DK = "d" * 64
TABLES = {
    "annotations",
    "annotation_history",
    "dictionaries",
    "lists",
    "list_entries",
    "explanations",
}


def test_migrations_up_and_down(db_url):
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == "0001"
    assert set(inspect(engine).get_table_names()) >= TABLES
    upgrade(engine)  # already current: nothing to do
    downgrade(engine, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    store = open_store(db_url)  # an empty (or old) database ends up current
    store.set_label(DK, 1, "back", author="a")
    assert store.search("back")[0].feature == 1
    engine.dispose()
    store.engine.dispose()


def test_sqlite_is_set_up_for_concurrency(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'k.db'}")  # the folder is created
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


def test_featurescope_db_path_and_url(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.DB_ENV, raising=False)
    monkeypatch.setenv(settings.DATA_DIR_ENV, str(tmp_path / "data"))
    assert settings.knowledge_db_url() == f"sqlite:///{tmp_path / 'data' / 'knowledge.db'}"
    monkeypatch.setenv(settings.DB_ENV, str(tmp_path / "team.db"))
    open_store().set_label(DK, 1, "by path", author="a")
    assert (tmp_path / "team.db").exists()
    monkeypatch.setenv(settings.DB_ENV, f"sqlite:///{tmp_path / 'team.db'}")
    assert open_store().labels(DK, [1]) == {1: "by path"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(settings.DB_ENV, "relative.db")
    assert settings.knowledge_db_url() == f"sqlite:///{tmp_path / 'relative.db'}"


def test_postgresql_url_means_psycopg3():
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert parse_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url://", "not a database URL: set FEATURESCOPE_DB"),
        ("mysql://u@h/db", "'mysql' is not supported: set FEATURESCOPE_DB"),
        ("postgresql+psycopg2://u@h/db", "use postgresql\\+psycopg://"),
        ("sqlite://", "not an in-memory database"),
    ],
)
def test_bad_url_names_the_fix(url, match):
    with pytest.raises(KnowledgeError, match=match):
        open_store(url)


def test_default_author(monkeypatch):
    monkeypatch.setenv(settings.AUTHOR_ENV, "  Ada  ")
    assert default_author() == "Ada"
    monkeypatch.delenv(settings.AUTHOR_ENV)
    assert default_author()  # the OS user


def test_eight_concurrent_writers_lose_nothing(db_url):
    open_store(db_url).engine.dispose()  # migrated once; each writer opens its own engine
    writers, edits = 8, 5
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            store = open_store(db_url)
            barrier.wait()
            for i in range(edits):
                if i % 2:
                    store.set_notes(DK, 1, f"notes {w}.{i}", author=f"w{w}")
                else:
                    store.set_label(DK, 1, f"label {w}.{i}", author=f"w{w}")
            store.engine.dispose()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    store = open_store(db_url)
    history = store.history(DK, 1)
    assert [h.version for h in history] == list(range(1, writers * edits + 1))
    assert sum(h.action == "create" for h in history) == 1
    made = {(h.author, v) for h in history for v in h.after.values() if isinstance(v, str)}
    expected = {
        (f"w{w}", f"{'notes' if i % 2 else 'label'} {w}.{i}")
        for w in range(writers)
        for i in range(edits)
    }
    assert made == expected  # every edit is in the history
    latest = store.annotation(DK, 1)
    last_label = next(h.after["label"] for h in reversed(history) if "label" in h.after)
    last_notes = next(h.after["notes"] for h in reversed(history) if "notes" in h.after)
    assert (latest.label, latest.notes, latest.version) == (last_label, last_notes, writers * edits)
    # each edit's "before" is the previous edit's "after": nothing was overwritten unseen
    state = {"label": "", "notes": ""}
    for h in history:
        assert {k: state[k] for k in h.before if k in state} == {
            k: v for k, v in h.before.items() if k in state
        }
        state.update({k: v for k, v in h.after.items() if k in state})
    store.engine.dispose()


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    store.set_label(DK, 1, "first", author="a")
    with store.engine.connect() as writer:
        writer.begin()  # BEGIN IMMEDIATE: holds the write lock
        writer.execute(text("UPDATE annotations SET label = 'uncommitted'"))
        started = time.monotonic()
        assert store.labels(DK, [1]) == {1: "first"}  # WAL snapshot, no waiting
        assert time.monotonic() - started < 5
        writer.rollback()


def test_alembic_from_the_command_line_config(db_url):
    """What ``alembic -x ... upgrade head`` runs: env.py opening sqlalchemy.url itself."""
    config = migrations_config()
    config.set_main_option("sqlalchemy.url", db_url)
    command.upgrade(config, "head")
    engine = make_engine(db_url)
    assert current_revision(engine) == "0001"
    command.downgrade(config, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    engine.dispose()
