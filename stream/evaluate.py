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

``--task all`` runs the README's three evaluations one after the other, intent and latent need on
the Taobao files split by user, churn on the CDNOW history, into ``OUT/intent``, ``OUT/latent`` and
``OUT/churn``, and writes ``OUT/summary.md`` and ``OUT/summary.json``: every model's figures with
their intervals in one table. The files come from ``--data-dir`` (the folder holding
``taobao-userbehavior/`` and ``cdnow/``: the README's files in it), or from ``--taobao``/``--cdnow``.

Heavy imports (torch, River) happen in :func:`run`, so ``intentstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

SINGLE_TASKS = ("intent", "latent", "churn")
# The files the README's commands evaluate, relative to --data-dir.
TAOBAO_FILES = (
    "taobao-userbehavior/userbehavior_users_tailsample_9days.csv.gz",
    "taobao-userbehavior/userbehavior_users_headcont_470users.csv.gz",
)
CDNOW_FILE = "cdnow/CDNOW_master_through_1998-03-31.txt.gz"
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
    p.add_argument("--task", required=True, choices=["intent", "churn", "latent", "all"],
                   help="all: the three tasks on the Taobao and CDNOW files (--data-dir or --taobao/--cdnow)")  # fmt: skip
    p.add_argument("--format", help="taobao | cdnow | yoochoose | diginetica-* | jsonl (one task)")
    p.add_argument("--train", action="append", type=Path, help="train file (repeatable; one task)")
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
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="--task all: the folder holding taobao-userbehavior/ and cdnow/ (e.g. ../shared/data)")  # fmt: skip
    p.add_argument("--taobao", action="append", type=Path, default=None, metavar="FILE",
                   help="--task all: a Taobao file for intent and latent (repeatable; instead of --data-dir's)")  # fmt: skip
    p.add_argument("--cdnow", type=Path, default=None, metavar="FILE",
                   help="--task all: the CDNOW history for churn (instead of --data-dir's)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True,
                   help="directory for report.json and the plots (--task all: OUT/<task>/ and OUT/summary.*)")  # fmt: skip


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the options for the task asked, naming the option; None when nothing.
    Kept out of argparse because which options are needed depends on ``--task``."""
    if args.task != "all":
        only_all = {"--data-dir": args.data_dir, "--taobao": args.taobao, "--cdnow": args.cdnow}
        extra = [option for option, value in only_all.items() if value]
        if extra:
            return f"{', '.join(extra)} only go with --task all; give --train (and --test) for one task"
        missing = [
            option for option, value in (("--format", args.format), ("--train", args.train)) if not value
        ]
        if missing:
            return f"the following arguments are required with --task {args.task}: {', '.join(missing)}"
        return None
    one_task = {"--format": args.format, "--train": args.train, "--test": args.test}
    given = [option for option, value in one_task.items() if value]
    if given:
        return (
            f"--task all does not take {', '.join(given)}: it reads the Taobao files (--taobao) and "
            "the CDNOW file (--cdnow), or both from --data-dir"
        )
    if args.horizon is not None:
        return "--task all does not take --horizon: intent uses 30m and churn 90d; run one task for another"
    if args.data_dir is None and (not args.taobao or args.cdnow is None):
        lacking = " and ".join(o for o, v in (("--taobao", args.taobao), ("--cdnow", args.cdnow)) if not v)
        return f"--task all needs --data-dir DIR (the folder holding taobao-userbehavior/ and cdnow/) or {lacking}"
    taobao, cdnow = _all_inputs(args)
    for path, option, explicit in [*((f, "--taobao", bool(args.taobao)) for f in taobao),
                                   (cdnow, "--cdnow", args.cdnow is not None)]:  # fmt: skip
        if not path.is_file():
            source = option if explicit else f"--data-dir {args.data_dir}"
            return f"{path} (from {source}) is not a file; give the file with {option} FILE"
    return None


def _all_inputs(args: argparse.Namespace) -> tuple[list[Path], Path]:
    """(the Taobao files, the CDNOW file) of ``--task all``: the explicit options first, else the
    README's files under ``--data-dir``."""
    base = args.data_dir if args.data_dir is not None else Path(".")
    taobao = list(args.taobao) if args.taobao else [base / f for f in TAOBAO_FILES]
    cdnow = args.cdnow if args.cdnow is not None else base / CDNOW_FILE
    return taobao, cdnow


