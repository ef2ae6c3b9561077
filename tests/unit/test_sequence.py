"""The sequence model: features, labels, training on a planted pattern, checkpoints, scoring."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from models.events import Event
from models.features.recent import RecentEvent
from models.sequence import checkpoint
from models.sequence.config import MINUTE_MS, SeqConfig
from models.sequence.data import (
    NUM_FEATURES,
    build_windows,
    history_labels,
    time_split,
    user_histories,
    window_features,
)
from models.sequence.scorer import SequenceScorer
from models.sequence.train import roc_auc, train

T0 = 1_700_000_000_000
DAY = 86_400_000

TINY = SeqConfig(
    max_len=16,
    d_model=16,
    item_buckets=512,
    category_buckets=256,
    query_buckets=64,
    batch_size=16,
    lr=1e-2,
    max_epochs=3,
    patience=3,
    dropout=0.0,
)


def ev(
    i: int,
    user: str,
    typ: str,
    ts: int,
    item: str | None = "i",
    cat: str | None = "c",
    price=None,
    query=None,
) -> Event:
    return Event(f"e{i}", user, typ, ts, item_id=item, category_id=cat, price=price, query=query)


def planted(n_users: int = 60, seed: int = 0) -> list[Event]:
    """Shoppers whose purchases follow a cart of the same item a few minutes later, and browsers
    who never cart nor buy. Each user stays within three "home" categories, so the next category
    is predictable from the user's own window. Sessions are spread over 10 days."""
    rng = random.Random(seed)
    out: list[Event] = []
    n = 0
    for u in range(n_users):
        user = f"u{u}"
        buyer = u % 2 == 0
        home = [f"c{rng.randrange(200)}" for _ in range(3)]
        for s in range(6):
            t = T0 + int((s + rng.random()) * DAY * 10 / 6)
            cat = rng.choice(home)
            for _ in range(rng.randint(2, 5)):
                out.append(ev(n, user, "click", t, item=f"i{rng.randrange(1000)}", cat=cat, price=10.0))
                n += 1
                t += rng.randint(10, 120) * 1000
            if buyer:
                item = f"i{rng.randrange(1000)}"
                out.append(ev(n, user, "add_to_cart", t, item=item, cat=cat, price=10.0))
                out.append(ev(n + 1, user, "purchase", t + 5 * MINUTE_MS, item=item, cat=cat, price=10.0))
                n += 2
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """CI machines have 2 shared cores: more threads than that only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(one_thread):
    torch.manual_seed(0)
    return train(planted(), TINY, log=None, device="cpu")


def test_window_features_see_only_earlier_events():
    cfg = SeqConfig(max_len=8)
    rec = [
        RecentEvent.from_event(e)
        for e in [
            ev(1, "u", "click", T0, item="a", cat="x"),
            ev(2, "u", "add_to_cart", T0 + 1000, item="a", cat="x"),
            ev(3, "u", "click", T0 + 2000, item="b", cat="x"),
            ev(4, "u", "click", T0 + 3000, item="a", cat="y"),
            ev(5, "u", "search", T0 + 4000, item=None, cat=None, query="Shoes"),
        ]
    ]
    f = window_features(rec, cfg)
    col = {name: f["num"][:, i].tolist() for i, name in enumerate(NUM_FEATURES)}
    assert col["item_seen"] == pytest.approx([0, np.log(2), 0, np.log(3), 0])
    assert col["item_carted"] == [0, 0, 0, 1, 0]  # a cart is only visible to later events
    assert col["cat_carted"] == [0, 0, 1, 0, 0]
    assert col["same_item_as_prev"] == [0, 1, 0, 0, 0]
    assert col["recent_carts"] == pytest.approx([0, np.log(2)] + [np.log(2)] * 3)
    assert f["gap"][0] == 0 and (f["gap"][1:] > 0).all()
    assert f["query"][4] > 0 and f["item"][4] == 0 and f["cat"][4] == 0
    # Changing a later event never changes an earlier position's features (causality).
    g = window_features(rec[:3], cfg)
    np.testing.assert_array_equal(g["num"], f["num"][:3])


def test_labels_respect_horizons_and_data_end():
    cfg = SeqConfig(intent_ms=30 * MINUTE_MS, churn_ms=DAY)
    hist = [
        RecentEvent.from_event(e)
        for e in [
            ev(1, "u", "click", T0),
            ev(2, "u", "click", T0 + 40 * MINUTE_MS),
            ev(3, "u", "purchase", T0 + 60 * MINUTE_MS),
            ev(4, "u", "click", T0 + 3 * DAY),
        ]
    ]
    lab = history_labels(hist, cfg, data_end_ms=T0 + 3 * DAY)
    # The purchase is 60 min after event 1 (too late) and 20 min after event 2.
    assert lab["intent"].tolist()[:2] == [0.0, 1.0]
    assert lab["intent_mask"].tolist() == [True, True, False, False]  # purchases and late events unscored
    assert lab["churn"].tolist()[:3] == [0.0, 0.0, 1.0]  # nothing within a day after the purchase
    assert lab["churn_mask"].tolist() == [True, True, True, False]
    assert lab["next_type"].tolist() == [0, 3, 0, -1]


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_every_event_is_a_target_exactly_once(arch):
    cfg = SeqConfig(max_len=8, lookback=6, arch=arch)
    evs = [ev(i, f"u{i % 3}", "click", T0 + i * 1000) for i in range(50)]
    w = build_windows(user_histories(evs), cfg, data_end_ms=T0 + DAY)
    assert w.n_targets == 50
    if arch == "transformer":
        assert (w.arrays["length"] <= 6).all()
    else:  # consecutive chunks: 17 + 17 + 16 events in 3 + 3 + 2 chunks of 8
        assert w.arrays["first"].tolist() == [True, False, False, True, False, False, True, False]
        assert w.arrays["target"].sum(1).tolist() == [8, 8, 1, 8, 8, 1, 8, 8]
        assert w.arrays["type"].shape == (8, 8, 6) and w.arrays["num"].shape[:3] == (8, 8, 6)


def test_time_split_has_no_label_leak():
    cfg = SeqConfig(max_len=8, val_fraction=0.5)
    evs = [
        ev(0, "u", "click", T0),
        ev(1, "u", "click", T0 + 2 * DAY - 10 * MINUTE_MS),
        ev(2, "u", "purchase", T0 + 2 * DAY + MINUTE_MS),
        ev(3, "u", "click", T0 + 4 * DAY),
    ]
    tr, va, cutoff = time_split(evs, cfg)
    assert cutoff == T0 + 2 * DAY
    # Event 1's purchase lies after the cutoff: training must not see that label at all.
    assert not tr.arrays["intent"][tr.arrays["intent_mask"]].any()
    assert va.n_targets == 2


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    p = np.round(rng.random(200), 1)  # many ties
    pos, neg = p[y], p[~y]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(y, p) == pytest.approx(pairwise)


def test_tiny_model_learns_planted_pattern(trained):
    val = trained.metrics["val"]
    # Random scores give AUC 0.5 and HR@10 about 10/200: the model must do much better.
    assert val["intent_auc"] > 0.85
    assert val["hr@10"] > 0.6
    assert trained.train_events_per_s > 0
    assert trained.metrics["epochs"] >= 1


def test_transformer_variant_trains():
    # Also covers the identity-embedding inputs (off by default).
    cfg = SeqConfig(
        **{**TINY.to_dict(), "arch": "transformer", "n_layers": 1, "max_epochs": 2, "id_embeddings": True}
    )
    res = train(planted(30), cfg, log=None, device="cpu")
    assert res.metrics["val"]["intent_auc"] > 0.7


def test_save_load_gives_identical_scores(trained, tmp_path):
    path = tmp_path / "seq.pt"
    trained.save(path)
    scorer = SequenceScorer.load(path)
    hist = user_histories(planted())
    windows = [h[-TINY.max_len :] for h in hist.values()]
    a = SequenceScorer(checkpoint.Loaded(trained.model, TINY, trained.vocab, {}, (0, 0), "", 1)).score_batch(
        windows
    )
    b = scorer.score_batch(windows)
    np.testing.assert_allclose(a.p_intent, b.p_intent, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.p_churn, b.p_churn, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.top_buckets, b.top_buckets)
    # Top-k buckets are named with real category ids from the training data.
    assert b.top_categories[0][0] is not None and b.top_categories[0][0].startswith("c")
    assert scorer.config == TINY and scorer.metrics["val"]["intent_auc"] > 0.85


def test_scores_separate_carts_from_browsing(trained):
    scorer = SequenceScorer(checkpoint.Loaded(trained.model, TINY, trained.vocab, {}, (0, 0), "", 1))
    t = T0 + 20 * DAY
    browse = [
        RecentEvent.from_event(ev(i, "x", "click", t + i * 30_000, item=f"i{i}", cat="c1")) for i in range(4)
    ]
    cart = browse + [RecentEvent.from_event(ev(9, "x", "add_to_cart", t + 200_000, item="i3", cat="c1"))]
    s = scorer.score_batch([browse, cart])
    assert s.p_intent[1] > s.p_intent[0] + 0.1


def test_gru_advance_matches_the_window_from_zeros(trained):
    scorer = SequenceScorer(checkpoint.Loaded(trained.model, TINY, trained.vocab, {}, (0, 0), "", 1))
    hist = list(user_histories(planted()).values())[:5]
    windows = [h[: TINY.lookback] for h in hist]
    prev = scorer.from_window([w[:-1] for w in windows])
    stepped = scorer.advance(windows, prev.state)
    full = scorer.score_batch(windows)
    np.testing.assert_allclose(stepped.p_intent, full.p_intent, atol=1e-5)
    np.testing.assert_allclose(stepped.state, full.state, atol=1e-5)
    np.testing.assert_array_equal(stepped.top_buckets, full.top_buckets)
    assert stepped.state.dtype == np.float32 and stepped.state.shape == (5, TINY.n_layers, TINY.d_model)
    first = scorer.advance([w[:1] for w in windows], np.zeros((5, TINY.n_layers, TINY.d_model), np.float32))
    np.testing.assert_allclose(first.p_churn, scorer.from_window([w[:1] for w in windows]).p_churn, atol=1e-6)
    again = scorer.at_state(windows, stepped.state, latent=[True, False, True, True, False])
    np.testing.assert_allclose(again.p_intent, stepped.p_intent, atol=1e-6)
    np.testing.assert_array_equal(again.top_buckets[[0, 2, 3]], stepped.top_buckets[[0, 2, 3]])
    assert not again.top_buckets[[1, 4]].any()


def _chunk_forward(model, w):
    """Per-target (p_intent, p_churn, top-10 buckets, their probabilities) of the training
    forward pass: each user's chunks in order, the state carried from one to the next."""
    from models.sequence.train import DeviceWindows

    dw = DeviceWindows(w, torch.device("cpu"))
    out: list[tuple] = []
    h = None
    with torch.no_grad():
        for r in range(len(dw)):
            b = dw.batch(np.array([r]))
            xk, hs, h_n = model.encode_chunks(b, None if w.arrays["first"][r] else h)
            h = h_n
            il, cl = model._binary_heads(hs, b["num"][:, :, -1])
            tgt = b["target"]
            dist = model.next_category_dist_ring(hs[tgt], xk[tgt], b["cat"][tgt])
            top_p, top_b = dist.topk(10, dim=1)
            for i in range(int(tgt.sum())):
                out.append((torch.sigmoid(il[tgt])[i], torch.sigmoid(cl[tgt])[i], top_b[i], top_p[i]))
    return out


