"""``intentstream evaluate`` on tiny synthetic data: report shape, row counts, label exclusion, plots."""

from __future__ import annotations

import datetime
import gzip
import json
import random
from pathlib import Path

import pytest

from models.datasets import tasks
from models.evaluation import EvalConfig, evaluate, split_by_user
from models.events import Event
from models.features.state import StateConfig
from models.sequence.config import SeqConfig
from stream.cli import build_parser
from stream.evaluate import replay_factory
from stream.logic.replay import PipelineReplay

T0 = 1_700_000_000_000
MIN = 60_000
DAY = 86_400_000
# A sequence model small enough to train in well under a second.
TINY = SeqConfig(max_len=8, d_model=8, item_buckets=256, category_buckets=128, query_buckets=32,
                 batch_size=16, max_epochs=1)  # fmt: skip


def shoppers(n_users: int = 12, seed: int = 0) -> list[Event]:
    """Users who view, sometimes cart, and buy a carted item a few minutes later."""
    rng = random.Random(seed)
    out: list[Event] = []
    for u in range(n_users):
        t = T0 + rng.randrange(0, 60) * MIN
        for j in range(30):
            t += rng.randrange(1, 8) * MIN
            item = f"i{rng.randrange(6)}"
            kind = "add_to_cart" if rng.random() < 0.2 else "click"
            out.append(
                Event(f"u{u}-{j}", f"u{u}", kind, t, item_id=item, category_id=f"c{u % 3}{rng.randrange(3)}")
            )
            if kind == "add_to_cart" and rng.random() < 0.6:
                t += 2 * MIN
                out.append(
                    Event(f"u{u}-{j}b", f"u{u}", "purchase", t, item_id=item, category_id=f"c{u % 3}0")
                )
    return sorted(out, key=lambda e: e.ts)


def test_replay_advances_the_watermark_and_learns_with_delay():
    from models.online.learner import PartitionLearners

    learners = PartitionLearners.new(StateConfig())
    rep = PipelineReplay(StateConfig(), learners)
    for ev in shoppers(4):
        rep.event(ev)
    # Everything older than the horizon before the last event has been learned, nothing later.
    assert learners.intent.metrics()["n"] > 0
    assert rep.watermark == max(e.ts for e in shoppers(4)) - StateConfig().allowed_lateness_ms


