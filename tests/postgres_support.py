"""A real PostgreSQL server from Debian's `postgresql` package, for the journal's tests.

`start_postgres()` runs initdb and postgres in a fresh temp dir (as the `postgres` system user
when we are root: the server refuses to run as root), listening on 127.0.0.1 on a free port and on
a private Unix socket dir, with trust authentication (local test use only). The `postgres`
fixture shares one server per session; `pg_dsn` gives each test a fresh database in it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

_MISSING = (
    "PostgreSQL is not installed: the journal tests need Debian's `postgresql` package "
    "(`nox -s tests` installs it; by hand: apt-get install -y postgresql)"
)


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(_MISSING, pytrace=False)
    # The newest major version installed.
    return Path(max(found, key=lambda p: int(Path(p).parts[4]))).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One running server; `dsn` reaches its `postgres` database over TCP as user `postgres`."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh empty database; returns its DSN."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint), then remove its files."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout: float = 60.0) -> PgServer:
    """initdb + postgres in a temp dir; returns once it accepts connections.

    Raises:
        RuntimeError: initdb failed, or the server exited or did not answer within `timeout`
            (the message carries its log).
    """
    bindir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="sentinel-pg-"))
    as_user: list[str] = []
    # The server itself is started as the postgres user directly (not under runuser, which would
    # stay its parent and not pass our stop signal on).
    server_user: dict[str, object] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
        server_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    init = subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--no-sync", "-E", "UTF8", "--locale=C"],
        capture_output=True, text=True,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
    subprocess.run([*as_user, "mkdir", "-m", "700", str(sockets)], check=True)
    port = _free_port()
    with open(log, "wb") as out:
        # fsync off: the tests kill routers, never this server; durability of the server itself
        # is PostgreSQL's business, not what they check.
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
             "-h", "127.0.0.1", "-k", str(sockets), "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "max_connections=100"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
            **server_user,  # type: ignore[arg-type]
        )
    server = PgServer(root=root, port=port, process=process, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            text = log.read_text(errors="replace")[-3000:]
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"postgres exited with {process.returncode}: {text}")
        try:
            with psycopg.connect(server.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"postgres did not answer within {timeout} s") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One real PostgreSQL for the whole session, stopped at its end."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(postgres: PgServer) -> str:
    """A DSN of a fresh, empty database for one test."""
    return postgres.create_database()
