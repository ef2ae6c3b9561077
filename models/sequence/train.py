"""Train the sequence model on a list of events, with early stopping on a time-based split.

Example (``events`` from ``models.datasets.importers.load_events`` or the archive)::

    result = train(events, SeqConfig(arch="gru"))
    result.save("seq.pt")
    result.metrics["val"]["intent_auc"], result.train_events_per_s

The GRU trains by truncated backpropagation through time over each user's whole history: the
history in consecutive chunks of ``max_len`` events, the hidden state carried (detached) from one
chunk to the next and zero at the user's first event, so the state at any event is the one the
stream keeps by advancing it one event at a time. Users are laid out in ``batch_size`` lanes
(:func:`lanes`); a step trains the next chunk of every lane. The transformer trains on windows.

Uses CUDA with ``torch.autocast`` mixed precision (bfloat16 where supported, else float16 with a
gradient scaler) when a GPU is present, and plain float32 on the CPU. Reports training
throughput as target events per second of optimiser time.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, TextIO

import numpy as np
import torch

from models.events import Event
from models.sequence import checkpoint
from models.sequence.config import SeqConfig
from models.sequence.data import Windows, category_vocab, time_split
from models.sequence.model import SequenceModel


@dataclasses.dataclass
class TrainResult:
    model: SequenceModel
    config: SeqConfig
    vocab: dict[int, str]  # category bucket -> category_id
    metrics: dict[str, Any]  # "val" (best epoch), "history", "epochs", "best_epoch"
    data_range: tuple[int, int]  # (first, last) event ts in ms
    cutoff_ms: int  # start of the validation period
    train_events_per_s: float  # target events per second of training (forward + backward + step)
    device: str

    def save(self, path: str) -> None:
        checkpoint.save(
            path, self.model, self.config, vocab=self.vocab, metrics=self.metrics, data_range=self.data_range
        )


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_batch_size(device: torch.device, arch: str = "gru") -> int:
    """``SeqConfig.batch_size=0``. The GRU: 32 lanes of chunks per step on any device, as a lane
    holds several users' whole histories and more lanes leave too few steps per epoch on data of
    a few hundred users (docs/SEQUENCE.md). The transformer: 32 windows on the CPU, 256 on a GPU."""
    if arch == "gru":
        return 32
    return 256 if device.type == "cuda" else 32


def autocast_for(device: torch.device):
    """Mixed precision on CUDA (bf16 if the GPU has it, else fp16); nothing on the CPU, where
    autocast is slower than float32 for models this small."""
    if device.type != "cuda":
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def lanes(first: np.ndarray, n_lanes: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lay out users' chunks in ``n_lanes`` lanes for stateful training or prediction.

    ``first`` (n_chunks,) marks each user's first chunk (a user's chunks are consecutive rows).
    Users, in ``rng``'s random order (or in order), go to the lane with the fewest chunks so far,
    so the lanes end close together. Returns ``idx`` (steps, n_lanes), the chunk each lane reads
    at each step (``n_chunks`` where a lane has run out: the padding chunk), and ``keep``
    (steps, n_lanes), false where the state must start from zeros (a user's first chunk).
    """
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(first))
    order = rng.permutation(len(starts)) if rng is not None else np.arange(len(starts))
    heap = [(0, lane) for lane in range(n_lanes)]
    rows: list[list[int]] = [[] for _ in range(n_lanes)]
    for u in order:
        load, lane = heapq.heappop(heap)
        rows[lane].extend(range(starts[u], ends[u]))
        heapq.heappush(heap, (load + ends[u] - starts[u], lane))
    steps = max(len(r) for r in rows)
    idx = np.full((steps, n_lanes), len(first), np.int64)
    keep = np.zeros((steps, n_lanes), bool)
    for lane, r in enumerate(rows):
        idx[: len(r), lane] = r
        keep[: len(r), lane] = ~first[r]
    return idx, keep


