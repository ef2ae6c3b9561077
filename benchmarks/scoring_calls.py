"""One sequence-scoring call per batch, as a worker makes it: this tree's code against another
revision's, and back to back against after an idle stretch, in one process.

``python -m benchmarks.scoring_calls --against HEAD~1 --batch 20,67 --latent 0.4`` builds windows
as a worker keeps them (``UserState.recent_window()`` after each of 20,000 simulator events of
5,000 users, the load of ``intentstream bench``; the latest windows are used) and times
``SequenceScorer.score_batch`` on consecutive batches of ``--batch`` windows, the next-category
head asked for a ``--latent`` share of them (a worker asks for it where a latent-needs signal is
still possible: about 40% of the events of ``intentstream bench``). With ``--against REV`` the
same scorer also runs REV's ``models/sequence/model.py`` and ``data.py`` (the network, with the
same weights, and the inputs' builder, read with ``git show``), the two alternating round by
round so that a drifting machine slows both alike; every output of the two (scores, buckets,
probabilities) must be the same bits, or it stops.

``--idle-ms 0,30,100`` sleeps that long before each timed call, each value in turn (alternating
like the revisions). On the development machine (a Firecracker microVM, 2 vCPUs) work that
follows an idle stretch costs more CPU than the same work done back to back (docs/BENCHMARKS.md);
a worker under a moderate load waits for its next events between batches.

The weights are the default ``SeqConfig``'s, untrained and seeded
(``benchmarks.scoring_cost.untrained_scorer``): the cost depends on the architecture and the
shapes only. CPU time of the calling thread, one torch thread (the worker's default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", help="a git revision whose models/sequence/model.py and data.py to compare with")
    p.add_argument("--batch", default="20,67", help="windows per call, comma-separated")
    p.add_argument("--latent", type=float, default=0.4, help="share of windows that need next categories")
    p.add_argument("--calls", type=int, default=40, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--idle-ms", default="0", help="sleep this long before each timed call (a worker between batches); comma-separated: each in turn")
    a = p.parse_args(argv)

    import numpy as np

    from benchmarks.scoring_cost import untrained_scorer
    from models.features.state import UserState, apply_event
    from models.sequence import scorer as scorer_module
    from stream.agents.runtime import pipeline_config
    from stream.logic.ingest import Pseudonymizer, ingest_one
    from stream.logic.simulator import ShopperSimulator
    from stream.settings import load_settings

    scorer = untrained_scorer()  # one torch thread, the worker's default (INTENTSTREAM_SEQUENCE_THREADS)
    cfg = scorer.config
    # Each way: (the network, the inputs' builder).
    models = {"this tree": (scorer.model, scorer_module.batch_features)}
    if a.against:
        model_mod, data_mod = (_module_at(a.against, f"models/sequence/{f}.py") for f in ("model", "data"))
        old = model_mod.SequenceModel(cfg)
        old.load_state_dict(scorer.model.state_dict())
        models = {a.against: (old.eval(), data_mod.batch_features), "this tree": models["this tree"]}

    state_cfg = pipeline_config(load_settings()).state
    pseudonymize = Pseudonymizer(b"scoring-calls-key-0123456789")
    states: dict[str, UserState] = {}
    windows = []
    for raw in ShopperSimulator(seed=1, users=5_000).take(20_000):
        ev = ingest_one(json.dumps(raw).encode(), pseudonymize, now_ms=raw["ts"] + 1_000)
        st = states.setdefault(ev.user, UserState.new())
        if apply_event(st, ev, state_cfg) == "applied":
            windows.append(st.recent_window())
    rng = np.random.default_rng(0)
    idles = [float(x) for x in a.idle_ms.split(",")]
    variants = [(name, idle) for name in models for idle in idles]

    def label(v: tuple[str, float]) -> str:
        return v[0] + (f", idle {v[1]:g} ms" if len(idles) > 1 or v[1] else "")

    print(f"next categories for {a.latent:.0%} of the windows; CPU ms per call, medians of {a.rounds} rounds")
    try:
        for size in (int(b) for b in a.batch.split(",")):
            latest = windows[-(a.calls + 2) * size :]
            if len(latest) < (a.calls + 2) * size:
                print(f"--batch {size}: not enough windows for {a.calls} calls", file=sys.stderr)
                return 2
            calls = [(latest[i * size : (i + 1) * size], list(rng.random(size) < a.latent)) for i in range(a.calls + 2)]
            mean_len = sum(map(len, latest)) / len(latest)
            times: dict[tuple[str, float], list[float]] = {v: [] for v in variants}
            outs: dict[str, list] = {}
            for r in range(a.rounds):
                for name, idle in variants[:: 1 if r % 2 == 0 else -1]:
                    scorer.model, scorer_module.batch_features = models[name]
                    for w, lat in calls[:2]:
                        scorer.score_batch(w, latent=lat)
                    out, cpu = [], 0.0
                    for w, lat in calls[2:]:
                        if idle:
                            time.sleep(idle / 1000)
                        t0 = time.thread_time()
                        out.append(scorer.score_batch(w, latent=lat))
                        cpu += time.thread_time() - t0
                    times[(name, idle)].append(cpu / a.calls * 1e3)
                    outs.setdefault(name, out)
            if a.against:
                ref, new = outs[a.against], outs["this tree"]
                for x, y in zip(ref, new, strict=True):
                    for f in ("p_intent", "p_churn", "top_buckets", "top_probs"):
                        if not np.array_equal(getattr(x, f), getattr(y, f)):
                            print(f"--batch {size}: {f} differs from {a.against}'s", file=sys.stderr)
                            return 1
            print(f"{size:>5} windows of {mean_len:.1f} events  " + "  ".join(f"{label(v)}: {statistics.median(t):.2f}" for v, t in times.items()))
            if a.against:
                for idle in idles:
                    o, n = times[(a.against, idle)], times[("this tree", idle)]
                    print(f"       this tree lower than {label((a.against, idle))} in {sum(y < x for x, y in zip(o, n, strict=True))}/{a.rounds} rounds; outputs the same bits")
            for v, t in times.items():
                print(f"       {label(v)}: " + " ".join(f"{x:.2f}" for x in t))
    finally:
        scorer_module.batch_features = models["this tree"][1]  # the rounds swap it; put it back
    return 0


def _module_at(rev: str, path: str) -> types.ModuleType:
    """The module at ``path`` as of git revision ``rev``, loaded under a private name."""
    repo = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True, cwd=repo).stdout
    mod = sys.modules[f"{path}@{rev}"] = types.ModuleType(f"{path}@{rev}")  # dataclasses look it up
    exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    return mod


if __name__ == "__main__":
    sys.exit(main())
