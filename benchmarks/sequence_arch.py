"""GRU vs small causal transformer on real Taobao histories: quality and scoring cost.

    python -m benchmarks.sequence_arch [--data-dir ../shared/data/taobao-userbehavior] [--quick]

Split: by user. A quarter of the users (``stable_hash(user) % 4 == 0``) is held back as the
test split and never seen in training or model selection. Training uses the other users; early
stopping uses the last 20% of the time range of those users (``train()``'s time split), and the
architecture choice is read off that validation split, not off the test numbers.

Reports (JSON on stdout, progress on stderr):

* intent ROC AUC (purchase in (t, t+30 min], only non-purchase events with t + 30 min inside the
  data), next-category HR@10 / MRR@10, on validation and on held-back test users;
* baselines computed on the same test targets: "purchases earlier in the window" for intent,
  the user's own top-10 most frequent categories so far and the last 10 distinct categories of
  the window for next category;
* training throughput (target events/s) with one thread and with all threads;
* scoring cost in ms per event on one CPU thread: batch of 1 and of 256 windows of full length,
  for the GRU recomputing the window, the GRU advancing its per-user state by one event, and
  the transformer recomputing the window. It includes feature extraction (what the stream pays).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.events import Event
from models.features.hashing import stable_hash
from models.sequence import checkpoint
from models.sequence.config import SeqConfig
from models.sequence.data import NUM_FEATURES, build_windows, hash_bucket, user_histories, window_features
from models.sequence.scorer import SequenceScorer
from models.sequence.train import evaluate, roc_auc, train

FILES = ("userbehavior_users_tailsample_9days.csv.gz", "userbehavior_users_headcont_470users.csv.gz")
DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao-userbehavior"


def load_taobao(path: Path) -> list[Event]:
    try:
        from models.datasets.importers import load_events
    except ImportError:  # the importer is another module's job; parse the CSV directly if absent
        return _parse_taobao(path)
    events, _ = load_events(path, "taobao")
    return events


def _parse_taobao(path: Path) -> list[Event]:
    import gzip

    kinds = {"pv": "click", "cart": "add_to_cart", "buy": "purchase"}
    out = []
    with gzip.open(path, "rt") as f:
        for n, line in enumerate(f):
            user, item, cat, behavior, ts = line.strip().split(",")
            if behavior in kinds:
                out.append(
                    Event(
                        f"taobao:{path.name}:{n + 1}",
                        user,
                        kinds[behavior],
                        int(ts) * 1000,
                        item_id=item,
                        category_id=cat,
                    )
                )
    return out


def baselines(test_hist, cfg: SeqConfig, data_end: int) -> dict[str, float]:
    """Baselines on exactly the targets build_windows() scores for the test users."""
    w = build_windows(test_hist, cfg, data_end_ms=data_end)
    a = w.arrays
    m = a["target"] & a["intent_mask"]
    out = {
        "intent_auc_purchases_in_window": roc_auc(
            a["intent"][m], a["num"][m][:, NUM_FEATURES.index("purchases")]
        ),
        "intent_auc_item_seen": roc_auc(a["intent"][m], a["num"][m][:, NUM_FEATURES.index("item_seen")]),
    }
    top_hits, recent_hits, n = 0, 0, 0
    for hist in test_hist.values():
        counts: Counter[int] = Counter()
        for i, e in enumerate(hist):
            if e.category:
                counts[hash_bucket(e.category, cfg.category_buckets)] += 1
            if i + 1 >= len(hist) or not hist[i + 1].category:
                continue
            target = hash_bucket(hist[i + 1].category, cfg.category_buckets)
            n += 1
            top_hits += target in {b for b, _ in counts.most_common(10)}
            recent: list[int] = []
            for r in reversed(hist[max(0, i + 1 - cfg.max_len) : i + 1]):
                b = hash_bucket(r.category, cfg.category_buckets)
                if r.category and b not in recent:
                    recent.append(b)
                    if len(recent) == 10:
                        break
            recent_hits += target in recent
    out["hr@10_user_top10_frequent"] = top_hits / n
    out["hr@10_last_10_distinct_in_window"] = recent_hits / n
    return out


def _median_ms_per_event(fn, n_events: int, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / n_events


def scoring_cost(scorer: SequenceScorer, windows, batch: int) -> dict[str, float]:
    torch.set_num_threads(1)
    ws = windows[:batch]
    out = {}
    if batch == 1:
        sample = windows[:50]
        out["window_ms_per_event"] = _median_ms_per_event(
            lambda: [scorer.score_batch([w]) for w in sample], len(sample)
        )
        if scorer.config.arch == "gru":
            states = [scorer.score_batch([w[:-1]]).state for w in sample]
            out["step_ms_per_event"] = _median_ms_per_event(
                lambda: [scorer.advance([w], s) for w, s in zip(sample, states, strict=True)], len(sample)
            )
    else:
        out["window_ms_per_event"] = _median_ms_per_event(lambda: scorer.score_batch(ws), len(ws))
        if scorer.config.arch == "gru":
            state = scorer.score_batch([w[:-1] for w in ws]).state
            out["step_ms_per_event"] = _median_ms_per_event(lambda: scorer.advance(ws, state), len(ws))
    return out


def scoring_interleaved(paths: list[Path], test_hist, rounds: int = 7) -> dict:
    """ms per event on one thread for each checkpoint, measured round-robin so that every model
    sees the same background load (this machine's 2 cores are shared), medians over rounds."""
    torch.set_num_threads(1)
    scorers = {p.stem: SequenceScorer.load(p) for p in paths}
    L = next(iter(scorers.values())).config.max_len
    full = [h[-L:] for h in test_hist.values() if len(h) >= L]
    ws = (full * (256 // max(len(full), 1) + 1))[:256]
    single = ws[:50]
    cases = {}
    for name, sc in scorers.items():
        cases[f"{name} window batch=1"] = (lambda sc=sc: [sc.score_batch([w]) for w in single], len(single))
        cases[f"{name} window batch=256"] = (lambda sc=sc: sc.score_batch(ws), len(ws))
        if sc.config.arch == "gru":
            st1 = [sc.score_batch([w[:-1]]).state for w in single]
            st256 = sc.score_batch([w[:-1] for w in ws]).state
            cases[f"{name} step batch=1"] = (
                lambda sc=sc, st1=st1: [sc.step([w], s) for w, s in zip(single, st1, strict=True)],
                len(single),
            )
            cases[f"{name} step batch=256"] = (lambda sc=sc, st=st256: sc.step(ws, st), len(ws))
        feats = lambda sc=sc: [window_features(w, sc.config) for w in ws]  # noqa: E731
        cases[f"{name} features only"] = (feats, len(ws))
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn, _ in cases.values():
        fn()  # warm-up
    for _ in range(rounds):
        for k, (fn, n) in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t) / n)
    return {k: round(statistics.median(v), 4) for k, v in times.items()} | {
        "window_len": L,
        "load_avg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--archs", default="gru,transformer")
    ap.add_argument("--max-len", type=int, default=SeqConfig.max_len)
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="training time cap per model")
    ap.add_argument("--quick", action="store_true", help="2 epochs, for a smoke run")
    ap.add_argument("--save-dir", type=Path, default=None, help="keep the trained checkpoints here")
    ap.add_argument(
        "--score-only",
        type=Path,
        nargs="+",
        default=None,
        metavar="CKPT",
        help="skip training: measure scoring cost of these checkpoints, interleaved",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a SeqConfig field for every model, e.g. --set d_model=32",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    events: list[Event] = []
    for f in FILES:
        events += load_taobao(args.data_dir / f)
    t_end = max(e.ts for e in events)
    test_users = {e.user for e in events if stable_hash(e.user) % 4 == 0}
    train_events = [e for e in events if e.user not in test_users]
    test_events = [e for e in events if e.user in test_users]
    test_hist = user_histories(test_events)
    report: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "command": "python -m benchmarks.sequence_arch "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": {
            "events": len(events),
            "users": len({e.user for e in events}),
            "test_users": len(test_users),
            "train_events": len(train_events),
            "test_events": len(test_events),
            "split": "by user (stable_hash(user) % 4 == 0 held back); validation = last 20% of time of training users",
        },
        "models": {},
    }
    if args.score_only:
        report["scoring_interleaved"] = scoring_interleaved(args.score_only, test_hist)
        print(json.dumps(report, indent=2))
        return report
    base_cfg = SeqConfig(max_len=args.max_len)
    report["baselines_test"] = baselines(test_hist, base_cfg, t_end)
    print(json.dumps(report["baselines_test"]), file=sys.stderr)

    scoring_windows = [h[-args.max_len :] for h in test_hist.values() if len(h) >= args.max_len]
    scoring_windows = (scoring_windows * (256 // max(len(scoring_windows), 1) + 1))[:256]
    for arch in args.archs.split(","):
        fields = {
            "arch": arch,
            "max_len": args.max_len,
            "n_layers": 1 if arch == "gru" else 2,
            "max_epochs": 2 if args.quick else args.max_epochs,
        }
        for item in args.set:
            key, value = item.split("=", 1)
            kind = type(getattr(SeqConfig, key))
            fields[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        cfg = SeqConfig(**fields)
        print(f"== {arch}", file=sys.stderr)
        res = train(train_events, cfg, device="cpu", max_seconds=args.max_seconds)
        test_w = build_windows(test_hist, cfg, data_end_ms=t_end)
        test = evaluate(res.model, test_w, torch.device("cpu"))
        loaded = checkpoint.Loaded(res.model, cfg, res.vocab, res.metrics, res.data_range, "", 1)
        scorer = SequenceScorer(loaded)
        entry = {
            "config": {k: v for k, v in cfg.to_dict().items() if v != getattr(SeqConfig, k) or k == "arch"},
            "params": sum(p.numel() for p in res.model.parameters()),
            "val": {k: v for k, v in res.metrics["val"].items() if k != "train_loss"},
            "test": test,
            "epochs": res.metrics["epochs"],
            "best_epoch": res.metrics["best_epoch"],
            "train_events_per_s_1_thread": res.train_events_per_s,
            "scoring_1_thread_batch_1": scoring_cost(scorer, scoring_windows, 1),
            "scoring_1_thread_batch_256": scoring_cost(scorer, scoring_windows, 256),
        }
        if args.save_dir:
            res.save(args.save_dir / f"seq_{arch}.pt")
        # Throughput with every thread: a short run, only for the events/s figure.
        torch.set_num_threads(os.cpu_count() or 1)
        short = train(train_events, SeqConfig(**{**cfg.to_dict(), "max_epochs": 1}), device="cpu", log=None)
        entry[f"train_events_per_s_{os.cpu_count()}_threads"] = short.train_events_per_s
        torch.set_num_threads(1)
        report["models"][arch] = entry
        print(json.dumps({arch: {"val": entry["val"], "test": test}}), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
