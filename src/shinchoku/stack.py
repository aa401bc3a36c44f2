"""Where a running stack lives on disk, so that every CLI verb can find it.

Layout of a data directory (default `./var`):

    stack.json              NATS address and HTTP URLs of the running stack (written by `up`)
    nats/nats.conf          generated server config (0600)
    nats/secrets.json       generated per-user passwords (0600)
    nats/jetstream/         JetStream file store
    auth/signing-key.json   the embedded issuer's private key (0600, directory 0700)
    auth/jwks.json          its public keys, which the services verify tokens with
    db/{service}.sqlite     each service's own database
    run/{name}.pid          one per supervised process (removed when it stops)
    run/up.lock             held (flock) by the running `up`; holds its pid
    logs/{name}.log         one per supervised process
    spans/{service}.jsonl   local span files when no OTLP endpoint is set
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shinchoku_runtime.natsconf import SECRETS_FILE, user_url

DEFAULT_DATA_DIR = Path(os.environ.get("SHINCHOKU_DATA_DIR", "var"))
STACK_FILE = "stack.json"
LOCK_FILE = "up.lock"


class StackNotFound(Exception):
    """No stack has been started under this data directory."""


@dataclass
class Stack:
    data_dir: Path
    nats_host: str = "127.0.0.1"
    nats_port: int = 4222
    http: dict[str, str] = field(
        default_factory=lambda: {
            "catalog": "http://127.0.0.1:8001",
            "ingest": "http://127.0.0.1:8002",
            "reporting": "http://127.0.0.1:8003",
        }
    )

    #: Set when the stack runs against an external NATS (SHINCHOKU_NATS_URL): `up` then starts no nats-server.
    external_nats_url: str | None = None
    #: The `iss` the services trust: the embedded issuer, or a deployment's identity provider.
    auth_issuer: str | None = None

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def lock_path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    @property
    def nats_plain_url(self) -> str:
        if self.external_nats_url:
            return self.external_nats_url
        return f"nats://{self.nats_host}:{self.nats_port}"

    def running_pid(self) -> int | None:
        """The pid of the `up` that holds this data directory's lock, or None when no stack runs here."""
        return running_pid(self.lock_path)

    def passwords(self) -> dict[str, str]:
        path = self.nats_dir / SECRETS_FILE
        if not path.exists():
            raise StackNotFound(f"no credentials under {self.nats_dir}: start the stack with `shinchoku up` first")
        data: dict[str, str] = json.loads(path.read_text("utf-8"))
        return data

    def password(self, user: str) -> str:
        try:
            return self.passwords()[user]
        except KeyError:
            raise StackNotFound(f"no NATS user {user!r} in {self.nats_dir / SECRETS_FILE}") from None

    def nats_url(self, user: str) -> str:
        """The NATS URL with that user's credentials."""
        if self.external_nats_url:
            first = self.external_nats_url.split(",")[0].strip()
            scheme, _, hostport = first.rpartition("://")
            return f"{scheme or 'nats'}://{user}:{self.password(user)}@{hostport.rpartition('@')[2]}"
        return user_url(self.nats_host, self.nats_port, user, self.password(user))

    def save(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in asdict(self).items() if k != "data_dir"}
        # Atomically: a CLI verb reading it meanwhile sees the old file or the new one, never half of one.
        tmp = self.data_dir / f".{STACK_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.data_dir / STACK_FILE)

    @classmethod
    def load(cls, data_dir: Path | None = None) -> Stack:
        data_dir = data_dir or DEFAULT_DATA_DIR
        path = data_dir / STACK_FILE
        if not path.exists():
            raise StackNotFound(f"no stack under {data_dir.resolve()}: run `shinchoku up` (or `make up`) first")
        body = json.loads(path.read_text("utf-8"))
        return cls(data_dir=data_dir, **body)


def running_pid(lock_path: Path) -> int | None:
    """Who holds `lock_path` (flock): its pid when a live process does, None otherwise.

    The lock is what counts (the kernel drops it when its holder dies, however it dies); the pid inside
    only names the holder.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