@pytest.mark.parametrize("max_len,lookback", [(8, 5), (4, 16), (16, 16)])
def test_advancing_event_by_event_equals_the_chunked_training_pass(max_len, lookback):
    """Serving advances each user's state by one GRU step per event from zeros; training runs
    whole histories in chunks of ``max_len`` with the state carried. Both give the same scores at
    every event of histories longer than ``max_len`` and than the ring."""
    from models.sequence.model import SequenceModel

    torch.manual_seed(1)
    cfg = dataclasses.replace(TINY, max_len=max_len, lookback=lookback, category_buckets=64)
    model = SequenceModel(cfg).eval()
    scorer = SequenceScorer(checkpoint.Loaded(model, cfg, {}, {}, (0, 0), "", 1))
    hist = {u: h[:37] for u, h in list(user_histories(planted(8)).items())[:4]}
    assert all(len(h) > max(max_len, lookback) + 3 for h in hist.values())
    train_pass = _chunk_forward(model, build_windows(hist, cfg, data_end_ms=T0 + 30 * DAY))
    served = []
    for h in hist.values():
        state = np.zeros((1, cfg.n_layers, cfg.d_model), np.float32)
        for i in range(len(h)):
            out = scorer.advance([h[max(0, i - lookback + 1) : i + 1]], state)
            state = out.state
            served.append(out)
    assert len(served) == len(train_pass)
    for out, (p_i, p_c, top_b, top_p) in zip(served, train_pass, strict=True):
        assert out.p_intent[0] == pytest.approx(float(p_i), abs=1e-5)
        assert out.p_churn[0] == pytest.approx(float(p_c), abs=1e-5)
        np.testing.assert_allclose(out.top_probs[0], top_p.numpy(), atol=1e-5)
        distinct = np.append(np.diff(top_p.numpy()) < -1e-5, True)
        np.testing.assert_array_equal(out.top_buckets[0][distinct], top_b.numpy()[distinct])


