"""The throwaway PostgreSQL cluster the tests run against (tests/pgcluster.py) and its fixtures."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgcluster import PgCluster, PgClusterError

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own: the restart test must not disturb the session's server."""
    with PgCluster() as started:
        yield started


def _postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])


def test_the_server_answers_on_loopback_with_its_socket_in_its_own_directory(
    cluster: PgCluster,
) -> None:
    with psycopg.connect(cluster.url(), connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT 1, host(inet_server_addr()), inet_server_port(), current_user,"
            " current_setting('unix_socket_directories')"
        ).fetchone()
    assert row == (1, "127.0.0.1", cluster.port, "postgres", str(cluster.root))
    assert cluster.url("x") == f"postgresql://postgres@127.0.0.1:{cluster.port}/x"


def test_create_database_gives_isolated_databases(cluster: PgCluster) -> None:
    first, second = cluster.create_database(), cluster.create_database()
    assert first != second
    with psycopg.connect(first, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE only_here (n int)")
    with psycopg.connect(second, connect_timeout=5) as conn:
        assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)


def test_pg_url_is_a_fresh_empty_database_of_its_own(pg_url: str, pg_cluster: PgCluster) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/")
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        name, tables = conn.execute(
            "SELECT current_database(),"
            " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
        ).fetchone() or (None, None)
    assert (name, tables) == (pg_url.rsplit("/", 1)[1], 0)
    assert name != "postgres"


@pytest.mark.parametrize("take_down", ["restart", "immediate stop, start again"])
def test_the_server_comes_back_on_the_same_port_with_its_data(
    cluster: PgCluster, take_down: str
) -> None:
    url, port = cluster.create_database(), cluster.port
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    if take_down == "restart":
        cluster.restart()
    else:
        cluster.stop_now("immediate")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5)
        cluster.start_again()
    assert cluster.port == port
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]


@pytest.mark.parametrize("pg_ctl_stop_works", [True, False], ids=["pg_ctl", "sigkill"])
def test_stop_ends_the_server_and_removes_its_directory(
    monkeypatch: pytest.MonkeyPatch, pg_ctl_stop_works: bool
) -> None:
    cluster = PgCluster().start()
    try:
        url, root, pidfd = cluster.url(), cluster.root, os.pidfd_open(_postmaster_pid(cluster))
        if not pg_ctl_stop_works:
            # A pg_ctl that cannot stop the server: stop() must kill the postmaster itself.
            failed = subprocess.CompletedProcess(args=[], returncode=1, stdout="refused")
            monkeypatch.setattr(cluster, "_pg_ctl", lambda *args, timeout: failed)
        cluster.stop()
    finally:
        cluster.stop()
    try:
        # The postmaster has exited (its pidfd is readable) by the time stop() returns.
        assert select.select([pidfd], [], [], 0)[0] == [pidfd]
    finally:
        os.close(pidfd)
    assert not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    cluster.stop()  # idempotent


def test_no_pg_config_is_a_clear_error_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PgClusterError, match="install the Debian package 'postgresql'"):
        PgCluster(base_dir=tmp_path).start()
    assert list(tmp_path.iterdir()) == []


def test_a_bindir_without_server_binaries_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # libpq-dev's own pg_config names a bindir that holds no initdb.
    pg_config = tmp_path / "pg_config"
    pg_config.write_text(f"#!/bin/sh\necho {tmp_path}\n")
    pg_config.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(PgClusterError) as raised:
        PgCluster(base_dir=tmp_path).start()
    assert str(raised.value) == (
        f"PostgreSQL server binaries missing: no initdb or pg_ctl in {tmp_path} "
        "(from 'pg_config --bindir'); install the Debian package 'postgresql' "
        "(it provides initdb and pg_ctl)"
    )


def test_the_module_imports_without_pytest_so_behave_can_use_it() -> None:
    code = "import sys, pgcluster; sys.exit('pytest' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
    assert done.returncode == 0
