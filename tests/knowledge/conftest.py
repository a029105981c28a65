"""Fixtures of the knowledge-store tests: every store test runs on SQLite and on a real
PostgreSQL server that this suite starts itself (a throwaway cluster in a temporary directory,
unix socket only, trust auth, run as an unprivileged user when the suite runs as root)."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from core.knowledge import KnowledgeStore, open_store

_INSTALL_HINT = (
    "PostgreSQL binaries (initdb, pg_ctl) not found: install them (Debian: apt install "
    "postgresql) to run the knowledge-store tests on PostgreSQL too"
)
_counter = itertools.count()


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(directory, "initdb").exists():
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster; ``database()`` gives a fresh database's URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fs-pg-"))
        self.user = None if os.geteuid() != 0 else pwd.getpwnam("nobody")
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data, self.port = self.root / "data", _free_port()
        self.migrated = "template1"  # a database at the newest schema, once started

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}&port={self.port}"

    def database(self, template: str = "template1") -> str:
        """A new database (a copy of ``template``); its URL."""
        name = f"t{next(_counter)}"
        with psycopg.connect(f"host={self.root} port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(_INSTALL_HINT)
    server = PostgresServer(bindir)
    try:
        server.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(server.root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc} {detail.decode(errors='replace')}")
    migrated = server.database()  # copied by the store tests: no migration per test
    open_store(migrated).engine.dispose()
    server.migrated = make_url(migrated).database or ""
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database's URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'knowledge.db'}"
    return request.getfixturevalue("postgres").database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[KnowledgeStore]:
    """A store on a fresh database of each backend (already migrated)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'knowledge.db'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.database(template=server.migrated)
    opened = open_store(url)
    yield opened
    opened.engine.dispose()
