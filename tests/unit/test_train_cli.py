"""``intentstream train`` / ``refresh``: registry versions, promotion on a shared validation split,
and robustness to a corrupt current artifact."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from models.registry import Registry
from models.sequence import checkpoint
from models.training import CRITERION, load_history, refresh, train_to_registry
from stream import cli

T0 = 1_700_000_000_000
MIN = 60_000
TINY = ["max_len=8", "d_model=8", "item_buckets=256", "category_buckets=128", "query_buckets=32",
        "batch_size=16", "max_epochs=2"]  # fmt: skip


def write_history(path: Path, n_users: int = 16, seed: int = 0) -> Path:
    """JSON lines of shoppers whose carts are often followed by a purchase."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        t = T0 + rng.randrange(60) * MIN
        for j in range(25):
            t += rng.randrange(1, 10) * MIN
            kind = "add_to_cart" if rng.random() < 0.25 else "view"
            item = f"i{rng.randrange(5)}"
            rows.append({"event_id": f"{u}-{j}", "user_id": f"u{u}", "type": kind, "ts": t, "item_id": item,
                         "category_id": f"c{u % 4}"})  # fmt: skip
            if kind == "add_to_cart" and rng.random() < 0.6:
                t += MIN
                rows.append({"event_id": f"{u}-{j}p", "user_id": f"u{u}", "type": "purchase", "ts": t,
                             "item_id": item, "category_id": f"c{u % 4}", "price": 5.0})  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTSTREAM_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("INTENTSTREAM_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def run_cli(argv: list[str], capsys) -> dict:
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_threads_option_sets_torch_threads_and_refuses_zero(env, capsys):
    import torch

    hist = write_history(env / "h.jsonl")
    args = ["train", "--format", "jsonl", "--input", str(hist), "--device", "cpu", *sum((["--set", s] for s in TINY), [])]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_cli([*args, "--threads", "1"], capsys)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert cli.main([*args, "--threads", "0"]) != 0
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_train_writes_a_loadable_registry_version(env, capsys):
    hist = write_history(env / "h.jsonl")
    out = run_cli(["train", "--format", "jsonl", "--input", str(hist), "--device", "cpu",
                   *sum((["--set", s] for s in TINY), [])], capsys)  # fmt: skip
    reg = Registry(env / "models" / "sequence")
    assert out["version"] == "000001" and out["device"] == "cpu" and out["train_events_per_s"] > 0
    assert [m["version"] for m in reg.list()] == ["000001"]
    assert reg.current() is None  # train alone does not promote
    meta = reg.metadata("000001")
    assert meta["metrics"][CRITERION] is not None and meta["config"]["max_len"] == 8
    loaded = checkpoint.load(reg.path("000001") / "seq.pt")
    assert loaded.config.d_model == 8


def test_refresh_promotes_only_if_better_on_the_same_split(env, capsys, monkeypatch):
    hist = write_history(env / "h.jsonl")
    args = [
        "refresh",
        "--format",
        "jsonl",
        "--input",
        str(hist),
        "--device",
        "cpu",
        *sum((["--set", s] for s in TINY), []),
    ]
    first = run_cli(args, capsys)
    assert first["promoted"] and first["current_after"] == first["version"]
    # A second run on the same history: both models are scored on the new run's validation targets.
    import models.training as training

    real = training._val_metrics

    def rigged(model, cfg, events, from_ms):  # the new model is made worse by a fixed margin
        m = real(model, cfg, events, from_ms)
        if model is not current_model["m"]:
            m[CRITERION] -= 1.0
        return m

    reg = Registry(env / "models" / "sequence")
    current_model: dict = {}
    real_load = checkpoint.load

    def remember(path, map_location="cpu"):
        loaded = real_load(path, map_location=map_location)
        current_model["m"] = loaded.model
        return loaded

    monkeypatch.setattr(training, "_val_metrics", rigged)
    monkeypatch.setattr(training.checkpoint, "load", remember)
    second = run_cli(args, capsys)
    assert not second["promoted"] and reg.current() == first["version"]
    assert second["current"]["intent_n"] == second["new"]["intent_n"]  # one split for both
    assert second["compared_from_ms"] == second["val_cutoff_ms"] and "note" in second
    monkeypatch.setattr(training, "_val_metrics", real)
    monkeypatch.setattr(training.checkpoint, "load", real_load)


def test_refresh_with_a_corrupt_current_version_promotes_the_new_one(env, capsys):
    hist = write_history(env / "h.jsonl")
    reg = Registry(env / "models" / "sequence")
    events, _ = load_history([hist], "jsonl")
    from models.training import seq_config_with

    cfg = seq_config_with(TINY)
    _, v1, _ = train_to_registry(events, reg, cfg, device="cpu", log=None, promote=True)
    (reg.path(v1) / "seq.pt").write_bytes(b"not a checkpoint")  # bit rot: checksums now fail
    out = refresh(events, reg, cfg, device="cpu", log=None)
    assert out["promoted"] and out["current_after"] == out["version"] != v1
    assert "no usable current version" in out["reason"]


def test_refresh_never_promotes_a_worse_model(env):
    """Without any rigging: a model trained for one epoch on a third of the users against a
    current model trained on all of them; whichever wins, the decision matches the two scores."""
    hist = write_history(env / "h.jsonl", n_users=20)
    events, _ = load_history([hist], "jsonl")
    from models.training import seq_config_with

    reg = Registry(env / "models" / "sequence")
    cfg = seq_config_with(TINY)
    train_to_registry(events, reg, cfg, device="cpu", log=None, promote=True)
    out = refresh(events, reg, seq_config_with([*TINY, "max_epochs=1"]), device="cpu", log=None)
    assert out["promoted"] == (out["new"][CRITERION] > out["current"][CRITERION])
    assert reg.current() == (out["version"] if out["promoted"] else "000001")


def test_history_needs_a_source():
    with pytest.raises(ValueError):
        load_history()


def test_history_from_the_archive_reads_the_last_days_only(tmp_path):
    from models.archive import EventArchive
    from models.events import Event

    arch = EventArchive(tmp_path / "archive")
    day = 86_400_000
    arch.write([Event("old", "u", "click", T0 - 40 * day, item_id="i"),
                Event("b", "u", "purchase", T0 - 2 * day), Event("a", "u", "click", T0 - 3 * day, item_id="i")])  # fmt: skip
    events, info = load_history(archive=tmp_path / "archive", days=30, now_ms=T0)
    assert [e.event_id for e in events] == ["a", "b"]
    assert info[str(tmp_path / "archive")]["events"] == 2


def test_train_throughput_benchmark_runs_and_reports_json(capsys):
    """Smoke test only (no timing asserted): the harness trains, and its JSON has the fields the
    docs quote, one run per batch size, the device's default size resolved."""
    import json

    from benchmarks.train_throughput import main

    out = main(["--data", "simulator", "--sim-events", "4000", "--sim-users", "50", "--batch-sizes", "0,16",
                "--epochs", "2", "--device", "cpu", "--threads", "1"])  # fmt: skip
    assert json.loads(capsys.readouterr().out) == out
    assert [r["batch_size"] for r in out["runs"]] == [32, 16]
    for r in out["runs"]:
        assert r["step"] == "eager" and r["epochs"] == 2 and r["train_events_per_s"] > 0
        assert r["steady_events_per_s"] > 0 and 0.0 <= r["val_hr@10"] <= 1.0
