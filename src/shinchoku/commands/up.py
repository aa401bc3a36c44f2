"""`shinchoku up`: run the whole platform on this machine (nats-server, catalog, ingest, reporting) until Ctrl-C."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shinchoku.issuer import EmbeddedIssuer, IssuerNotFound, default_subject, principal_named
from shinchoku.launch import NATS, SERVICES, ConfigurationError, Launch, StackSettings, plan_launch
from shinchoku.stack import Stack
from shinchoku.supervisor import (
    AlreadyRunning,
    DirectoryLock,
    StartupFailed,
    Supervisor,
    clear_stale,
    stop_on_signals,
)
from shinchoku_runtime.auth.settings import EMBEDDED_ISSUER

console = Console(stderr=True, highlight=False)

#: What each supervised process's command line contains (so a recycled pid is never taken for ours).
STALE_MARKERS = {NATS: "nats-server", **{name: f"-m {name}" for name in SERVICES}}


def _process_age() -> float:
    """Seconds since this process started (interpreter start-up included), from /proc; 0 when unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        start_ticks = int(fields[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class _EventLog:
    """Supervisor events: to the terminal and to DIR/logs/up.log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        console.print(f"[dim]{stamp}[/] {message}", soft_wrap=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{stamp} {Text.from_markup(message).plain}\n")


#: How long the banner's dashboard link signs the local user in.
DASHBOARD_LINK_TTL = timedelta(hours=8)


def dashboard_link(stack: Stack) -> str | None:
    """The dashboard's sign-in link for the person who ran `up` (the secretariat, as Jupyter prints its token
    URL): the token rides in the fragment, which the browser keeps to itself (no server log, no Referer); the
    sign-in page's script posts it. None when the stack trusts another identity provider."""
    if stack.auth_issuer not in (None, EMBEDDED_ISSUER):
        return None
    try:
        issuer = EmbeddedIssuer.load(stack.data_dir)
    except IssuerNotFound:
        return None
    token = issuer.mint(principal_named("secretariat", default_subject()), ttl=DASHBOARD_LINK_TTL)
    return f"{str(stack.http['reporting']).rstrip('/')}/dashboard/signin#token={token}"


def _banner(launch: Launch, ready_in: float, data_dir_option: Path | None) -> Panel:
    stack = launch.stack
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("catalog", f"{stack.http['catalog']}/measures   [dim](API docs: /docs)[/]")
    table.add_row("ingest", f"{stack.http['ingest']}/rejections")
    table.add_row("reporting", f"{stack.http['reporting']}/   [dim](rollups: /rollups/FY/Q)[/]")
    nats = stack.nats_plain_url + ("  [dim](external)[/]" if stack.external_nats_url else "  [dim](JetStream)[/]")
    table.add_row("NATS", nats)
    table.add_row(
        "transport", "[yellow]loopback only, no TLS[/]   [dim](one machine; a deployment: deploy/OPERATIONS.md)[/]"
    )
    table.add_row("data", f"{stack.data_dir}   [dim](logs/, run/, db/, nats/)[/]")
    dd = f" --data-dir {data_dir_option}" if data_dir_option is not None else ""
    table.add_row("", "")
    table.add_row("try", f"shinchoku demo{dd}")
    table.add_row("", f"shinchoku rollup 2025 1{dd}")
    table.add_row("", f"shinchoku creds mof{dd}")
    table.add_row("", f"shinchoku token secretariat{dd}   [dim](a bearer token for the HTTP APIs)[/]")
    table.add_row("stop", "Ctrl-C (stops the services, then NATS)")
    return Panel(
        table,
        title=f"[bold green]Shinchoku is up[/] — ready in {ready_in:.1f}s",
        title_align="left",
        border_style="green",
        expand=False,
    )


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Data directory (default: $SHINCHOKU_DATA_DIR or ./var)", show_default=False),
    ] = None,
) -> None:
    """Run nats-server, catalog, ingest and reporting on this machine; restart what dies; Ctrl-C stops all."""
    started = time.monotonic() - _process_age()
    logging.basicConfig(level=logging.WARNING)
    settings = StackSettings()
    root = (data_dir or settings.data_dir).resolve()

    lock = DirectoryLock(Stack(data_dir=root).lock_path)
    try:
        lock.acquire()
    except AlreadyRunning as e:
        console.print(f"[red]A stack is already running on {root}[/] (pid {e.pid}): stop it first (Ctrl-C there).")
        raise typer.Exit(1) from None
    try:
        stack = Stack(data_dir=root)
        # Before choosing ports: a process an earlier `up` left behind would hold them.
        clear_stale(stack.run_dir, STALE_MARKERS, _EventLog(stack.log_file("up")))
        try:
            launch = plan_launch(root, settings)
        except ConfigurationError as e:
            console.print(f"[red]Cannot start:[/] {e}")
            raise typer.Exit(2) from None
        launch.stack.save()
        code = _run(launch, started, data_dir)
    finally:
        lock.release()
    if code:
        raise typer.Exit(code)


def _run(launch: Launch, started: float, data_dir_option: Path | None) -> int:
    stack = launch.stack
    event_log = _EventLog(stack.log_file("up"))
    supervisor = Supervisor(launch.specs, run_dir=stack.run_dir, logs_dir=stack.logs_dir, log=event_log)
    with stop_on_signals(supervisor.stopping):
        try:
            event_log(f"starting Shinchoku on {stack.data_dir}")
            if launch.nats is not None:
                supervisor.start([NATS])
                supervisor.wait_ready([NATS], timeout=20.0)
            elif launch.declare_streams is not None:
                launch.declare_streams()
            if not supervisor.stopping.is_set():
                supervisor.start(SERVICES)
                timeout = StackSettings().startup_timeout
                supervisor.wait_ready(SERVICES, timeout=timeout)
            if not supervisor.stopping.is_set():
                ready_in = time.monotonic() - started
                console.print(_banner(launch, ready_in, data_dir_option))
                link = dashboard_link(launch.stack)
                if link:
                    # Outside the panel, unwrapped: a terminal makes it one clickable link.
                    console.print(
                        f"[bold]dashboard[/] (signs you in as the secretariat for 8 h): {link}", soft_wrap=True
                    )
                event_log(f"all healthy in {ready_in:.1f}s: {supervisor.pids()}")
                supervisor.run()
            event_log("stopping: services first, then NATS")
            return 0
        except (StartupFailed, ConfigurationError) as e:
            event_log(f"[red]startup failed:[/] {e}")
            for name in e.names if isinstance(e, StartupFailed) else SERVICES:
                _tail(stack.log_file(name), name)
            return 1
        finally:
            supervisor.stop([list(SERVICES), [NATS] if launch.nats is not None else []])
            event_log("stopped")


def _tail(path: Path, name: str, lines: int = 8) -> None:
    if not path.exists():
        return
    text = path.read_text("utf-8", errors="replace").splitlines()[-lines:]
    if text:
        console.print(f"[bold]{name}[/] — last lines of {path}:")
        for line in text:
            console.print(f"  {line}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
