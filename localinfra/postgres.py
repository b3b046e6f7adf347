"""A private PostgreSQL cluster from Debian's packages, on 127.0.0.1, in the state directory."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localinfra.process import InfraError, port_open, require_free, run_quiet, wait_until

SUPERUSER = "loyalty"
SERVICE_USER = "loyalty-pg"
# The local cluster shares a small machine with the broker and the command path. At the default
# pace (2 ms), an automatic ANALYZE of the projector's 585,000-row events table took 40% of a core
# for a second, and purchases at 200/s waited up to 426 ms in the processor instead of 150; at
# 10 ms the same 0.5 s of CPU is spread over 4 s.
AUTOVACUUM_PACE = "-c autovacuum_vacuum_cost_delay=10ms"


@dataclass(frozen=True)
class PostgresNode:
    home: Path
    port: int
    database: str = "loyalty"

    @classmethod
    def in_state_dir(cls, state_dir: Path, port: int, database: str = "loyalty") -> PostgresNode:
        """The cluster lives in the state directory, unless the service user cannot reach it.

        As root, postgres runs as an unprivileged user; a state directory under a private home
        (such as /root) is out of its reach, so the cluster then lives under /var/tmp and the
        state directory holds a link to it.
        """
        home = state_dir / "postgres"
        if home.is_symlink():
            return cls(home=home.resolve(), port=port, database=database)
        owner = _service_user()
        if owner is not None and not home.exists() and not _reachable(owner, state_dir):
            digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
            target = Path("/var/tmp") / f"loyalty-postgres-{digest}"
            target.mkdir(parents=True, exist_ok=True)
            state_dir.mkdir(parents=True, exist_ok=True)
            home.symlink_to(target)
            # Postgres is given the real path: the link itself sits where it cannot look.
            return cls(home=target, port=port, database=database)
        return cls(home=home, port=port, database=database)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        ctl = _bindir() / "pg_ctl"
        return self._run([str(ctl), "status", "-D", str(self.data)]).returncode == 0

    def status(self) -> str:
        if not self.running():
            return "postgres: stopped"
        state = "ready" if port_open(self.port) else "starting"
        return f"postgres: {state} on 127.0.0.1:{self.port}"

    def up(self) -> None:
        bindir = _bindir(install=True)
        if self.running():
            self._require_own_port()
        else:
            require_free(self.port, "PostgreSQL", "LOYALTY_LOCAL_PG_PORT")
            self._init(bindir)
            sockets = self.home / "sockets"
            run_quiet(
                self._as_owner(
                    [
                        str(bindir / "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        "60",
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log_file),
                        "-o",
                        f"-h 127.0.0.1 -p {self.port} -k {sockets} {AUTOVACUUM_PACE}",
                    ]
                ),
                self.home / "pg_ctl.log",
                "starting PostgreSQL",
            )
        wait_until(lambda: port_open(self.port), 60, "PostgreSQL", self.log_file)
        self._create_database()

    def _require_own_port(self) -> None:
        try:
            running_port = int((self.data / "postmaster.pid").read_text().splitlines()[3])
        except (FileNotFoundError, IndexError, ValueError):
            return
        if running_port != self.port:
            raise InfraError(
                f"the PostgreSQL cluster in {self.data} is already running on port {running_port}, "
                f"not {self.port}: stop it first (loyalty infra down) "
                f"or set LOYALTY_LOCAL_PG_PORT={running_port}"
            )

    def down(self) -> None:
        if self.running():
            run_quiet(
                self._as_owner([str(_bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)]),
                self.home / "pg_ctl.log",
                "stopping PostgreSQL",
            )

    def _init(self, bindir: Path) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "sockets").mkdir(exist_ok=True)
        owner = _service_user()
        if owner is not None:
            for path in (self.home, self.home / "sockets"):
                shutil.chown(path, owner, owner)
            self.log_file.touch()
            shutil.chown(self.log_file, owner, owner)
        run_quiet(
            self._as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            ),
            self.home / "initdb.log",
            "initdb",
        )

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def _as_owner(self, cmd: list[str]) -> list[str]:
        owner = _service_user()
        return cmd if owner is None else ["runuser", "-u", owner, "--", *cmd]

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self._as_owner(cmd), capture_output=True, stdin=subprocess.DEVNULL)


def _bindir(install: bool = False) -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    if found:
        return Path(found[0]).parent
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
            subprocess.run(
                cmd,
                check=True,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        return _bindir()
    raise InfraError(
        "PostgreSQL server binaries were not found under /usr/lib/postgresql: install them "
        "(as root: apt-get install -y postgresql) or set LOYALTY_DATABASE_URL."
    )


def _major(path: str) -> int:
    return int(Path(path).parent.parent.name.split(".")[0])


def _service_user() -> str | None:
    """initdb and postgres refuse root: as root, run them as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    return SERVICE_USER


def _reachable(user: str, path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return (
        subprocess.run(
            ["runuser", "-u", user, "--", "test", "-x", str(probe)], stdin=subprocess.DEVNULL
        ).returncode
        == 0
    )
