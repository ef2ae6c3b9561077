"""``intentstream evaluate``: the argument parsing and data loading around
:func:`models.evaluation.evaluate` (which holds the protocol; see docs/EVALUATION.md), to which it
hands the worker's own pipeline step as the replay (:mod:`stream.logic.replay`).

How the train and test parts are formed:

* ``--train A [--train B] --test C``: the files as given (a later time range, or other users).
* ``--train A [--train B] --split-users 0.25``: one data set split by user: the users with
  ``stable_hash(user) % 4 == 0`` are the test part (the held-back users of docs/SEQUENCE.md).
* churn: one history and a cut-off (``--cutoff YYYY-MM-DD``, default the end of the data minus
  the horizon). ``--test`` may name the same file as ``--train`` or be left out: the events up to
  the end of the cut-off day train, the horizon after it is the truth.

Heavy imports (torch, River) happen in :func:`run`, so ``intentstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """``30m``, ``2h``, ``90d``, ``500ms`` -> milliseconds.

    >>> duration_ms("30m"), duration_ms("90d")
    (1800000, 7776000000)
    """
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 2h or 90d")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=["intent", "churn", "latent"])
    p.add_argument("--format", required=True, help="taobao | cdnow | yoochoose | diginetica-* | jsonl")
    p.add_argument("--train", action="append", type=Path, required=True, help="train file (repeatable)")
    p.add_argument("--test", action="append", type=Path, default=None, help="test file (repeatable)")
    p.add_argument("--split-users", type=float, default=None, metavar="FRAC",
                   help="one data set: hold out the users with stable_hash(user) %% round(1/FRAC) == 0")  # fmt: skip
    p.add_argument("--horizon", type=duration_ms, default=None, help="label horizon (intent 30m, churn 90d)")
    p.add_argument("--cutoff", type=date.fromisoformat, default=None, help="churn cut-off day (YYYY-MM-DD)")
    p.add_argument(
        "--online-model", default=None, help="River family for the online model (default: the learner's)"
    )
    p.add_argument("--seq-max-seconds", type=float, default=None, help="cap on sequence-model training time")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a SeqConfig field"
    )
    p.add_argument("--out", type=Path, required=True, help="directory for report.json and the plots")


def _load(paths: list[Path], fmt: str) -> list[Any]:
    from models.datasets.importers import load_events

    events: list[Any] = []
    for path in paths:
        evs, stats = load_events(path, fmt)
        print(f"{path}: {stats.summary()}", file=sys.stderr)
        events += evs
    return events


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from models.datasets.importers import day_start_ms
    from models.evaluation import EvalConfig, evaluate, split_by_user
    from models.training import seq_config_with

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    train = _load(args.train, args.format)
    same_files = args.test is None or sorted(map(str, args.test)) == sorted(map(str, args.train))
    day = 86_400_000
    data_end = None
    cutoff_ms = None
    if args.task == "churn":
        test = [] if same_files else _load(args.test, args.format)
        last = max(e.ts for e in [*train, *test])
        # Day-resolution logs (CDNOW) stamp every event at 00:00: the data runs to the end of that day.
        data_end = (
            day_start_ms(datetime.fromtimestamp(last // 1000, UTC).date()) + day - 1
            if args.format == "cdnow"
            else last
        )
        if args.cutoff is not None:
            cutoff_ms = day_start_ms(args.cutoff) + day - 1  # end of the cut-off day
        split = "one history, split in time at the cut-off"
    elif args.split_users is not None:
        if not same_files:
            raise SystemExit("--split-users splits one data set: give it instead of --test")
        train, test = split_by_user(train, args.split_users)
        split = f"by user: stable_hash(user) % {round(1 / args.split_users)} == 0 held out"
    elif same_files:
        raise SystemExit("give --test FILE or --split-users FRAC for this task")
    else:
        test = _load(args.test, args.format)
        split = "as given: train files, then test files"
    cfg = EvalConfig(
        task=args.task,
        horizon_ms=args.horizon,
        cutoff_ms=cutoff_ms,
        seq=seq_config_with(args.set),
        seq_max_seconds=args.seq_max_seconds,
        online_model=args.online_model,
    )
    meta = {
        "command": "intentstream evaluate " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else []),
        "split": split,
        "files": {"train": [str(p) for p in args.train], "test": [str(p) for p in args.test or []]},
    }
    return evaluate(train, test, cfg, args.out, replay=replay_factory, data_end_ms=data_end, meta=meta)


def replay_factory(state: Any, learners: Any, churn_after_ms: int) -> Any:
    """The worker's pipeline step as the evaluation's replay (``models.evaluation.Replay``)."""
    from stream.logic.replay import PipelineReplay

    return PipelineReplay(state, learners, churn_after_ms=churn_after_ms)
