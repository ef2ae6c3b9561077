"""The processes and topics a measurement starts, and how they are stopped and removed again."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.config import POLL_S, ROOT
from benchmarks.harness.stats import _scrape, cpu_seconds
from stream.broker import client_config
from stream.procs import die_with_parent, stop_process_group
from stream.settings import Settings

log = logging.getLogger(__name__)


async def drop_topics(settings: Settings, bootstrap: str, apps: list[str]) -> None:
    """Delete every topic of the applications ``apps`` (``<app>.<name>``, ``<app>-<name>``: their
    own, Faust's changelogs and internal topics). A broker that refuses is logged, not fatal."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(**client_config(settings, bootstrap))
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if any(t.startswith((f"{a}.", f"{a}-")) for a in apps)]
        if names:
            await admin.delete_topics(names)
    except (KafkaError, OSError) as exc:  # never hides the measurement's own result or error
        log.warning("could not delete the benchmark's topics %s: %s", apps, exc)
    finally:
        await admin.close()



@dataclass
class Child:
    """A child process in its own process group; :meth:`stop` ends the whole group."""

    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started = time.time()
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int | None:
        try:
            import psutil
        except ImportError:
            return None
        if not self.alive():
            return None
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).memory_info().rss  # type: ignore[union-attr]
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process (all its threads) so far."""
        return None if self.proc is None else cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc, self.proc = self.proc, None
        return None if proc is None else stop_process_group(proc, timeout)

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""



def _wait_ready(w: Child, port: int, timeout: float) -> float | None:
    end = time.time() + timeout
    while time.time() < end and w.alive():
        if _scrape(port, "/readyz")[0] == 200:
            return time.time() - w.started
        time.sleep(POLL_S)
    return None