def _load(paths: list[Path], fmt: str) -> list[Any]:
    from models.datasets.importers import load_events

    events: list[Any] = []
    for path in paths:
        evs, stats = load_events(path, fmt)
        print(f"{path}: {stats.summary()}", file=sys.stderr)
        events += evs
    return events


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One task's report, or with ``--task all`` the summary of the three (see the module doc)."""
    problem = check_arguments(args)
    if problem:
        raise SystemExit(f"intentstream evaluate: error: {problem}")
    if args.task == "all":
        return run_all(args)
    return _run_one(args)


def _run_one(args: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
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
    if command is None:
        command = "intentstream evaluate " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    meta = {
        "command": command,
        "split": split,
        "files": {"train": [str(p) for p in args.train], "test": [str(p) for p in args.test or []]},
    }
    return evaluate(train, test, cfg, args.out, replay=replay_factory, data_end_ms=data_end, meta=meta)


def _task_arguments(args: argparse.Namespace, task: str) -> argparse.Namespace:
    """The single-task options ``--task all`` runs ``task`` with: the README's command for it."""
    taobao, cdnow = _all_inputs(args)
    one = argparse.Namespace(**vars(args))
    one.task, one.test, one.horizon, one.out = task, None, None, args.out / task
    one.data_dir = one.taobao = one.cdnow = None
    if task == "churn":
        one.format, one.train, one.split_users = "cdnow", [cdnow], None
    else:
        one.format, one.train, one.cutoff = "taobao", taobao, None
        one.split_users = args.split_users if args.split_users is not None else 0.25
    return one


def command_line(args: argparse.Namespace) -> str:
    """The ``intentstream evaluate`` command line of ``args``, with the options that were given."""
    parts = ["intentstream evaluate", "--task", args.task]
    if args.task == "all":
        parts += ["--data-dir", str(args.data_dir)] if args.data_dir is not None else []
        parts += [x for f in args.taobao or [] for x in ("--taobao", str(f))]
        parts += ["--cdnow", str(args.cdnow)] if args.cdnow is not None else []
    else:
        parts += ["--format", args.format]
        parts += [x for f in args.train for x in ("--train", str(f))]
        parts += [x for f in args.test or [] for x in ("--test", str(f))]
    if args.split_users is not None:
        parts += ["--split-users", f"{args.split_users:g}"]
    if args.horizon is not None:
        parts += ["--horizon", f"{args.horizon}ms"]
    if args.cutoff is not None:
        parts += ["--cutoff", args.cutoff.isoformat()]
    if args.online_model is not None:
        parts += ["--online-model", args.online_model]
    if args.seq_max_seconds is not None:
        parts += ["--seq-max-seconds", f"{args.seq_max_seconds:g}"]
    parts += [x for s in args.set for x in ("--set", s)]
    return " ".join([*parts, "--out", str(args.out)])


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """The three tasks, each into ``OUT/<task>/`` exactly as its own command would, then the summary."""
    reports = {}
    for task in SINGLE_TASKS:
        one = _task_arguments(args, task)
        print(f"--task all: {task} -> {one.out}", file=sys.stderr)
        reports[task] = _run_one(one, command=command_line(one))
    return write_summary(reports, args.out, command_line(args))


# Per task: the headline metric first, then the secondary one.
_METRICS = {"intent": ("roc_auc", "pr_auc"), "latent": ("hr@10", "mrr@10"), "churn": ("roc_auc", "pr_auc")}
_METRIC_NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "hr@10": "HR@10", "mrr@10": "MRR@10"}