def test_from_window_longer_than_the_ring_rebuilds_the_whole_windows_state():
    """A window longer than the ring: the state runs over all of it, the heads read the ring."""
    from models.sequence.model import SequenceModel

    torch.manual_seed(2)
    cfg = dataclasses.replace(TINY, max_len=12, lookback=5, category_buckets=64)
    scorer = SequenceScorer(checkpoint.Loaded(SequenceModel(cfg).eval(), cfg, {}, {}, (0, 0), "", 1))
    hist = list(user_histories(planted(6)).values())[:3]
    state = np.zeros((3, cfg.n_layers, cfg.d_model), np.float32)
    for i in range(12):
        out = scorer.advance([h[max(0, i - 4) : i + 1] for h in hist], state)
        state = out.state
    full = scorer.from_window([h[:12] for h in hist])
    np.testing.assert_allclose(full.state, out.state, atol=1e-5)
    np.testing.assert_allclose(full.p_intent, out.p_intent, atol=1e-5)
    np.testing.assert_array_equal(full.top_buckets, out.top_buckets)
    with pytest.raises(ValueError, match="state must have shape"):
        scorer.advance([h[:3] for h in hist], state[:2])


def test_a_checkpoint_from_before_lookback_loads_and_scores_as_before(trained, tmp_path):
    """Checkpoints written before ``lookback`` existed hold ``max_len`` only: their windows were
    ``max_len`` events, so that is their look-back, and they score the same."""
    path = tmp_path / "seq.pt"
    old_cfg = dataclasses.replace(TINY, max_len=16, lookback=16)
    checkpoint.save(path, trained.model, old_cfg, vocab=trained.vocab)
    blob = torch.load(path, weights_only=True)
    del blob["config"]["lookback"]
    torch.save(blob, path)
    loaded = SequenceScorer.load(path)
    assert loaded.config.lookback == 16 and loaded.config.max_len == 16
    windows = [h[-16:] for h in user_histories(planted()).values()]
    same = SequenceScorer(checkpoint.Loaded(trained.model, old_cfg, trained.vocab, {}, (0, 0), "", 1))
    a, b = loaded.score_batch(windows), same.score_batch(windows)
    assert np.array_equal(a.p_intent, b.p_intent) and np.array_equal(a.top_buckets, b.top_buckets)


