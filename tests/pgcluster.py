"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The server listens on 127.0.0.1 on a free port and keeps its unix socket in its own directory (never
/var/run). Used by pytest (``tests/conftest.py``) and by behave, so nothing here imports pytest.

initdb refuses to run as root, so a root process runs the server binaries as the ``postgres`` system
user and hands it the temporary directory; any other user runs them as itself.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SERVER_USER = "postgres"
_PACKAGE_HINT = "install the Debian package 'postgresql' (it provides initdb and pg_ctl)"
_PORT_TRIES = 5
_LOG_TAIL_LINES = 30


class PgClusterError(RuntimeError):
    """The throwaway cluster could not be found, started or stopped."""


def find_bindir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``, as ``pg_config --bindir`` names it."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise PgClusterError(f"PostgreSQL not found: no pg_config on PATH; {_PACKAGE_HINT}")
    try:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise PgClusterError(f"'{pg_config} --bindir' failed ({exc}); {_PACKAGE_HINT}") from exc
    bindir = Path(done.stdout.strip())
    missing = [name for name in ("initdb", "pg_ctl") if not (bindir / name).is_file()]
    if missing:
        # libpq-dev alone ships a pg_config whose bindir holds no server binaries.
        raise PgClusterError(
            f"PostgreSQL server binaries missing: no {' or '.join(missing)} in {bindir} "
            f"(from 'pg_config --bindir'); {_PACKAGE_HINT}"
        )
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class PgCluster:
    """One PostgreSQL server in a temporary directory; ``stop()`` removes every trace of it.

    ``start()``, then ``url()`` / ``create_database()``; ``restart()``, or ``stop_now()`` and
    ``start_again()``, take the server away and bring it back on the same port and data; ``stop()``
    ends it for good.
    """

    def __init__(self, *, base_dir: Path | None = None) -> None:
        self._base_dir = base_dir
        self._lock = threading.RLock()
        self._names = itertools.count(1)
        self._owner_pid = os.getpid()
        self._root: Path | None = None
        self._bindir: Path | None = None
        self._port: int | None = None
        self._as_user: dict[str, Any] = {}

    # -- paths and facts --------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        if self._root is None:
            raise PgClusterError("the cluster is not started (call start() first)")
        return self._root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise PgClusterError("the cluster is not started (call start() first)")
        return self._port

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self) -> str:
        """The last lines of the server log ('' when there is none yet)."""
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except (OSError, PgClusterError):
            return ""

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> PgCluster:
        """initdb a fresh cluster and start it on a free port of 127.0.0.1 (about 1.5 s)."""
        with self._lock:
            if self._root is not None:
                raise PgClusterError("the cluster is already started")
            bindir = find_bindir()
            self._bindir = bindir
            self._root = Path(tempfile.mkdtemp(prefix="audit-pg-", dir=self._base_dir))
            atexit.register(self._stop_at_exit)
            try:
                self._prepare_user()
                self._initdb()
                self._start_on_free_port()
            except BaseException:
                self.stop()
                raise
            return self

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``) and start it again: same port, same data."""
        with self._lock:
            self.stop_now(mode)
            self.start_again()

    def stop_now(self, mode: str = "fast") -> None:
        """Take the server down, keeping data and port for ``start_again()``.

        ``mode`` is pg_ctl's shutdown mode: 'smart', 'fast' or 'immediate' (a crash, no checkpoint).
        """
        with self._lock:
            done = self._pg_ctl("stop", "-m", mode, "-w", "-t", "20", timeout=30)
            if done.returncode != 0:
                raise PgClusterError(
                    f"pg_ctl stop -m {mode} failed: {_tail(done.stdout)}\n"
                    f"server log:\n{self.log_tail()}"
                )

    def start_again(self) -> None:
        """Start the stopped server on the port it had before."""
        with self._lock:
            done = self._pg_ctl_start(self.port)
            if done.returncode != 0:
                raise PgClusterError(
                    f"the server did not start again on port {self.port}: {_tail(done.stdout)}\n"
                    f"server log:\n{self.log_tail()}"
                )

    def stop(self) -> None:
        """Stop the server and remove its directory; idempotent, bounded in time, never raises."""
        with self._lock:
            root = self._root
            if root is None:
                return
            try:
                if (self.data_dir / "postmaster.pid").exists():
                    try:
                        done = self._pg_ctl("stop", "-m", "fast", "-w", "-t", "20", timeout=30)
                        stopped = done.returncode == 0
                    except subprocess.TimeoutExpired:
                        stopped = False
                    if not stopped:
                        self._kill_postmaster()
            finally:
                shutil.rmtree(root, ignore_errors=True)
                self._root = None
                self._port = None
                atexit.unregister(self._stop_at_exit)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- databases --------------------------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (a unique name unless given) and return its URL."""
        name = name or f"test_{next(self._names)}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any session still connected to it."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- internals --------------------------------------------------------------------------------

    def _stop_at_exit(self) -> None:
        # A forked child inherits this handler; only the process that started the server stops it.
        if os.getpid() == self._owner_pid:
            self.stop()

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            account = pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise PgClusterError(
                f"running as root, but there is no '{SERVER_USER}' system user to run initdb as; "
                f"{_PACKAGE_HINT}"
            ) from exc
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self._as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        # PG* variables from the caller's shell (PGDATA, PGPORT, ...) must not steer our cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=str(self.root), LC_ALL="C")
        try:
            return subprocess.run(
                args,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
                **self._as_user,
            )
        except OSError as exc:
            raise PgClusterError(f"could not run {args[0]}: {exc}") from exc

    def _tool(self, name: str) -> str:
        assert self._bindir is not None
        return str(self._bindir / name)

    def _initdb(self) -> None:
        args = [self._tool("initdb"), "-D", str(self.data_dir), "-U", SERVER_USER]
        args += ["--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        done = self._run(args, timeout=120)
        if done.returncode != 0:
            raise PgClusterError(f"initdb failed (exit {done.returncode}):\n{_tail(done.stdout)}")

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self._run([self._tool("pg_ctl"), "-D", str(self.data_dir), *args], timeout=timeout)

    def _pg_ctl_start(self, port: int) -> subprocess.CompletedProcess[str]:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root} "
            "-c fsync=off -c max_connections=100"
        )
        return self._pg_ctl(
            "start", "-w", "-t", "30", "-l", str(self.log_path), "-o", options, timeout=45
        )

    def _start_on_free_port(self) -> None:
        for _ in range(_PORT_TRIES):
            port = _free_port()
            done = self._pg_ctl_start(port)
            if done.returncode == 0:
                self._port = port
                return
            log = self.log_tail()
            # Another process may take the port between our probe and the server's bind: retry.
            if "could not bind" not in log and "already in use" not in log:
                break
        raise PgClusterError(
            f"the PostgreSQL server did not start: {_tail(done.stdout)}\nserver log:\n{log}"
        )

    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster named in postmaster.pid, if it is still ours, and wait for it."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        # The PID may have been reused after the server died: kill it only if it runs our data dir.
        if str(self.data_dir).encode() not in cmdline:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], 10)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
