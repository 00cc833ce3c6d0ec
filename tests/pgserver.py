"""Find a PostgreSQL server for the tests, or start a throwaway one.

Order (the README's promise):
1. `LGSP_TEST_DATABASE_URL` if set;
2. a server on 127.0.0.1:5432 that answers (user `postgres`, then the current user);
3. a throwaway cluster from `initdb`/`pg_ctl` if the binaries are installed
   (as root, it runs as the `postgres` system user, since PostgreSQL refuses root);
4. otherwise fail, naming what to install.

Each test session gets its own fresh database on that server, dropped at the end.
"""
from __future__ import annotations

import getpass
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

INSTALL_HINT = ("no PostgreSQL found: set LGSP_TEST_DATABASE_URL=postgresql://user@host:port/db, run a server on "
                "127.0.0.1:5432, or install the server binaries (Debian: apt-get install postgresql) so the tests "
                "can start a throwaway cluster")


class PostgresUnavailable(RuntimeError):
    pass


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


class ThrowawayCluster:
    """initdb + pg_ctl in a temporary folder, on a free loopback port."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise PostgresUnavailable(INSTALL_HINT)
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="lgsp-pg-"))
        self.port = _free_port()
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as:
            try:
                pwd.getpwnam(self.run_as)
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run "
                                          "a throwaway cluster as; " + INSTALL_HINT) from None
            shutil.chown(self.dir, self.run_as)
        self.user = self.run_as or getpass.getuser()
        self._run([initdb, "-D", str(self.dir / "data"), "-A", "trust", "-U", self.user, "--no-sync"])
        self._run([pg_ctl, "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "start",
                   "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -F"])
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.dir / "data"), "-m", "fast", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def find_server() -> tuple[str, ThrowawayCluster | None]:
    """An admin URL of a reachable server (and the cluster to stop, if we started one)."""
    if os.environ.get("LGSP_TEST_DATABASE_URL"):
        url = os.environ["LGSP_TEST_DATABASE_URL"]
        if not _answers(url):
            raise PostgresUnavailable(f"LGSP_TEST_DATABASE_URL is set but the server does not answer")
        return url, None
    for user in ("postgres", getpass.getuser()):
        url = f"postgresql://{user}@127.0.0.1:5432/postgres"
        if _answers(url):
            return url, None
    cluster = ThrowawayCluster()
    return cluster.url, cluster


def create_database(admin_url: str) -> str:
    """A fresh, uniquely named database on the server; returns its URL."""
    name = f"lgsp_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    for _ in range(5):
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.Error:
            time.sleep(0.5)