def test_now_ms_ignores_events_after_now(trained):
    scorer = SequenceScorer(checkpoint.Loaded(trained.model, TINY, trained.vocab, {}, (0, 0), "", 1))
    w = list(user_histories(planted()).values())[0][:6]
    a = scorer.score_batch([w], now_ms=w[3].ts)
    b = scorer.score_batch([w[:4]])
    np.testing.assert_allclose(a.p_intent, b.p_intent)


def test_unusable_checkpoints_are_refused(trained, tmp_path):
    good = tmp_path / "seq.pt"
    trained.save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError):
        SequenceScorer.load(truncated)
    blob = torch.load(good, weights_only=True)
    blob["feature_schema_version"] = 999
    other = tmp_path / "other.pt"
    torch.save(blob, other)
    with pytest.raises(checkpoint.CheckpointError, match="feature schema"):
        SequenceScorer.load(other)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_and_scores_on_cuda_with_mixed_precision(tmp_path):
    res = train(planted(), TINY, log=None, device="cuda")
    assert res.device.startswith("cuda") and res.metrics["val"]["intent_auc"] > 0.8
    assert res.metrics["step"] == "cuda_graph"  # replayed steps learn as eager ones do
    res.save(tmp_path / "seq.pt")
    cpu = SequenceScorer.load(tmp_path / "seq.pt")
    gpu = SequenceScorer.load(tmp_path / "seq.pt", device="cuda")
    windows = [h[-TINY.max_len :] for h in user_histories(planted()).values()]
    np.testing.assert_allclose(
        cpu.score_batch(windows).p_intent, gpu.score_batch(windows).p_intent, atol=1e-3
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_falls_back_to_eager_steps_when_capture_fails(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    eager = train(planted(), TINY, log=None, device="cuda", cuda_graph=False)
    assert eager.metrics["step"] == "eager" and eager.metrics["val"]["intent_auc"] > 0.8
    monkeypatch.setattr(torch.cuda, "graph", refuse)
    res = train(planted(), TINY, log=None, device="cuda")
    assert res.metrics["step"].startswith("eager (CUDA graph capture failed: RuntimeError: operation not")
    assert res.metrics["val"]["intent_auc"] > 0.8


def test_registry_serves_checkpoints_and_refuses_a_broken_one(trained, tmp_path):
    from models.registry import ArtifactError, Registry

    def load(p):
        return SequenceScorer.load(p / "seq.pt")

    art = tmp_path / "art"
    art.mkdir()
    trained.save(art / "seq.pt")
    reg = Registry(tmp_path / "reg")
    v1 = reg.save(art, {"metrics": {"val_intent_auc": 0.8}})
    assert reg.promote_if_better(v1, "val_intent_auc", loader=load)
    (art / "seq.pt").write_bytes(b"garbage")  # an incompatible artifact with a better claimed metric
    v2 = reg.save(art, {"metrics": {"val_intent_auc": 0.99}})
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        reg.promote_if_better(v2, "val_intent_auc", loader=load)
    version, scorer = reg.load_current(load)
    assert version == v1 and isinstance(scorer, SequenceScorer)


def test_top_next_categories_equals_the_full_mixture_topk():
    """The candidate-only top-k used for scoring is exact (same buckets, same probabilities)."""
    import torch

    from models.sequence.config import SeqConfig
    from models.sequence.model import SequenceModel

    torch.manual_seed(3)
    cfg = SeqConfig(d_model=16, category_buckets=64, max_len=8)
    m = SequenceModel(cfg).eval()
    B, L = 40, cfg.max_len
    h, x = torch.randn(B, L, cfg.d_model), torch.randn(B, L, cfg.d_model)
    cats = torch.randint(0, 6, (B, L))  # few buckets: repeats, zeros, overlap with the generator
    q = torch.randint(0, L, (B,))
    with torch.no_grad():
        ref_p, ref_b = m.next_category_dist(h, x, cats, q).topk(10, dim=1)
        p, b = m.top_next_categories(h, x, cats, q, 10)
    torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-6)
    # Buckets agree wherever the probabilities are not tied.
    distinct = torch.cat([ref_p[:, :-1] - ref_p[:, 1:] > 1e-6, torch.ones(B, 1, dtype=torch.bool)], 1)
    assert torch.equal(b[distinct], ref_b[distinct])


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_score_last_equals_the_heads_read_from_the_padded_encoding(arch):
    """``score_last`` reads each window's encoding at its last real event straight from the GRU's
    final state; the heads on the padded outputs at that position give the same bits."""
    from torch import nn

    from models.sequence.data import N_NUM, N_TYPES
    from models.sequence.model import SequenceModel

    torch.manual_seed(5)
    cfg = dataclasses.replace(TINY, arch=arch)
    m = SequenceModel(cfg).eval()
    B, L = 37, cfg.max_len
    length = torch.randint(1, L + 1, (B,))
    real = torch.arange(L)[None, :] < length[:, None]
    b = {
        "type": torch.randint(1, N_TYPES + 1, (B, L)) * real,
        "item": torch.randint(0, cfg.item_buckets, (B, L)) * real,
        "cat": torch.randint(0, 6, (B, L)) * real,  # few buckets: repeats and overlaps
        "query": torch.randint(0, cfg.query_buckets, (B, L)) * real,
        "gap": torch.randint(0, cfg.gap_buckets, (B, L)) * real,
        "num": torch.randn(B, L, N_NUM) * real[..., None],
        "length": length,
    }
    latent = torch.rand(B) < 0.4
    with torch.inference_mode():
        p_i, p_c, top_b, top_p, _ = m.score_last(b, 10, latent=latent)
        x, last, ar = m.embed(b), length - 1, torch.arange(B)
        if arch == "gru":
            packed = nn.utils.rnn.pack_padded_sequence(x, length, batch_first=True, enforce_sorted=False)
            h, _ = nn.utils.rnn.pad_packed_sequence(m.rnn(packed)[0], batch_first=True, total_length=L)
        else:
            h = m.encode(x)
        il, cl = m._binary_heads(h[ar, last], b["num"][ar, last])
        rows = latent.nonzero().squeeze(1)
        ref_p, ref_b = m.top_next_categories(h[rows], x[rows], b["cat"][rows], last[rows], 10)
    assert torch.equal(p_i, torch.sigmoid(il)) and torch.equal(p_c, torch.sigmoid(cl))
    assert torch.equal(top_p[rows], ref_p) and torch.equal(top_b[rows], ref_b)
    assert not top_p[~latent].any() and not top_b[~latent].any()  # no next categories asked


def test_batch_size_zero_means_the_devices_default_and_is_stored():
    res = train(planted(20), dataclasses.replace(TINY, batch_size=0, max_epochs=1), log=None, device="cpu")
    assert res.config.batch_size == 32 and res.metrics["step"] == "eager"
    with pytest.raises(ValueError, match="batch_size"):
        SeqConfig(batch_size=-1)


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_loss_parts_are_means_over_the_labelled_targets(arch):
    """The dense, masked loss (no data-dependent shapes, so a GPU never waits inside a step) equals
    the mean over the labelled target positions; the next-category term is the same whether its
    softmax runs on every position (GPU) or on the target positions only (CPU); and a batch
    without labels gives a zero loss that still back-propagates."""
    import torch.nn.functional as F

    from models.sequence.model import SequenceModel
    from models.sequence.train import DeviceWindows

    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, dropout=0.0, arch=arch, max_len=8, lookback=6)
    w, _, _ = time_split(planted(20), cfg)
    b = DeviceWindows(w, torch.device("cpu")).batch(np.arange(min(len(w), 24)))
    model = SequenceModel(cfg)
    if arch == "gru":
        h0 = torch.randn(cfg.n_layers, len(b["target"]), cfg.d_model)
        _, parts, _ = model.forward_chunks(b, h0)
        x, h, _ = model.encode_chunks(b, h0)
        num = b["num"][:, :, -1]

        def next_cat_prob(m, dense):
            return model._next_cat_prob_ring(h, x, b, m, dense=dense)
    else:
        _, parts = model(b)
        x = model.embed(b)
        h = model.encode(x)
        num = b["num"]

        def next_cat_prob(m, dense):
            return model._next_cat_prob(h, x, b, m, dense=dense)

    il, cl = model._binary_heads(h, num)
    m = b["target"] & b["intent_mask"]
    assert m.any() and not m.all()
    torch.testing.assert_close(parts["intent"], F.binary_cross_entropy_with_logits(il[m], b["intent"][m]))
    m = b["target"] & b["churn_mask"]
    torch.testing.assert_close(parts["churn"], F.binary_cross_entropy_with_logits(cl[m], b["churn"][m]))
    m = b["target"] & (b["next_type"] >= 0)
    torch.testing.assert_close(parts["next_type"], F.cross_entropy(model.next_type_head(h[m]), b["next_type"][m]))
    m = b["target"] & (b["next_cat"] >= 0)
    dense = next_cat_prob(m, True)
    torch.testing.assert_close(dense[m], next_cat_prob(m, False)[m])
    torch.testing.assert_close(parts["next_category"], -torch.log(dense[m] + 1e-8).mean())

    unlabelled = dict(b, target=torch.zeros_like(b["target"]))
    loss, parts = model(unlabelled) if arch == "transformer" else model.forward_chunks(unlabelled)[:2]
    assert float(loss.detach()) == 0.0 and all(float(v.detach()) == 0.0 for v in parts.values())
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(not g.any() for g in grads)  # back-propagates, and moves nothing
