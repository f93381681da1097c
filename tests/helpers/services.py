"""Throwaway services for tests, started on 127.0.0.1 and stopped after.

PostgreSQL: a fresh cluster made with ``initdb`` in a temporary folder and run with
``pg_ctl`` as a non-root user (PostgreSQL refuses to run as root). Missing binaries
give a reason to skip, never a failure, except where a test asks otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return None


def postgres_missing() -> str | None:
    """Why a throwaway PostgreSQL cannot be started here, or None."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if pg_bin(name) is None:
            return f"PostgreSQL binary {name!r} not found (install Debian's postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'fergi[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    return None


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@contextmanager
def throwaway_postgres():
    """Start a PostgreSQL cluster on a free port; yield its SQLAlchemy URL (psycopg 3)."""
    reason = postgres_missing()
    if reason:
        raise RuntimeError(reason)
    # As root the cluster runs as an unprivileged user that must own its folder.
    user = None
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
    root = Path(tempfile.mkdtemp(prefix="fergi-pg-"))
    data = root / "data"
    sock_dir = root / "sock"
    sock_dir.mkdir()
    if user:
        shutil.chown(root, user)
        shutil.chown(sock_dir, user)
        os.chmod(root, 0o755)
    port = free_port()
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run(
            _as_user([pg_bin("initdb"), "-D", str(data), "-U", "fergi", "--auth=trust", "-E", "UTF8",
                      "--no-sync"], user),
            check=True, capture_output=True, env=env,
        )
        opts = f"-p {port} -k {sock_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run(
            _as_user([pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"], user),
            check=True, capture_output=True, env=env,
        )
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user="fergi", dbname="postgres") as conn:
                    conn.autocommit = True
                    conn.execute("CREATE DATABASE fergi")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield f"postgresql+psycopg://fergi@127.0.0.1:{port}/fergi"
    finally:
        if data.exists():
            subprocess.run(
                _as_user([pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user),
                capture_output=True, env=env,
            )
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