class DeviceWindows:
    """A :class:`Windows`' arrays as tensors on the training device, copied there once.

    Batches are gathered on the device (``index_select``), so a GPU is not fed by a host-side
    gather and a copy per step. On the CPU the tensors share the arrays' memory. The number of
    target events per window stays on the host, so counting trained events never waits for the GPU.
    GRU chunks get one more row, all padding and no targets, for the lanes that have run out.
    """

    def __init__(self, w: Windows, device: torch.device) -> None:
        self.device = device
        self.stateful = w.stateful
        self.n = len(w)
        arrays = dict(w.arrays)
        if self.stateful:
            self.first = arrays.pop("first")
            self.user = arrays.pop("user")
            arrays = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in arrays.items()}
        self.tensors = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        self.targets_per_window = arrays["target"].sum(1)

    def __len__(self) -> int:
        return self.n

    @property
    def n_users(self) -> int:
        return int(self.first.sum()) if self.stateful else self.n

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        i = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(self.device, non_blocking=True)
        return self.gather(i)

    def gather(self, i: torch.Tensor) -> dict[str, torch.Tensor]:
        """The windows at positions ``i`` (a long tensor on the device)."""
        return {k: v.index_select(0, i) for k, v in self.tensors.items()}


class TrainStep:
    """One optimiser step on the windows at device positions ``idx``: gather, forward, backward,
    gradient clipping, AdamW. Returns the loss as a device tensor (reading it waits for the GPU).

    For GRU chunks the step keeps each lane's state (``h``, n_layers x lanes x d): a step starts
    from it where ``keep`` is set (zeros elsewhere: a user's first chunk) and leaves the state after
    its chunk, detached, for the lane's next chunk.
    """

    def __init__(
        self, model: SequenceModel, opt: torch.optim.Optimizer, data: DeviceWindows, amp, scaler, n_lanes: int = 0
    ) -> None:
        self.model, self.opt, self.data, self.amp, self.scaler = model, opt, data, amp, scaler
        cfg = model.cfg
        self.h = torch.zeros(cfg.n_layers, n_lanes, cfg.d_model, device=data.device) if data.stateful else None

    def _forward_backward(self, idx: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        with self.amp:
            if self.h is not None:
                assert keep is not None
                h0 = self.h * keep.view(1, -1, 1).to(self.h.dtype)
                loss, _, h_n = self.model.forward_chunks(self.data.gather(idx), h0)
            else:
                loss, _ = self.model(self.data.gather(idx))
        if self.h is not None:
            self.h.copy_(h_n.detach())
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return loss.detach()

    def __call__(self, idx: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        return self._forward_backward(idx, keep)


class CudaGraphStep(TrainStep):
    """The same step, captured once as a CUDA graph and replayed for every later batch.

    A model this small is limited on a GPU by launching its ~400 kernels per step from Python
    (profiled in docs/SEQUENCE.md), not by the GPU's arithmetic; a replay is one launch. The first
    ``WARMUP`` steps run eagerly on a side stream (cuDNN and cuBLAS pick their algorithms, AdamW
    creates its state), as graph capture requires; they are real training steps. Every replay
    needs a batch of exactly ``batch_size`` windows, and nothing in the step may wait for the
    device: the loss has no data-dependent shapes, AdamW is fused and ``capturable``, and float16's
    gradient scaler (which reads an overflow flag) is not supported here.
    """

    WARMUP = 3

    def __init__(self, model, opt, data: DeviceWindows, amp, batch_size: int) -> None:
        super().__init__(model, opt, data, amp, None, batch_size)
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=data.device)
        self.keep = torch.zeros(batch_size, dtype=torch.bool, device=data.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.warm = 0
        self.error: str | None = None  # why capture failed; the steps then stay eager

    def __call__(self, idx: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if self.error is not None:
            return super().__call__(idx, keep)
        self.idx.copy_(idx)
        if keep is not None:
            self.keep.copy_(keep)
        if self.graph is None and self.warm < self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                loss = self._forward_backward(self.idx, self.keep)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return loss
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):  # records the step; runs nothing
                    self.loss = self._forward_backward(self.idx, self.keep)
            except RuntimeError as e:  # an op that cannot be captured (a library, a driver)
                self.error = f"{type(e).__name__}: {e}".splitlines()[0]
                return super().__call__(idx, keep)
            self.graph = graph
        self.graph.replay()
        assert self.loss is not None
        return self.loss


def eval_batch_size(device: torch.device) -> int:
    """Windows per prediction batch: small on the CPU (cache-friendly), large on a GPU."""
    return 1024 if device.type == "cuda" else 64


# -- metrics (small, dependency-free) -----------------------------------------------------------
def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC with ties counted half (Mann-Whitney U); NaN when only one class is present."""
    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), float)
    sp = np.asarray(p)[order]
    i = 0
    while i < len(sp):  # average ranks over ties
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@torch.no_grad()
def predict(
    model: SequenceModel,
    w: Windows | DeviceWindows,
    device: torch.device,
    batch_size: int | None = None,
    k: int = 10,
) -> dict[str, np.ndarray]:
    """Predictions at every target position: p_intent, p_churn, next-type probs, top-k categories,
    with the matching labels and masks (flattened over target positions). ``w`` may already be on
    ``device`` (training validates the same windows every epoch). GRU chunks are read in lanes
    with the state carried, so every user's state runs from zeros over their whole history."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {
        k_: []
        for k_ in (
            "p_intent",
            "p_churn",
            "topk",
            "intent",
            "intent_mask",
            "churn",
            "churn_mask",
            "next_cat",
            "next_type",
            "p_type",
        )
    }
    amp, _ = autocast_for(device)
    batch_size = batch_size or eval_batch_size(device)
    dw = w if isinstance(w, DeviceWindows) else DeviceWindows(w, device)
    if dw.stateful:
        _predict_chunks(model, dw, device, batch_size, k, out, amp)
        return {k_: np.concatenate(v) for k_, v in out.items()}
    for s in range(0, len(dw), batch_size):
        b = dw.batch(np.arange(s, min(s + batch_size, len(dw))))
        with amp:
            x = model.embed(b)
            h = model.encode(x)
            il, cl = model._binary_heads(h, b["num"])
            tgt = b["target"]
            bi, qi = tgt.nonzero(as_tuple=True)
            # Next-category distribution per target position: process as a batch of (window, query).
            dist = model.next_category_dist(h[bi], x[bi], b["cat"][bi], qi)
            out["topk"].append(dist.topk(k, dim=1).indices.cpu().numpy())
            out["p_type"].append(torch.softmax(model.next_type_head(h[tgt]).float(), -1).cpu().numpy())
        out["p_intent"].append(torch.sigmoid(il[tgt].float()).cpu().numpy())
        out["p_churn"].append(torch.sigmoid(cl[tgt].float()).cpu().numpy())
        for key in ("intent", "intent_mask", "churn", "churn_mask", "next_cat", "next_type"):
            out[key].append(b[key][tgt].cpu().numpy())
    return {k_: np.concatenate(v) for k_, v in out.items()}


def _predict_chunks(model, dw: DeviceWindows, device, batch_size: int, k: int, out, amp) -> None:
    idx, keep = lanes(dw.first, min(batch_size, dw.n_users))
    cfg = model.cfg
    h = torch.zeros(cfg.n_layers, idx.shape[1], cfg.d_model, device=device)
    keep_dev = torch.from_numpy(keep).to(device)
    for t in range(len(idx)):
        b = dw.batch(idx[t])
        with amp:
            xk, hs, h_n = model.encode_chunks(b, h * keep_dev[t].view(1, -1, 1).to(h.dtype))
            il, cl = model._binary_heads(hs, b["num"][:, :, -1])
            tgt = b["target"]
            hq, xq, cq = hs[tgt], xk[tgt], b["cat"][tgt]
            # The full next-category distribution is (targets x buckets): in slices, to bound memory.
            for s in range(0, len(hq), 1024):
                dist = model.next_category_dist_ring(hq[s : s + 1024], xq[s : s + 1024], cq[s : s + 1024])
                out["topk"].append(dist.topk(k, dim=1).indices.cpu().numpy())
            out["p_type"].append(torch.softmax(model.next_type_head(hq).float(), -1).cpu().numpy())
        h = h_n.float()
        out["p_intent"].append(torch.sigmoid(il[tgt].float()).cpu().numpy())
        out["p_churn"].append(torch.sigmoid(cl[tgt].float()).cpu().numpy())
        for key in ("intent", "intent_mask", "churn", "churn_mask", "next_cat", "next_type"):
            out[key].append(b[key][tgt].cpu().numpy())
    if not out["topk"]:
        out["topk"].append(np.zeros((0, k), np.int64))


def metrics_from(pred: dict[str, np.ndarray], k: int = 10) -> dict[str, float]:
    im, cm = pred["intent_mask"], pred["churn_mask"]
    has_next = pred["next_cat"] >= 0
    hits = pred["topk"][has_next] == pred["next_cat"][has_next, None]
    rank = np.where(hits.any(1), hits.argmax(1) + 1, 0)
    nt = pred["next_type"] >= 0
    return {
        "intent_auc": roc_auc(pred["intent"][im], pred["p_intent"][im]),
        "intent_n": int(im.sum()),
        "intent_pos": int(pred["intent"][im].sum()),
        "churn_auc": roc_auc(pred["churn"][cm], pred["p_churn"][cm]),
        "churn_n": int(cm.sum()),
        f"hr@{k}": float(hits.any(1).mean()) if len(hits) else float("nan"),
        f"mrr@{k}": float(np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0.0).mean())
        if len(hits)
        else float("nan"),
        "next_cat_n": int(has_next.sum()),
        "next_type_acc": float((pred["p_type"][nt].argmax(1) == pred["next_type"][nt]).mean())
        if nt.any()
        else float("nan"),
    }


