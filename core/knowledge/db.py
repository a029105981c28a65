"""Database engines for the knowledge store, and its migrations run to head.

SQLite (the embedded default) gets WAL mode, foreign keys, a busy timeout, and transactions
opened with ``BEGIN IMMEDIATE`` so that concurrent writers queue instead of failing half-way.
PostgreSQL goes through psycopg 3 (``postgresql://`` is read as ``postgresql+psycopg://``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from core import settings
from core.knowledge.errors import KnowledgeError

BUSY_TIMEOUT_MS = 30_000
_URL_HINT = (
    f"set {settings.DB_ENV} to a file path (SQLite) or a database URL such as "
    "sqlite:////srv/knowledge.db or postgresql+psycopg://user:password@host:5432/featurescope"
)
READ_OPTION = "knowledge_read"  # execution option of read-only transactions
_MIGRATION_LOCK = 0x6B6E6F77  # PostgreSQL advisory lock id: one migrating process at a time


def parse_url(url: str) -> URL:
    """``url`` as a SQLAlchemy URL, with ``postgresql://`` meaning psycopg 3.

    Raises:
        KnowledgeError: not a URL, or a database this store does not support.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise KnowledgeError(f"{url!r} is not a database URL: {_URL_HINT}") from None
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise KnowledgeError(
            f"database driver {parsed.drivername!r} is not supported: use "
            "postgresql+psycopg:// (psycopg 3)"
        )
    if backend not in ("sqlite", "postgresql"):
        raise KnowledgeError(f"database {backend!r} is not supported: {_URL_HINT}")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise KnowledgeError(
            "the knowledge store needs a SQLite file (several connections share it), not an "
            f"in-memory database: {_URL_HINT}"
        )
    return parsed


def make_engine(url: str | None = None) -> Engine:
    """An engine on ``url`` (default :func:`core.settings.knowledge_db_url`), configured for
    concurrent writers. A SQLite file's directory is created when missing."""
    parsed = parse_url(url or settings.knowledge_db_url())
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise KnowledgeError(f"no driver for {parsed.drivername!r} ({exc}): {_URL_HINT}") from None


def _sqlite_engine(url: URL) -> Engine:
    assert url.database is not None
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction can never
        # find that another writer got in between (SQLite's "database is locked" upgrade).
        # Reads (the store's reader engine) begin deferred: under WAL they never wait.
        read = conn.get_execution_options().get(READ_OPTION)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    return engine


def migrations_config() -> Config:
    """An Alembic configuration whose scripts are this package's ``migrations/``."""
    config = Config()
    config.set_main_option("script_location", str(files("core.knowledge") / "migrations"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` (a fresh or an old database ends up current)."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Run the migrations down to ``revision`` (``base`` drops every table of the store)."""
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    config = migrations_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
        config.attributes["connection"] = conn
        getattr(command, direction)(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, "alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
