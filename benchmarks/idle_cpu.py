"""CPU an idle worker uses: a worker on a local broker, ready, with no input, measured from
/proc over a stretch of wall time (the broker's own share is shown beside it).

    python -m benchmarks.idle_cpu [--seconds 30] [--warmup 10]

Prints one JSON line: the worker's and the broker's CPU in percent of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stream.broker import EmbeddedBroker, create_topics, free_port
from stream.procs import die_with_parent, stop_process_group
from stream.settings import Settings

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of ``pid`` and its waited-for children, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK  # utime, stime, cutime, cstime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=10.0, help="idle seconds after ready before measuring")
    a = p.parse_args()
    import asyncio

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker.for_settings(Settings(), Path(tmp) / "broker") as broker:
        settings = Settings(data_dir=Path(tmp) / "worker")
        asyncio.run(create_topics(settings, broker.bootstrap))
        port = free_port()
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "INTENTSTREAM_DATA_DIR": str(settings.data_dir),
               "INTENTSTREAM_WEB_PORT": str(port)}  # fmt: skip
        with open(Path(tmp) / "worker.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"worker not ready:\n{(Path(tmp) / 'worker.log').read_text()[-2000:]}")
                time.sleep(0.2)
            time.sleep(a.warmup)
            w0, b0, t0 = cpu_seconds(proc.pid), cpu_seconds(broker.process.pid), time.monotonic()
            time.sleep(a.seconds)
            w1, b1, t1 = cpu_seconds(proc.pid), cpu_seconds(broker.process.pid), time.monotonic()
        finally:
            stop_process_group(proc, 20.0)
    wall = t1 - t0
    print(json.dumps({"seconds": round(wall, 1), "worker_cpu_percent": round(100 * (w1 - w0) / wall, 2),
                      "broker_cpu_percent": round(100 * (b1 - b0) / wall, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
