"""The sequence network: embeds a window of recent events, encodes it causally, and predicts.

Inputs per event (see :mod:`models.sequence.data`): event type, hashed item / category / query
(open vocabulary: any id maps to a bucket), log-bucketed time gap to the previous event, and a
few numeric features (log price, item and category repeat signals). They are summed into one
``d_model`` vector. The encoder is either a GRU (cheap to advance one event at a time) or a
small causal transformer (SASRec-like). Every position predicts, using only itself and earlier
positions:

* ``intent``: a purchase within ``intent_ms`` (binary),
* ``churn``: no return within ``churn_ms`` (binary),
* ``next_type``: the type of the next event (self-supervised),
* ``next category``: a pointer-generator mixture of a softmax over all category buckets
  (what people buy in general) and a copy distribution over the categories already in the
  window (people mostly come back to what they looked at).

Every event reads at most its last ``lookback`` events (its own ring, the one the stream keeps):
its input features and the copy attention. The GRU's state, by contrast, summarises the user's
whole history: :meth:`SequenceModel.forward_chunks` trains it over consecutive chunks of a
history with the state carried between them, as the stream advances it one event at a time.

``forward()`` (transformer windows) and ``forward_chunks()`` (GRU) return the training loss;
:meth:`SequenceModel.score_last` is the inference path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.sequence.config import SeqConfig
from models.sequence.data import N_NUM, N_TYPES

INPUT_KEYS = ("type", "item", "cat", "query", "gap", "num")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set; 0 (with a gradient path) where it is set nowhere."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class SequenceModel(nn.Module):
    def __init__(self, cfg: SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.type_emb = nn.Embedding(N_TYPES + 1, d, padding_idx=0)
        if cfg.id_embeddings:
            self.item_emb = nn.Embedding(cfg.item_buckets, d, padding_idx=0)
            self.cat_emb = nn.Embedding(cfg.category_buckets, d, padding_idx=0)
            self.query_emb = nn.Embedding(cfg.query_buckets, d, padding_idx=0)
        self.gap_emb = nn.Embedding(cfg.gap_buckets, d)
        self.num_proj = nn.Linear(N_NUM, d)
        self.in_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.arch == "gru":
            self.rnn = nn.GRU(
                d,
                d,
                num_layers=cfg.n_layers,
                batch_first=True,
                dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
            )
        else:
            self.pos_emb = nn.Embedding(cfg.lookback, d)
            layer = nn.TransformerEncoderLayer(
                d, cfg.n_heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            self.out_norm = nn.LayerNorm(d)
        # The binary heads also see the raw numeric features: the repeat signals are strong on
        # their own and a direct path lets a small model use them without routing through h.
        self.intent_head = nn.Sequential(nn.Linear(d + N_NUM, d), nn.GELU(), nn.Linear(d, 1))
        self.churn_head = nn.Sequential(nn.Linear(d + N_NUM, d), nn.GELU(), nn.Linear(d, 1))
        self.next_type_head = nn.Linear(d, N_TYPES)
        self.cat_out = nn.Linear(d, cfg.category_buckets)
        self.copy_q = nn.Linear(d, d)
        self.copy_k = nn.Linear(d, d)
        self.copy_gate = nn.Linear(d, 1)
        self.copy_recency = nn.Embedding(cfg.lookback, 1)
        nn.init.zeros_(self.copy_recency.weight)
        self.copy_same = nn.Parameter(torch.zeros(()))

    # -- shared pieces --------------------------------------------------------------------------
    def embed(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.type_emb(b["type"]) + self.gap_emb(b["gap"]) + self.num_proj(b["num"])
        if self.cfg.id_embeddings:
            x = x + self.item_emb(b["item"]) + self.cat_emb(b["cat"]) + self.query_emb(b["query"])
        return self.drop(self.in_norm(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Causal encoding (B, L, d) -> (B, L, d). Windows are right-padded, so padding only
        ever follows real events and a causal model never looks at it."""
        if self.cfg.arch == "gru":
            h, _ = self.rnn(x)
            return h
        L = x.shape[1]
        x = x + self.pos_emb(torch.arange(L, device=x.device))
        mask = torch.triu(torch.full((L, L), float("-inf"), device=x.device), diagonal=1)
        return self.out_norm(self.encoder(x, mask=mask, is_causal=True))

    def _copy_attention(self, hq: torch.Tensor, x: torch.Tensor, cats: torch.Tensor, q_pos: torch.Tensor):
        """Attention of each query over the window positions at or before it, less than
        ``lookback`` events back, that have a category.

        hq: (B, Q, d) query states at window positions q_pos (B, Q); x: (B, L, d) event
        embeddings (the keys); cats: (B, L) category buckets. Returns weights (B, Q, L) and a
        mask (B, Q) of queries that have at least one position to copy from.
        """
        L = x.shape[1]
        s = self.copy_q(hq) @ self.copy_k(x).transpose(1, 2) / math.sqrt(hq.shape[-1])
        dist = q_pos.unsqueeze(-1) - torch.arange(L, device=x.device)  # (B, Q, L)
        return self._copy_weights(s, dist, cats.unsqueeze(1), cats.gather(1, q_pos))

    def _ring_copy(self, h: torch.Tensor, xk: torch.Tensor, kcats: torch.Tensor):
        """The copy attention of each position over its own ring (training chunks).

        h: (B, L, d) states; xk: (B, L, K, d) embeddings of each position's ring, right-aligned
        (the position itself is the last); kcats: (B, L, K). Returns weights (B, L, K) and the
        (B, L) mask of positions with something to copy.
        """
        K = kcats.shape[-1]
        s = torch.einsum("bld,blkd->blk", self.copy_q(h), self.copy_k(xk)) / math.sqrt(h.shape[-1])
        dist = K - 1 - torch.arange(K, device=h.device)
        return self._copy_weights(s, dist, kcats, kcats[..., -1])

    def _copy_weights(self, s: torch.Tensor, dist: torch.Tensor, kcats: torch.Tensor, qcats: torch.Tensor):
        """Softmax of the copy scores ``s`` (..., K) over the keys ``dist`` (0 = the query's own
        event) events back with a category, at most ``lookback - 1`` back: the ring the stream has.
        Besides the learned match of query and key, two learned biases capture what the simple
        baselines know: recency (by distance in events) and "same category as the current event".
        """
        has_cat = kcats > 0
        allowed = (dist >= 0) & (dist < self.cfg.lookback) & has_cat
        same = (kcats == qcats.unsqueeze(-1)) & has_cat
        s = (
            s.float()
            + self.copy_recency(dist.clamp(0, self.cfg.lookback - 1)).squeeze(-1).float()
            + self.copy_same.float() * same
        )
        s = s.masked_fill(~allowed, float("-inf"))
        has = allowed.any(-1)
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)
        return w, has

    def _binary_heads(self, h: torch.Tensor, num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([h, num.to(h.dtype)], dim=-1)
        return self.intent_head(z).squeeze(-1), self.churn_head(z).squeeze(-1)

    # -- training -------------------------------------------------------------------------------
    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Multi-task loss over the target positions of a batch of windows.

        Returns (total loss, per-task losses); each is a mean over the positions that have its
        label (masks, -1 targets), and 0 when a batch has none. Every loss is computed densely over
        all positions and masked, with no data-dependent shapes: on a GPU, boolean indexing and
        ``mask.any()`` each wait for the device, several times a step. The one exception is the
        next-category softmax over every category bucket, the costliest part: on the CPU it is
        computed for the target positions only (about half of them).
        """
        x = self.embed(b)
        h = self.encode(x)
        m = b["target"] & (b["next_cat"] >= 0)
        return self._loss(h, b["num"], b, self._next_cat_prob(h, x, b, m))

    def encode_chunks(self, b: dict[str, torch.Tensor], h0: torch.Tensor | None):
        """GRU over a batch of chunks (rings of shape (B, L, K[, N_NUM])) from the states ``h0``
        (n_layers, B, d) or zeros. Returns (ring embeddings (B, L, K, d), states (B, L, d), the
        state after the chunk's last position (n_layers, B, d))."""
        xk = self.embed(b)
        h, h_n = self.rnn(xk[:, :, -1], h0)
        return xk, h, h_n

    def forward_chunks(self, b: dict[str, torch.Tensor], h0: torch.Tensor | None = None):
        """GRU training loss over a batch of chunks from the carried states ``h0`` (see
        :meth:`forward` for the loss). Returns (total loss, per-task losses, final state)."""
        xk, h, h_n = self.encode_chunks(b, h0)
        m = b["target"] & (b["next_cat"] >= 0)
        loss, parts = self._loss(h, b["num"][:, :, -1], b, self._next_cat_prob_ring(h, xk, b, m))
        return loss, parts, h_n

    def _loss(self, h, num, b, p_next_cat) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        tgt = b["target"]
        intent_logit, churn_logit = self._binary_heads(h, num)
        parts: dict[str, torch.Tensor] = {}

        m = tgt & b["intent_mask"]
        bce = F.binary_cross_entropy_with_logits(intent_logit.float(), b["intent"], reduction="none")
        parts["intent"] = _masked_mean(bce, m)
        m = tgt & b["churn_mask"]
        bce = F.binary_cross_entropy_with_logits(churn_logit.float(), b["churn"], reduction="none")
        parts["churn"] = _masked_mean(bce, m)
        m = tgt & (b["next_type"] >= 0)
        ce = F.cross_entropy(
            self.next_type_head(h).float().flatten(0, 1), b["next_type"].clamp(min=0).flatten(), reduction="none"
        )
        parts["next_type"] = _masked_mean(ce.view_as(m), m)
        m = tgt & (b["next_cat"] >= 0)
        parts["next_category"] = _masked_mean(-torch.log(p_next_cat + 1e-8), m)
        loss = (
            cfg.w_intent * parts["intent"]
            + cfg.w_churn * parts["churn"]
            + cfg.w_next_type * parts["next_type"]
            + cfg.w_next_category * parts["next_category"]
        )
        return loss, parts

    def _next_cat_prob(self, h, x, b, m, dense: bool | None = None) -> torch.Tensor:
        """Mixture probability of the true next category at every position (B, L); meaningful
        where ``m`` is set. With ``dense`` (the default on a GPU) the generator's softmax runs on
        every position; otherwise on the ``m`` positions only, and the others get 1."""
        cats, nxt = b["cat"], b["next_cat"]
        B, L = cats.shape
        q_pos = torch.arange(L, device=h.device).expand(B, L)
        w, has = self._copy_attention(h, x, cats, q_pos)  # (B, L, L)
        hit = (cats.unsqueeze(1) == nxt.unsqueeze(2)).float()  # (B, L, L)
        return self._mix_true(h, nxt, m, dense, w, has, hit)

    def _next_cat_prob_ring(self, h, xk, b, m, dense: bool | None = None) -> torch.Tensor:
        """:meth:`_next_cat_prob` for chunks: each position copies from its own ring."""
        kcats, nxt = b["cat"], b["next_cat"]
        w, has = self._ring_copy(h, xk, kcats)  # (B, L, K)
        hit = (kcats == nxt.unsqueeze(-1)).float()
        return self._mix_true(h, nxt, m, dense, w, has, hit)

    def _mix_true(self, h, nxt, m, dense, w, has, hit) -> torch.Tensor:
        """The mixture's probability of the true next category ``nxt`` (B, L), given the copy
        weights ``w`` and which of their keys ``hit`` it."""
        B, L = nxt.shape
        target = nxt.clamp(min=0)
        if dense is None:
            dense = h.is_cuda
        if dense:
            gen = torch.log_softmax(self.cat_out(h).float(), -1).gather(2, target.unsqueeze(-1)).squeeze(-1).exp()
        else:
            gen = torch.ones((B, L), device=h.device)
            gen[m] = torch.log_softmax(self.cat_out(h[m]).float(), -1).gather(1, target[m, None]).squeeze(1).exp()
        copy = (w * hit).sum(-1)
        g = torch.sigmoid(self.copy_gate(h).float().squeeze(-1))
        g = torch.where(has, g, torch.ones_like(g))
        return g * gen + (1.0 - g) * copy

    def next_category_dist(
        self, h: torch.Tensor, x: torch.Tensor, cats: torch.Tensor, q_index: torch.Tensor
    ) -> torch.Tensor:
        """Full next-category distribution (N, category_buckets) for chosen query positions.

        h, x: (B, L, d); cats: (B, L); q_index: (B,) position of the query in each window.
        Copy attention uses only positions <= q_index.
        """
        ar = torch.arange(h.shape[0], device=h.device)
        hq = h[ar, q_index]  # (B, d)
        w, has = self._copy_attention(hq.unsqueeze(1), x, cats, q_index.unsqueeze(1))
        w, has = w.squeeze(1), has.squeeze(1)  # weights after q_index are 0
        return self._mixture(hq, w, has, cats)

    def next_category_dist_ring(self, hq: torch.Tensor, xk: torch.Tensor, kcats: torch.Tensor) -> torch.Tensor:
        """Full next-category distribution (N, category_buckets) at N positions of chunks, given
        their states hq (N, d), ring embeddings xk (N, K, d) and ring categories kcats (N, K)."""
        w, has = self._ring_copy(hq.unsqueeze(1), xk.unsqueeze(1), kcats.unsqueeze(1))
        return self._mixture(hq, w.squeeze(1), has.squeeze(1), kcats)

    def _mixture(self, hq: torch.Tensor, w: torch.Tensor, has: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        gen = torch.softmax(self.cat_out(hq).float(), -1)
        g = torch.sigmoid(self.copy_gate(hq).float()).squeeze(-1)
        g = torch.where(has, g, torch.ones_like(g))
        copy = torch.zeros_like(gen).scatter_add_(1, cats, w)
        copy[:, 0] = 0.0  # bucket 0 is "absent"
        return g[:, None] * gen + (1.0 - g[:, None]) * copy

    def top_next_categories(
        self, h: torch.Tensor, x: torch.Tensor, cats: torch.Tensor, q_index: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most likely next categories and their probabilities, equal to
        ``next_category_dist(...).topk(k)`` without building the mixture over every bucket.

        Outside the window's own categories the mixture is ``g * gen``, so the top ``k`` can only
        be among the generator's top ``k`` and the window's categories: only those ``k + L``
        candidates are mixed (the generator's softmax is still normalised over all buckets).
        """
        return self._top_next(h[torch.arange(h.shape[0], device=h.device), q_index], x, cats, q_index, k)

    def _top_next(
        self, hq: torch.Tensor, x: torch.Tensor, cats: torch.Tensor, q_index: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`top_next_categories` given the query states ``hq`` (B, d) themselves."""
        w, has = self._copy_attention(hq.unsqueeze(1), x, cats, q_index.unsqueeze(1))
        w, has = w.squeeze(1), has.squeeze(1)
        logits = self.cat_out(hq).float()
        k = min(k, logits.shape[1])
        lse = torch.logsumexp(logits, -1, keepdim=True)
        top_v, top_i = logits.topk(k, dim=1)
        cand = torch.cat([top_i, cats], 1)  # (B, k + L)
        gen = torch.cat([top_v, logits.gather(1, cats)], 1).sub(lse).exp()
        copy = ((cand.unsqueeze(2) == cats.unsqueeze(1)).float() * w.unsqueeze(1)).sum(-1)
        copy = copy.masked_fill(cand == 0, 0.0)  # bucket 0 is "absent": never copied
        g = torch.sigmoid(self.copy_gate(hq).float()).squeeze(-1)
        g = torch.where(has, g, torch.ones_like(g))[:, None]
        p = g * gen + (1.0 - g) * copy
        # A category can be a candidate twice (generator top and window, or repeated in the
        # window): keep its first copy only.
        srt, order = torch.sort(cand, dim=1, stable=True)
        dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = torch.zeros_like(dup_sorted).scatter_(1, order, dup_sorted)
        p = p.masked_fill(dup, float("-inf"))
        top_p, pos = p.topk(k, dim=1)
        return top_p, cand.gather(1, pos)

    # -- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def score_last(
        self,
        b: dict[str, torch.Tensor],
        k: int,
        h0: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ):
        """Scores at the last real event of each window (batch of right-padded windows).

        Returns (p_intent (B,), p_churn (B,), top-k category buckets (B, k), their probabilities,
        GRU state (n_layers, B, d) or None). GRU only: with ``h0``, the state before the last
        event, only that event is run through the recurrence (one step, whatever the history's
        length); with ``state``, the state after the last event, no step is run at all (the
        heads only). Without either the GRU runs over the window from zeros. The copy attention
        reads the window's embeddings. ``latent``, a (B,) bool mask, limits the next-category head
        (the costliest part) to those rows; the others get bucket 0 ("absent") with probability 0.
        """
        if (h0 is not None or state is not None) and self.cfg.arch != "gru":
            raise ValueError("incremental state is only available for the GRU model")
        x = self.embed(b)
        last = b["length"] - 1
        ar = torch.arange(x.shape[0], device=x.device)
        # Every head reads the encoding at the last real event only (the copy attention reads the
        # embeddings x): for the GRU that is its final state, so the padded outputs are not built.
        if state is not None:
            h_last = state[-1]
        elif h0 is not None:
            out, state = self.rnn(x[ar, last].unsqueeze(1), h0)
            h_last = out[:, 0]
        elif self.cfg.arch == "gru":
            packed = nn.utils.rnn.pack_padded_sequence(
                x, b["length"].cpu(), batch_first=True, enforce_sorted=False
            )
            _, state = self.rnn(packed)
            h_last = state[-1]  # each window's state after its last real event (the top layer's)
        else:
            h_last = self.encode(x)[ar, last]
        il, cl = self._binary_heads(h_last, b["num"][ar, last])
        if latent is None:
            top_p, top_b = self._top_next(h_last, x, b["cat"], last, k)
        else:
            k = min(k, self.cat_out.out_features)
            top_p = torch.zeros((x.shape[0], k), device=x.device)
            top_b = torch.zeros((x.shape[0], k), dtype=torch.long, device=x.device)
            rows = latent.nonzero().squeeze(1)
            if rows.numel():
                top_p[rows], top_b[rows] = self._top_next(h_last[rows], x[rows], b["cat"][rows], last[rows], k)
        return torch.sigmoid(il.float()), torch.sigmoid(cl.float()), top_b, top_p, state