def test_intent_report_is_well_formed_and_excludes_labels_past_the_end(tmp_path):
    events = shoppers(12)
    train, test = split_by_user(events, 0.25)
    assert train and test and not ({e.user for e in train} & {e.user for e in test})
    rep = evaluate(train, test, EvalConfig("intent", seq=TINY), tmp_path, replay=replay_factory)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["models"] == rep["models"]
    assert set(rep["models"]) == {"baseline", "online", "sequence", "blend"}
    # Exactly the product's labelled rows are scored: non-purchase test events whose 30-minute
    # window ends inside the test data.
    end = max(e.ts for e in test)
    expected = sum(1 for e in test if e.type != "purchase" and e.ts + 30 * MIN <= end)
    assert rep["labelled_test_events"] == expected
    assert rep["excluded_label_past_end"] == sum(1 for e in test if e.type != "purchase") - expected > 0
    labels = dict(tasks.intent_labels(sorted(test, key=lambda e: e.ts), 30 * MIN))
    for m in rep["models"].values():
        assert m["rows"] == expected
        assert m["positives"] == sum(labels.values())
        assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["pr_auc"] <= 1.0
    assert rep["data"]["test_users"] == len({e.user for e in test})
    for name in ("roc.png", "pr.png", "calibration.png", "score_distribution.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert set(rep["plots"]) == {"roc.png", "pr.png", "calibration.png", "score_distribution.png"}


def test_latent_report_has_ranking_metrics_for_every_target(tmp_path):
    events = shoppers(12, seed=1)
    train, test = split_by_user(events, 0.25)
    rep = evaluate(train, test, EvalConfig("latent", seq=TINY), tmp_path, replay=replay_factory)
    n_targets = len(tasks.next_category_targets(sorted(test, key=lambda e: e.ts)))
    assert rep["targets"] == n_targets
    for m in rep["models"].values():
        assert m["rows"] == n_targets
        assert 0.0 <= m["hr@10"] <= 1.0 and 0.0 <= m["mrr@10"] <= m["hr@10"]
    # Each user stays within 3 home categories, so their own top-10 always holds the next one
    # once it has been seen: the frequency baseline must be nearly perfect here.
    assert rep["models"]["baseline"]["hr@10"] > 0.9
    assert (tmp_path / "hit_rate_at_k.png").exists()


def test_churn_at_a_cutoff_labels_every_customer_seen_and_refuses_a_short_horizon(tmp_path):
    rng = random.Random(3)
    events = []
    for u in range(60):
        loyal = u % 2 == 0
        t = T0 + rng.randrange(0, 20) * DAY
        for j in range(12 if loyal else 2):
            events.append(Event(f"{u}-{j}", f"c{u}", "purchase", t, price=10.0))
            t += (rng.randrange(5, 25) if loyal else rng.randrange(1, 5)) * DAY
    events.sort(key=lambda e: e.ts)
    end = max(e.ts for e in events)
    cfg = EvalConfig("churn", horizon_ms=60 * DAY, seq=TINY)
    rep = evaluate(events, [], cfg, tmp_path, replay=replay_factory, data_end_ms=end)
    cutoff = end - 60 * DAY
    truth = tasks.churn_labels(events, cutoff, 60 * DAY)
    assert rep["cutoff_ms"] == cutoff and rep["customers_at_cutoff"] == len(truth)
    assert rep["models"]["baseline"]["positives"] == sum(truth.values())
    # Recency separates the one-off buyers from the regulars.
    assert rep["models"]["baseline"]["roc_auc"] > 0.8
    with pytest.raises(ValueError, match="past the end"):
        evaluate(events, [], EvalConfig("churn", horizon_ms=60 * DAY, cutoff_ms=end - DAY, seq=TINY), tmp_path / "x", replay=replay_factory,
                 data_end_ms=end)  # fmt: skip


def test_cli_parses_the_evaluate_command(tmp_path):
    args = build_parser().parse_args(
        [
            "evaluate",
            "--task",
            "intent",
            "--format",
            "jsonl",
            "--train",
            "a.jsonl",
            "--split-users",
            "0.25",
            "--horizon",
            "30m",
            "--out",
            str(tmp_path),
        ]  # fmt: skip
    )
    assert args.horizon == 30 * MIN and args.split_users == 0.25 and args.fn.__name__ == "cmd_evaluate"


def test_split_by_user_refuses_fractions_that_are_not_one_over_n():
    with pytest.raises(ValueError):
        split_by_user(shoppers(2), 0.3)
    train, test = split_by_user(shoppers(40), 0.5)  # 1/2 is accepted
    assert train and test


def test_every_metric_in_the_report_has_a_user_bootstrap_interval(tmp_path):
    train, test = split_by_user(shoppers(16, seed=2), 0.25)
    cfg = EvalConfig("intent", seq=TINY, bootstrap_resamples=200)
    rep = evaluate(train, test, cfg, tmp_path / "intent", replay=replay_factory)
    assert rep["bootstrap"]["over"] == "users" and rep["bootstrap"]["resamples"] == 200
    assert rep["bootstrap"]["users"] == len({e.user for e in test})
    for m in rep["models"].values():
        for key in ("roc_auc", "pr_auc"):
            lo, hi = m[f"{key}_ci95"]
            assert lo <= m[key] <= hi
    # Every two models compared on the same resamples; a model against itself would be 0 exactly.
    assert set(rep["paired_differences"]) == {
        "online - baseline", "sequence - baseline", "blend - baseline",
        "sequence - online", "blend - online", "blend - sequence",
    }  # fmt: skip
    d = rep["paired_differences"]["blend - online"]
    assert d["roc_auc"] == pytest.approx(rep["models"]["blend"]["roc_auc"] - rep["models"]["online"]["roc_auc"], abs=2e-4)
    assert d["roc_auc_ci95"][0] <= d["roc_auc_ci95"][1]
    # The same seed gives the same intervals.
    again = evaluate(train, test, cfg, tmp_path / "again", replay=replay_factory)
    assert again["models"]["baseline"] == rep["models"]["baseline"]

    lat = evaluate(train, test, EvalConfig("latent", seq=TINY, bootstrap_resamples=200), tmp_path / "latent",
                   replay=replay_factory)  # fmt: skip
    for m in lat["models"].values():
        for key in ("hr@10", "mrr@10"):
            lo, hi = m[f"{key}_ci95"]
            assert lo <= m[key] <= hi


def write_taobao(path: Path, events: list[Event]) -> None:
    """Taobao UserBehavior rows (user,item,category,behavior,unix seconds), gzip as the real files."""
    behavior = {"click": "pv", "add_to_cart": "cart", "purchase": "buy"}
    rows = [f"{e.user[1:]},{e.item_id[1:]},{e.category_id[1:]},{behavior[e.type]},{e.ts // 1000}" for e in events]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")


def write_cdnow(path: Path, n_customers: int = 60, seed: int = 3) -> None:
    """CDNOW purchases (customer, YYYYMMDD, CDs, dollars) to 1998-03-31: regulars who buy every few
    weeks to the end, and customers who buy twice early on and never again."""
    rng = random.Random(seed)
    rows = [" customer_id  date number_of_cds  dollar_value"]
    end = datetime.date(1998, 3, 31)
    for c in range(1, n_customers + 1):
        day = datetime.date(1997, 1, 1) + datetime.timedelta(days=rng.randrange(60))
        for _ in range(100 if c % 2 else 2):
            if day > end:
                break
            rows.append(f" {c:05d} {day:%Y%m%d}  1   12.00")
            day += datetime.timedelta(days=rng.randrange(10, 40) if c % 2 else rng.randrange(1, 5))
    rows.append(f" {n_customers + 1:05d} 19980331  1   12.00")  # the data's last day
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_task_all_runs_the_three_tasks_and_writes_one_summary(tmp_path, capsys, monkeypatch):
    from stream import cli
    from stream.evaluate import CDNOW_FILE, TAOBAO_FILES

    monkeypatch.setenv("INTENTSTREAM_DATA_DIR", str(tmp_path / "state"))
    data = tmp_path / "data"
    events = shoppers(24, seed=4)
    write_taobao(data / TAOBAO_FILES[0], events[: len(events) // 3])
    write_taobao(data / TAOBAO_FILES[1], events[len(events) // 3 :])
    write_cdnow(data / CDNOW_FILE)
    tiny = ["max_len=8", "d_model=8", "item_buckets=256", "category_buckets=128", "query_buckets=32",
            "batch_size=16", "max_epochs=1"]  # fmt: skip
    out = tmp_path / "out"
    argv = ["evaluate", "--task", "all", "--data-dir", str(data), "--out", str(out),
            *sum((["--set", s] for s in tiny), [])]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["task"] == "all" and set(printed["models"]) == {"intent", "latent", "churn"}

    summary = json.loads((out / "summary.json").read_text())
    for task, metric in [("intent", "roc_auc"), ("latent", "hr@10"), ("churn", "roc_auc")]:
        report = json.loads((out / task / "report.json").read_text())
        assert report["task"] == task
        # The summary repeats the report's figures, intervals included, for every model.
        for m in ("baseline", "online", "sequence", "blend"):
            assert summary["tasks"][task]["models"][m][metric] == report["models"][m][metric]
            assert summary["tasks"][task]["models"][m][f"{metric}_ci95"] == report["models"][m][f"{metric}_ci95"]
        assert summary["tasks"][task]["test_users"] == report["bootstrap"]["users"]
    intent = json.loads((out / "intent" / "report.json").read_text())
    # Intent and latent need are split by user as the README's commands do; churn is the CDNOW history.
    assert intent["command"].startswith("intentstream evaluate --task intent --format taobao --train")
    assert intent["command"].count("--train") == 2 and "--split-users 0.25" in intent["command"]
    assert intent["data"]["shared_users"] == 0 and intent["data"]["test_users"] > 0
    churn = json.loads((out / "churn" / "report.json").read_text())
    assert churn["files"]["train"] == [str(data / CDNOW_FILE)]
    assert churn["customers_at_cutoff"] == 60  # the customer who first buys on the last day is not seen yet
    md = (out / "summary.md").read_text()
    base = summary["tasks"]["churn"]["models"]["baseline"]
    lo, hi = base["roc_auc_ci95"]
    assert f"{base['roc_auc']:.4f} ({lo:.3f}-{hi:.3f})" in md
    assert md.count("| purchase intent, Taobao, 30 min |") == 2 and "| blend - online |" in md


def test_task_all_names_the_missing_option(tmp_path, capsys):
    from stream import cli
    from stream.evaluate import CDNOW_FILE

    def error(*argv: str) -> str:
        assert cli.main(["evaluate", *argv, "--out", str(tmp_path / "out")]) == 2
        return capsys.readouterr().err

    assert "--task all needs --data-dir DIR" in error("--task", "all")
    assert "or --cdnow" in error("--task", "all", "--taobao", "a.csv")
    # Only the CDNOW file is in the data folder: the error names the file and the option to give it.
    (tmp_path / CDNOW_FILE).parent.mkdir(parents=True)
    (tmp_path / CDNOW_FILE).write_text("")
    err = error("--task", "all", "--data-dir", str(tmp_path))
    assert "userbehavior_users_tailsample_9days.csv.gz" in err and "--taobao FILE" in err
    assert "--task all does not take --train" in error("--task", "all", "--data-dir", str(tmp_path), "--train", "x")
    assert "does not take --horizon" in error("--task", "all", "--data-dir", str(tmp_path), "--horizon", "1h")
    # One task still needs its files, and does not take --task all's options.
    assert "required with --task intent: --format, --train" in error("--task", "intent")
    assert "--data-dir only go with --task all" in error("--task", "churn", "--format", "cdnow", "--train", "x",
                                                         "--data-dir", str(tmp_path))  # fmt: skip
