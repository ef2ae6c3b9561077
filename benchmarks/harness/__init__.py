"""The harness of ``intentstream bench``: throughput, latency, memory and restart figures of the
stream worker.

Everything is measured against a real Kafka (a local broker, or ``KAFKA_BOOTSTRAP_SERVERS``)
with the simulator's event mix, and every figure comes with the baselines it is compared with,
measured in the same run on the same events (a shared 2-core machine is too noisy for figures
taken on different days to be compared). Each measurement gets topics and a consumer group of its
own (``bench-<run>-<name>...``), so repeats never see each other's records, and its topics are
deleted when it is done, so that it leaves the broker as it found it. With the local broker,
``broker_cores`` is the broker's CPU over a throughput or latency measurement (1.0 = one core busy
all the time; None with another broker).

Scenarios (``intentstream bench [pipeline|baselines|state|all|scaling|guarantees]``):

``pipeline``
    **Sustained throughput.** ``--events`` simulated events are preloaded into a fresh events
    topic, then one worker (``intentstream worker`` as a child process, in its own process group)
    is started on it. ``/metrics`` is polled every 0.1 s; "handled" is the sum of
    ``intentstream_events_consumed_total`` over the real event types plus late events: events
    that went through the whole pipeline (ingest, repartition, process). Events delivered again
    after a rebalance (dropped as duplicates) are reported apart, as ``redelivered``.

    * ``events_per_s`` (the headline): the backlog divided by the time from the first processed
      batch of either agent to the last event handled. Start-up (process start, group join,
      recovery) is left out; the wait before the second agent gets its first events is not.
    * ``steady_events_per_s``: the rate between 10% and 90% of the backlog handled, which leaves
      that wait and the tail out too (for the two-agent worker it is mostly the second agent's
      rate, once the first one has worked through the backlog).
    * ``cpu_us_per_event``: the worker's CPU time (all threads, psutil) over the same window as
      ``events_per_s``, per event. Less sensitive to a busy neighbour than the rates.
    * ``startup_s``: process start to ``/readyz`` 200; ``stall_s``: first batch to first event handled.

    Every pipeline worker starts with **warm online models**: checkpoints learned once per run on
    simulator history (:func:`~benchmarks.harness.warm.warm_online_models`, described in
    ``meta.online_models``) are written to its models changelog before it starts, and it recovers
    them as a restarted worker would. A cold worker serves a prior, which costs far less per event
    than a warm model, so a benchmark of cold workers would flatter the pipeline.
    ``online_models_warm`` says whether the worker published learned-model metrics; the latency
    run counts its signals by online model (``signals_by_online_model``: ``river-linear`` learned,
    ``rule-v1`` the rules).

    **Event-to-signal latency** at an offered load of ``--rate`` events/s (default: half the median
    ``events_per_s`` measured in the same run). A fresh worker is warmed up with a quarter of
    ``--events`` (at most 2,000; until they are all handled), then events are produced at a
    steady rate for ``latency_seconds`` (at most ``--events`` of them) while a consumer reads the
    signal topics. Each event's send time is recorded (wall clock, just before ``producer.send``;
    the producer lingers up to 5 ms, as a real client would) and matched to the signals by
    ``event_id``. ``latency_ms`` uses the signal's Kafka timestamp (create time, set by the
    worker's producer when the signal is sent); ``receive_latency_ms`` uses the time our consumer
    received it (adds the signal producer's linger and the fetch).

    **Memory.** The worker's resident set size (psutil) after the throughput backlog.

``baselines``
    The same backlog through (a) a raw aiokafka consume -> ``json.loads`` -> produce loop and
    (b) a plain Faust pass-through agent (see :mod:`benchmarks.baselines`), measured the same way
    (first event to last, 10% to 90%, CPU per event). With ``pipeline`` in the same run, ``ratios``
    gives pipeline / baseline for each (for CPU per event, above 1 means the pipeline costs more).

``state``
    ``benchmarks.state_bench.run(users, seed)``: bytes per user of the stored state and
    read-modify-write updates per second, and bytes per user of the whole table record (state,
    signal-policy memory and the online models' pending labels; ``record_*``, on up to 10,000
    users) (skipped if that module is absent).

``scaling`` (not part of ``all``: minutes)
    The pipeline's backlog through k workers of one application on k partitions, k = 1, 2, 4
    (``--scaling``), all on this machine: the workers' handled events and CPU are summed, the
    rate is taken as for ``pipeline``.

``guarantees`` (not part of ``all``)
    The pipeline's backlog through one worker with ``at_least_once`` and with ``exactly_once``
    (Kafka transactions, stream/agents/outputs.py), interleaved ``--repeats`` times: medians of
    each and their ratio.

``--restart`` (with ``all`` or ``pipeline``, slow)
    A worker on a ``rocksdb://`` store fills its table with ``--restart-users`` users (one event
    each), is stopped with SIGTERM and started again on the same data directory:
    ``restart_ready_s`` is process start to ``/readyz`` 200 with that state, ``cold_ready_s`` the
    same on an empty store, in the same run; ``first_event_after_restart_s`` the time from
    producing one more event, once ready, until it is handled.

Medians over ``--repeats`` are reported; the repeats of the pipeline and of the baselines are
interleaved so that a noisy neighbour hurts all of them alike. The result is printed as a table
and as JSON (``--json PATH`` also writes it to a file).

The harness is developer tooling, not part of the product: it lives here rather than in ``stream/``
so that the worker package and its images do not carry it, and ``intentstream bench`` imports it
only when run.
"""

from __future__ import annotations

from benchmarks.harness.config import SCENARIOS, BenchConfig
from benchmarks.harness.scenarios import main, run

__all__ = ["SCENARIOS", "BenchConfig", "main", "run"]
