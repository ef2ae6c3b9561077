"""The sequence model in a running worker, on the real broker: hot refresh from the registry,
a corrupted artifact that must not interrupt scoring, and churn signals for silent users."""

import json
import re
import time

import pytest
import torch

from models.registry import Registry
from models.sequence import checkpoint
from models.sequence.checkpoint import CHECKPOINT_NAME
from models.sequence.config import SeqConfig
from models.sequence.model import SequenceModel
from stream.agents.records import partition_for
from stream.logic.ingest import Pseudonymizer

from .conftest import KEY, consume, jsonl, produce

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
DAY = 86_400_000
CFG = SeqConfig(d_model=16)  # horizons: intent 30 min, churn 3 days


def publish(reg: Registry, tmp_path, seed: int) -> str:
    torch.manual_seed(seed)
    d = tmp_path / f"art{seed}"
    d.mkdir()
    checkpoint.save(d / CHECKPOINT_NAME, SequenceModel(CFG), CFG, vocab={})
    return reg.save(d, {"metrics": {"val_score": 0.5}})


def cart_session(user: str, start: int) -> list[tuple[bytes, bytes]]:
    kinds = ["click", "add_to_cart", "add_to_cart", "add_to_cart"]
    return [
        (user.encode(), json.dumps({"event_id": f"{user}-{i}", "user_id": user, "type": t, "ts": start + i * 20_000,
                                    "item_id": f"i{i}", "category_id": "shoes", "price": 20.0}).encode())  # fmt: skip
        for i, t in enumerate(kinds)
    ]


def metric(text: str, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(sel)}}} (\S+)$" if sel else rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_metric(worker, pred, timeout=30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = worker.metrics()
        if pred(text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"metric condition not met:\n{worker.metrics()[-2000:]}")


def test_hot_refresh_corrupted_artifact_and_silent_users(system, tmp_path):
    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    reg = Registry(tmp_path / "models" / "sequence")
    worker = new_worker(INTENTSTREAM_MODEL_DIR=str(tmp_path / "models"), INTENTSTREAM_MODEL_POLL_S="0.3",
                        INTENTSTREAM_CHURN_AFTER_MS=str(3 * DAY), INTENTSTREAM_CHURN_RISK_AFTER_MS=str(DAY))  # fmt: skip
    worker.start()
    ps = Pseudonymizer(KEY.encode())

    def intent_of(raw_user: str, start: int) -> dict:
        produce(bootstrap, settings.events_topic, cart_session(raw_user, start))
        user = ps(raw_user)
        msgs = consume(bootstrap, [settings.intent_topic], until=lambda m: any(s["user"] == user for s in jsonl(m)))
        (sig,) = [s for s in jsonl(msgs) if s["user"] == user]
        return sig

    # 1. No model in the registry: the online side serves alone.
    a = intent_of("ann", T0)
    assert "sequence" not in a["model_versions"]

    # 2. A promoted version is picked up by the running worker, no restart.
    v1 = publish(reg, tmp_path, 1)
    reg.promote(v1)
    wait_metric(worker, lambda t: metric(t, "intentstream_model_refresh_total", result="success") >= 1)
    b = intent_of("bob", T0 + 60_000)
    assert b["model_versions"]["sequence"] == f"seq-{v1}"
    assert any(r["feature"] == "sequence_model" for r in b["reasons"])
    assert any(r["feature"].startswith("sequence:") for r in b["reasons"]), "occlusion attributions"

    # 3. A version corrupted in storage (forced current past promote's checks) is rejected with a
    #    logged reason; scoring goes on with the served version.
    v2 = publish(reg, tmp_path, 2)
    art = reg.path(v2) / CHECKPOINT_NAME
    art.write_bytes(art.read_bytes()[:64])
    state = json.loads((reg.root / "state.json").read_text())
    (reg.root / "state.json").write_text(json.dumps({**state, "current": v2}))
    text = wait_metric(worker, lambda t: metric(t, "intentstream_model_refresh_total", result="failure") >= 1)
    assert f'version="seq-{v1}"' in text, "the served version stays"
    c = intent_of("cid", T0 + 120_000)
    assert c["model_versions"]["sequence"] == f"seq-{v1}"

    # 4. A good version promoted after the broken one replaces the served one.
    v3 = publish(reg, tmp_path, 3)
    reg.promote(v3)
    wait_metric(worker, lambda t: metric(t, "intentstream_model_refresh_total", result="success") >= 2)
    d = intent_of("dan", T0 + 180_000)
    assert d["model_versions"]["sequence"] == f"seq-{v3}"

    # 5. Silent users: once other users' events move the event-time watermark four days on (on
    #    every partition: watermarks are per partition), the users above get churn-risk signals
    #    though no event of theirs triggers them.
    later: dict[int, str] = {}
    for i in range(200):
        later.setdefault(partition_for(ps(f"later{i}"), settings.events_partitions), f"later{i}")
    assert len(later) == settings.events_partitions
    produce(bootstrap, settings.events_topic, [m for u in later.values() for m in cart_session(u, T0 + 4 * DAY)])
    silent = {ps(u) for u in ("ann", "bob", "cid", "dan")}
    churn = jsonl(consume(bootstrap, [settings.churn_topic], until=lambda m: {s["user"] for s in jsonl(m)} >= silent))
    assert {s["user"] for s in churn} == silent
    for s in churn:
        assert s["event_id"].startswith("silence:") and s["score"] >= s["threshold"]
        assert s["model_versions"]["sequence"] == f"seq-{v3}", "churn horizons match: blended"
    worker.stop()
    log = worker.log.read_text()
    assert f"sequence model {v2} rejected" in log and "checksum" in log
    assert "ann" not in log and "bob" not in log