def _task_title(task: str, report: dict[str, Any]) -> str:
    if task == "intent":
        return f"purchase intent, Taobao, {report['horizon_ms'] // 60_000} min"
    if task == "churn":
        return f"churn, CDNOW, {report['horizon_ms'] // 86_400_000} days"
    return "latent need, Taobao, next category"


def write_summary(reports: dict[str, dict[str, Any]], out: Path, command: str) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` in ``out`` from the per-task reports; returns the JSON."""
    from models.evaluation import MODELS, with_ci

    tasks: dict[str, Any] = {}
    for task, rep in reports.items():
        metrics = _METRICS[task]
        tasks[task] = {
            "title": _task_title(task, rep),
            "metrics": list(metrics),
            "report": f"{task}/report.json",
            "command": rep.get("command"),
            "rows": next(iter(rep["models"].values()))["rows"],
            "test_users": rep["bootstrap"]["users"],
            "models": {
                m: {k: v for k, v in rep["models"][m].items() if k.split("_ci95")[0] in metrics}
                for m in MODELS
            },  # fmt: skip
            "paired_differences": {
                pair: {k: v for k, v in d.items() if k.split("_ci95")[0] == metrics[0]}
                for pair, d in rep["paired_differences"].items()
            },
        }
    boot = next(iter(reports.values()))["bootstrap"]
    summary = {
        "task": "all",
        "command": command,
        "bootstrap": {k: boot[k] for k in ("over", "resamples", "seed", "interval")},
        "tasks": tasks,
        "models": {task: t["models"] for task, t in tasks.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))

    lines = [
        "# intentstream evaluate: summary",
        "",
        f"`{command}`",
        "",
        f"Figures as in the reports, with 95% intervals from a bootstrap over the test users "
        f"({boot['resamples']} resamples, seed {boot['seed']}); the highest figure of each row in bold. "
        "Per-task reports: `<task>/report.json`.",
        "",
        "| task | metric | " + " | ".join(MODELS) + " | rows | users |",
        "|---|---|" + "---|" * len(MODELS) + "---|---|",
    ]
    for t in tasks.values():
        for metric in t["metrics"]:
            values = {m: t["models"][m].get(metric) for m in MODELS}
            best = max((v for v in values.values() if v is not None), default=None)
            cells = []
            for m in MODELS:
                cell = with_ci(values[m], t["models"][m].get(f"{metric}_ci95"), value_digits=4)
                cells.append(f"**{cell}**" if best is not None and values[m] == best else cell)
            lines.append(f"| {t['title']} | {_METRIC_NAMES[metric]} | " + " | ".join(cells)
                         + f" | {t['rows']} | {t['test_users']} |")  # fmt: skip
    lines += [
        "",
        "Paired differences of the headline metric (same resamples for both models; an interval that "
        "excludes 0 is a difference these users resolve):",
        "",
        "| difference | "
        + " | ".join(f"{t['title']} ({_METRIC_NAMES[t['metrics'][0]]})" for t in tasks.values())
        + " |",
        "|---|" + "---|" * len(tasks),
    ]
    pairs = next(iter(tasks.values()))["paired_differences"]
    for pair in pairs:
        cells = []
        for t in tasks.values():
            d, key = t["paired_differences"][pair], t["metrics"][0]
            v, ci = d.get(key), d.get(f"{key}_ci95")
            cells.append(
                "n/a" if v is None else f"{v:+.4f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")
            )
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def replay_factory(state: Any, learners: Any, churn_after_ms: int) -> Any:
    """The worker's pipeline step as the evaluation's replay (``models.evaluation.Replay``)."""
    from stream.logic.replay import PipelineReplay

    return PipelineReplay(state, learners, churn_after_ms=churn_after_ms)
