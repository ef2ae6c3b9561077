"""Training throughput of the sequence model on the CPU or a GPU, read next to what it learns.

    python -m benchmarks.train_throughput --data taobao --batch-sizes 32,256,1024
    python -m benchmarks.train_throughput --data simulator --sim-events 2000000 --batch-sizes 1024,4096

For each batch size it trains ``SeqConfig(batch_size=B, max_epochs=E, patience=E)`` (no early stop,
so every run trains ``E`` epochs; ``--set FIELD=VALUE`` overrides other fields) and reports:

* ``train_events_per_s``: ``train()``'s figure, target events per second of forward + backward +
  optimiser step over all epochs (each event is a target once per epoch: for the GRU in its chunk
  of the user's history, for the transformer in one window);
* ``steady_events_per_s``: the median of the per-epoch figures after the first epoch (which pays
  for CUDA's start, cuDNN plans, the allocator's first blocks and the CUDA graph's capture);
* the validation intent ROC AUC and next-category HR@10 of the best epoch (time split: the last
  20% of the time range), so a batch size's speed is read beside what it does to quality.

A batch size of 0 is the device's default (32 on the CPU, 256 on a GPU). On a GPU, ``--eager``
launches every kernel from Python instead of replaying the step as a CUDA graph.

Data: ``taobao`` is the two files of complete 9-day Taobao histories in ``--data-dir`` (584 users,
61k events); ``simulator`` is ``--sim-events`` events of the shop simulator (``--sim-users``
active shoppers), for epochs long enough to time a GPU in steady state. Read quality on the real
data: the simulator's categories are few and easy to predict. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.sequence_arch import DEFAULT_DIR, FILES, load_taobao
from models.events import Event, parse_event
from models.sequence.config import SeqConfig
from models.sequence.data import time_split
from models.sequence.train import pick_device, train
from models.training import seq_config_with


def taobao_events(data_dir: Path) -> list[Event]:
    """The complete 9-day Taobao histories: the files the architecture benchmark trains on."""
    return [e for name in FILES for e in load_taobao(data_dir / name)]


def simulator_events(n: int, users: int, seed: int = 0) -> list[Event]:
    from stream.logic.simulator import ShopperSimulator

    return [parse_event(raw) for raw in ShopperSimulator(seed=seed, users=users).take(n)]


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _num(v: float) -> float | None:
    return None if v != v else round(v, 4)  # NaN (no labels of a kind) is not JSON


def run(events: list[Event], cfg: SeqConfig, device: str | None, split, cuda_graph: bool = True) -> dict:
    t = time.perf_counter()
    res = train(events, cfg, device=device, log=None, split=split, cuda_graph=cuda_graph)
    wall = time.perf_counter() - t
    hist = res.metrics["history"]
    per_epoch = [h["train_events_per_s"] for h in hist]
    val = res.metrics["val"]
    return {
        "batch_size": res.config.batch_size,
        "step": res.metrics["step"],
        "lr": cfg.lr,
        "epochs": res.metrics["epochs"],
        "train_targets_per_epoch": res.metrics["train_targets"],
        "train_events_per_s": round(res.train_events_per_s),
        "steady_events_per_s": round(statistics.median(per_epoch[1:])) if len(per_epoch) > 1 else None,
        "best_epoch": res.metrics["best_epoch"],
        "val_intent_auc": _num(val["intent_auc"]),
        "val_hr@10": _num(val["hr@10"]),
        "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("taobao", "simulator"), default="taobao")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--sim-events", type=int, default=1_000_000)
    ap.add_argument("--sim-users", type=int, default=3_000)
    ap.add_argument("--batch-sizes", default="32,256,1024")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    ap.add_argument("--eager", action="store_true", help="on a GPU, launch every kernel from Python (no CUDA graph)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a SeqConfig field")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = pick_device(a.device)
    t = time.perf_counter()
    events = taobao_events(a.data_dir) if a.data == "taobao" else simulator_events(a.sim_events, a.sim_users)
    load_s = time.perf_counter() - t
    base = dataclasses.replace(seq_config_with(a.set), max_epochs=a.epochs, patience=a.epochs)
    out: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "device": device_name(dev),
        "torch": torch.__version__,
        "data": a.data,
        "events": len(events),
        "load_s": round(load_s, 1),
        "config": {k: v for k, v in base.to_dict().items() if k in ("arch", "d_model", "max_len", "lr")},
        "runs": [],
    }
    t = time.perf_counter()
    split = time_split(events, base)  # the windows do not depend on the batch size: built once
    out["windows_s"] = round(time.perf_counter() - t, 1)
    for bs in (int(x) for x in a.batch_sizes.split(",")):
        r = run(events, dataclasses.replace(base, batch_size=bs), a.device, split, cuda_graph=not a.eager)
        out["runs"].append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