def evaluate(
    model: SequenceModel, w: Windows | DeviceWindows, device: torch.device | None = None, k: int = 10
) -> dict[str, float]:
    device = device or next(model.parameters()).device
    return metrics_from(predict(model, w, device, k=k), k=k)


def _score(m: dict[str, float]) -> float:
    """Early-stopping criterion: mean of the two product metrics (intent AUC, next-category HR@10)."""
    vals = [v for v in (m["intent_auc"], m["hr@10"]) if v == v]
    return float(np.mean(vals)) if vals else -float("inf")


def _progress(log: TextIO | None, epoch: int, n_epochs: int, done: int, total: int, loss: float) -> None:
    if log is None:
        return
    width = 30
    fill = int(width * done / max(total, 1))
    log.write(
        f"\repoch {epoch}/{n_epochs} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} loss {loss:.4f}"
    )
    log.flush()


def _step_kind(step: TrainStep) -> str:
    if not isinstance(step, CudaGraphStep):
        return "eager"
    return "cuda_graph" if step.error is None else f"eager (CUDA graph capture failed: {step.error})"


def train(
    events: Sequence[Event],
    cfg: SeqConfig,
    *,
    device: str | None = None,
    log: TextIO | None = sys.stderr,
    max_seconds: float | None = None,
    split: tuple[Windows, Windows, int] | None = None,
    cuda_graph: bool = True,
) -> TrainResult:
    """Fit on ``events`` (any order, many users); validate on the last ``val_fraction`` of time.

    Keeps the weights of the epoch with the best validation score (mean of intent ROC AUC and
    next-category HR@10) and stops after ``cfg.patience`` epochs without improvement, after
    ``cfg.max_epochs``, or once ``max_seconds`` of training have passed. ``split``, the result of
    ``time_split(events, cfg)``, saves rebuilding the windows when the same events are trained
    several times (benchmarks); it must come from a config with the same window and label fields.
    On a GPU the training step is replayed as a CUDA graph (:class:`CudaGraphStep`) unless
    ``cuda_graph`` is false, float16 needs a gradient scaler, or there is no full batch.
    """
    if not events:
        raise ValueError("no events to train on")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = pick_device(device)
    if cfg.batch_size == 0:
        cfg = dataclasses.replace(cfg, batch_size=default_batch_size(dev, cfg.arch))
    train_w, val_w, cutoff = split or time_split(events, cfg)
    vocab = category_vocab((e for e in events if e.ts < cutoff), cfg)
    model = SequenceModel(cfg).to(dev)
    amp, amp_dtype = autocast_for(dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    data = DeviceWindows(train_w, dev)
    val_data = DeviceWindows(val_w, dev)
    # GRU: one lane per batch row, as many as there are users at most.
    n_lanes = min(cfg.batch_size, data.n_users) if data.stateful else cfg.batch_size
    graphed = cuda_graph and dev.type == "cuda" and scaler is None and (data.stateful or len(train_w) >= cfg.batch_size)
    # Fused AdamW: one kernel for all parameters instead of a few per parameter tensor;
    # capturable keeps its step count on the device, so a CUDA graph can replay it.
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=dev.type == "cuda",
        capturable=graphed,
    )
    step = (
        CudaGraphStep(model, opt, data, amp, n_lanes) if graphed else TrainStep(model, opt, data, amp, scaler, n_lanes)
    )

    best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
    history: list[dict[str, float]] = []
    train_time = 0.0
    trained_events = 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        if data.stateful:
            # Users in a new random order and lanes each epoch; every lane is a full batch row.
            order, keep = lanes(data.first, n_lanes, rng)
            n_batches = len(order)
            perm = order.reshape(-1)
            keep_dev = torch.from_numpy(keep).to(dev)
        else:
            # A graph replays full batches only: the last, partial batch of an epoch is left out (a
            # different one each epoch, as the order is shuffled).
            n_batches = len(train_w) // cfg.batch_size if graphed else -(-len(train_w) // cfg.batch_size)
            perm = rng.permutation(len(train_w))
        perm_dev = torch.from_numpy(perm).to(dev)
        rows = n_lanes if data.stateful else cfg.batch_size
        # The running loss stays on the device: reading it waits for the GPU, so it is read
        # only for the progress bar, a few times a second.
        running = torch.zeros((), device=dev)
        epoch_events = 0
        shown = t_start = time.perf_counter()
        for bi in range(n_batches):
            lo, hi = bi * rows, (bi + 1) * rows
            loss = step(perm_dev[lo:hi], keep_dev[bi] if data.stateful else None)
            epoch_events += int(data.targets_per_window[perm[lo:hi]].sum())
            running = running.mul(0.9).add(loss, alpha=0.1) if bi else loss.clone()
            now = time.perf_counter()
            if log is not None and (now - shown >= 0.25 or bi == n_batches - 1):
                shown = now
                _progress(log, epoch, cfg.max_epochs, bi + 1, n_batches, float(running))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t_start
        train_time += epoch_time
        trained_events += epoch_events
        val = evaluate(model, val_data, dev, k=cfg.top_k)
        val["epoch"] = epoch
        val["train_loss"] = float(running)
        val["train_events_per_s"] = epoch_events / max(epoch_time, 1e-9)
        history.append(val)
        if log is not None:
            steps = f" ({_step_kind(step)} steps)" if epoch == 1 else ""
            log.write(f"  val intent_auc {val['intent_auc']:.4f} hr@10 {val['hr@10']:.4f}{steps}\n")
        score = _score(val)
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()), val)
        elif epoch - best[1] >= cfg.patience:
            break
        if max_seconds is not None and train_time >= max_seconds:
            break
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    t0, t1 = min(e.ts for e in events), max(e.ts for e in events)
    metrics = {
        "val": best[3],
        "best_epoch": best[1],
        "epochs": len(history),
        "history": history,
        "cutoff_ms": cutoff,
        "train_windows": len(train_w),
        "train_targets": train_w.n_targets,
        "val_targets": val_w.n_targets,
        "step": _step_kind(step),
    }
    return TrainResult(
        model=model,
        config=cfg,
        vocab=vocab,
        metrics=metrics,
        data_range=(t0, t1),
        cutoff_ms=cutoff,
        train_events_per_s=trained_events / max(train_time, 1e-9),
        device=str(dev),
    )
