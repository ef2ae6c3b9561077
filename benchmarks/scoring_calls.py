"""One sequence-scoring call per batch, as a worker makes it: this tree's model against another
revision's, in one process.

``python -m benchmarks.scoring_calls --against HEAD~1 --batch 20,67 --latent 0.4`` builds windows
as a worker keeps them (``UserState.recent_window()`` after each simulator event), and times
``SequenceScorer.score_batch`` on consecutive batches of ``--batch`` windows, with the next-category
head asked for a ``--latent`` share of them (a worker asks for it where a latent-needs signal is
still possible: about 40% of the events of ``intentstream bench``). With ``--against REV`` the same
scorer also runs REV's ``models/sequence/model.py`` (read with ``git show``, same weights), the two
alternating round by round, so that a drifting machine slows both alike; every output of the two
(scores, buckets, probabilities) must be the same bits, or it stops. Without it, this tree alone.

The weights are untrained (the benchmark's model, ``stream.bench.publish_sequence_model``): the
cost depends on the architecture and the shapes only. Process CPU time, one torch thread (the
worker's default).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", help="a git revision whose models/sequence/model.py to compare with")
    p.add_argument("--batch", default="20,67", help="windows per call, comma-separated")
    p.add_argument("--latent", type=float, default=0.4, help="share of windows that need next categories")
    p.add_argument("--calls", type=int, default=40, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from models.features.state import UserState, apply_event
    from models.sequence import checkpoint
    from models.sequence.config import SeqConfig
    from models.sequence.model import SequenceModel
    from models.sequence.scorer import SequenceScorer
    from stream.agents.runtime import pipeline_config
    from stream.logic.ingest import Pseudonymizer, ingest_one
    from stream.logic.simulator import ShopperSimulator
    from stream.settings import load_settings

    torch.set_num_threads(1)  # the worker's default (INTENTSTREAM_SEQUENCE_THREADS)
    torch.manual_seed(0)
    cfg = SeqConfig()
    model = SequenceModel(cfg)
    scorer = SequenceScorer(checkpoint.Loaded(model, cfg, {}, {}, (0, 0), "", 1))
    models = {"this tree": scorer.model}
    if a.against:
        src = subprocess.run(["git", "show", f"{a.against}:models/sequence/model.py"], capture_output=True, text=True, check=True).stdout
        other = types.ModuleType("against_model")
        exec(compile(src, f"{a.against}:models/sequence/model.py", "exec"), other.__dict__)
        old = other.SequenceModel(cfg)
        old.load_state_dict(scorer.model.state_dict())
        models = {a.against: old.eval(), "this tree": scorer.model}

    state_cfg = pipeline_config(load_settings()).state
    pseudonymize = Pseudonymizer(b"scoring-calls-key-0123456789")
    states: dict[str, UserState] = {}
    windows = []
    for raw in ShopperSimulator(seed=1, users=5_000).take(20_000):
        ev = ingest_one(_json(raw), pseudonymize, now_ms=raw["ts"] + 1_000)
        st = states.setdefault(ev.user, UserState.new())
        if apply_event(st, ev, state_cfg) == "applied":
            windows.append(st.recent_window())
    rng = np.random.default_rng(0)
    print(f"{len(windows)} windows; next categories for {a.latent:.0%}; process CPU ms per call, medians of {a.rounds} rounds")
    for size in (int(b) for b in a.batch.split(",")):
        calls = [(windows[i * size : (i + 1) * size], list(rng.random(size) < a.latent)) for i in range(a.calls + 2)]
        if len(calls[-1][0]) < size:
            print(f"--batch {size}: not enough windows for {a.calls} calls", file=sys.stderr)
            return 2
        times: dict[str, list[float]] = {name: [] for name in models}
        outs: dict[str, list] = {}
        for r in range(a.rounds):
            for name in list(models)[:: 1 if r % 2 == 0 else -1]:
                scorer.model = models[name]
                for w, lat in calls[:2]:
                    scorer.score_batch(w, latent=lat)
                t0 = time.process_time()
                out = [scorer.score_batch(w, latent=lat) for w, lat in calls[2:]]
                times[name].append((time.process_time() - t0) / a.calls * 1e3)
                outs.setdefault(name, out)
        if a.against:
            ref, new = outs[a.against], outs["this tree"]
            for x, y in zip(ref, new, strict=True):
                for f in ("p_intent", "p_churn", "top_buckets", "top_probs"):
                    if not np.array_equal(getattr(x, f), getattr(y, f)):
                        print(f"--batch {size}: {f} differs from {a.against}'s", file=sys.stderr)
                        return 1
        row = "  ".join(f"{name}: {statistics.median(t):.2f}" for name, t in times.items())
        if a.against:
            lower = sum(n < o for o, n in zip(times[a.against], times["this tree"], strict=True))
            row += f"  (this tree lower in {lower}/{a.rounds} rounds; outputs the same bits)"
        print(f"{size:>5} windows  {row}")
        for name, t in times.items():
            print(f"       {name}: " + " ".join(f"{x:.2f}" for x in t))
    return 0


def _json(raw: dict) -> bytes:
    import json

    return json.dumps(raw, separators=(",", ":")).encode()


if __name__ == "__main__":
    sys.exit(main())
