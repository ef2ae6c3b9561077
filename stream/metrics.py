"""Every Prometheus metric of the worker, declared once, in one place.

:class:`Metrics` builds all metrics on the :class:`~prometheus_client.CollectorRegistry` it is
given, so the worker uses one registry for its lifetime and each test uses a fresh one (the way
Faust's ``sensors/prometheus.py`` takes a registry argument). Nothing here imports Faust; the web
views live in :mod:`stream.health` and the Kafka-facing lag reader in :mod:`stream.lag`.

Label values are bounded on purpose: a Prometheus series per distinct label value lives in the
worker's memory and in the TSDB until it is deleted, so a label that could carry a user id, an
item id or a free-text reason would grow without limit (and leak personal data into monitoring).
The only labels are:

=========== ================================================================================
``type``    canonical event type (:data:`models.events.EVENT_TYPES`) or ``invalid``/``other``
``reason``  a validation failure code (:data:`INVALID_REASONS`), anything else is ``other``
``task``    a signal task (:data:`TASKS`); an unknown task is a programming error
``result``  ``success`` or ``failure`` (model refresh); how the query API answered (:data:`API_RESULTS`)
``cause``   why the local table store was rebuilt (:data:`REBUILD_CAUSES`)
``topic``   a topic the worker consumes, ``partition`` its partition number
``version`` the sequence model version, one series at a time (an ``Info`` metric)
=========== ================================================================================

The helper methods (:meth:`Metrics.count_event`, :meth:`Metrics.count_invalid`, ...) enforce
these sets; the metric attributes are public too, for the rare caller that needs the raw object.

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.count_event("purchase")
>>> m.count_event("<script>")  # untrusted input folds into a fixed value
>>> m.value("intentstream_events_consumed_total", type="purchase")
1.0
>>> m.value("intentstream_events_consumed_total", type="other")
1.0
>>> m.set_lag({("shop.events", 0): 12})
>>> m.value("intentstream_consumer_lag", topic="shop.events", partition="0")
12.0
>>> m.remove_partition("shop.events", 0)
>>> m.value("intentstream_consumer_lag", topic="shop.events", partition="0") is None
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from models.events import EVENT_TYPES
from stream.logic.ingest import REASONS
from stream.logic.signals import LEARNED, Task

NAMESPACE = "intentstream"

#: ``type`` label values: the canonical event types, ``invalid`` for records that failed
#: validation (so the sum over ``type`` is every record read) and ``other`` as a safety net.
EVENT_TYPE_LABELS: tuple[str, ...] = (*EVENT_TYPES, "invalid", "other")

#: ``reason`` label values: the dead-letter reasons of :mod:`stream.logic.ingest` (one closed
#: set shared with the dead-letter records), and ``other`` as a safety net.
INVALID_REASONS: tuple[str, ...] = (*REASONS, "other")

#: ``task`` label values: one per signal the worker emits (see ``Settings.signal_topics``).
TASKS: tuple[str, ...] = tuple(Task)

#: ``result`` label values of ``model_refresh_total``.
REFRESH_RESULTS: tuple[str, ...] = ("success", "failure")

#: Every label name any metric may carry. Tests assert the exposition uses nothing else, so a
#: new label (and its cardinality) is a reviewed decision rather than an accident.
LABEL_NAMES: frozenset[str] = frozenset({"type", "reason", "task", "result", "topic", "partition", "version", "path",
                                         "cause", "state"})  # fmt: skip
#: ``state`` label values of ``sequence_states_total``: how an event's hidden state was had.
SEQUENCE_STATES: tuple[str, ...] = ("stepped", "rebuilt")
#: ``result`` label values of ``api_requests_total``: how the query API answered (stream/api.py).
API_RESULTS: tuple[str, ...] = ("found", "not_found", "forwarded", "unauthorized", "bad_request", "unavailable")
#: Why a worker discarded its local table store at start-up (stream/local_state.py).
REBUILD_CAUSES: tuple[str, ...] = ("unclean_shutdown", "ahead_of_changelog", "unreadable")

# Per-batch processing time: a 1,000-event batch takes roughly 0.2-1 s on the 2-core machines.
PROCESSING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Event-to-signal: includes broker hops and batching waits, and spikes after a restart or a rebalance.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Model scoring: from one window (about a millisecond on CPU) to a batch of hundreds.
SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# Bytes of one user's table record (state, signal-policy memory, pending labels); the state budget is 1 KiB.
RECORD_BYTES_BUCKETS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192)


def _fold(value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is an allowed label value, else ``other``: input data never widens a label."""
    return value if value in allowed else "other"


def _check(value: str, allowed: tuple[str, ...], label: str) -> str:
    """Reject a label value that only a code change could produce (a typo must fail loudly)."""
    if value not in allowed:
        raise ValueError(f"{label}={value!r} is not one of {', '.join(allowed)}")
    return value


class Metrics:
    """The worker's metrics on one registry; see the module docstring for the label rules.

    Create one per process (``Metrics(prometheus_client.REGISTRY)`` or a registry of its own) and
    pass it to the agents, :func:`stream.lag.update_lag` and :func:`stream.health.register_views`.
    Creating two on the same registry raises ``ValueError`` (duplicated timeseries), which is what
    keeps every declaration in this one place.
    """

    def __init__(self, registry: CollectorRegistry, *, tasks: Iterable[str] = TASKS) -> None:
        self.registry = registry
        self.tasks: tuple[str, ...] = tuple(tasks)
        ns = NAMESPACE

        # --- input
        self.events_consumed = Counter(
            "events_consumed",
            "Records read from the events topic, by canonical event type ('invalid' when validation failed).",
            ["type"],
            namespace=ns,
            registry=registry,
        )
        self.invalid_events = Counter(
            "invalid_events",
            "Records that failed validation, by reason code.",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.dead_letters = Counter(
            "dead_letters", "Records written to the dead-letter topic.", namespace=ns, registry=registry
        )
        self.late_events = Counter(
            "late_events",
            "Events older than the allowed lateness for their user's state, ignored for state updates.",
            namespace=ns,
            registry=registry,
        )
        self.duplicate_events = Counter(
            "duplicate_events",
            "Events dropped as duplicates (event id seen before).",
            namespace=ns,
            registry=registry,
        )

        # --- processing
        self.processing_seconds = Histogram(
            "processing_seconds",
            "Wall time to process one batch of events, in seconds.",
            namespace=ns,
            registry=registry,
            buckets=PROCESSING_BUCKETS,
        )
        self.processing_batch_size = Histogram(
            "processing_batch_size",
            "Events per processed batch.",
            namespace=ns,
            registry=registry,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.event_to_signal_seconds = Histogram(
            "event_to_signal_seconds",
            "Wall time from the triggering event's Kafka timestamp to the signal's send, in seconds.",
            namespace=ns,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.signals_emitted = Counter(
            "signals_emitted", "Signals sent, by task.", ["task"], namespace=ns, registry=registry
        )
        self.events_routed = Counter(
            "events_routed",
            "Valid events by where they were processed: 'local' (by the worker that ingested them) or "
            "'forwarded' (through the internal topic).",
            ["path"],
            namespace=ns,
            registry=registry,
        )
        self.local_partitions = Gauge(
            "local_partitions",
            "Internal partitions whose events this worker processes where it ingests them.",
            namespace=ns,
            registry=registry,
        )

        self.state_rebuilds = Counter(
            "state_rebuilds",
            "Times this worker discarded its local table store at start-up and rebuilt it from the changelog, by "
            "reason ('unclean_shutdown': the last run did not stop cleanly, so the store could hold writes the "
            "changelog lacks).",
            ["cause"],
            namespace=ns,
            registry=registry,
        )

        self.records_refetched = Counter(
            "records_refetched",
            "Internal-topic records the consumer skipped and the process stage read back and handled itself "
            "(stream/agents/gaps.py).",
            namespace=ns,
            registry=registry,
        )

        # --- Kafka consumer
        self.consumer_lag = Gauge(
            "consumer_lag",
            "Messages between the log end offset and this worker's position, per owned partition.",
            ["topic", "partition"],
            namespace=ns,
            registry=registry,
        )
        self.rebalances = Counter(
            "rebalances",
            "Consumer group rebalances this worker took part in.",
            namespace=ns,
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "assigned_partitions",
            "Input partitions currently assigned to this worker.",
            namespace=ns,
            registry=registry,
        )

        # --- state and labels
        self.users_in_state = Gauge(
            "users_in_state",
            "Users with state in this worker's table partitions.",
            namespace=ns,
            registry=registry,
        )
        self.state_record_bytes = Histogram(
            "state_record_bytes",
            "Bytes of each per-user record written to the state table (state, signal-policy memory "
            "and pending labels).",
            namespace=ns,
            registry=registry,
            buckets=RECORD_BYTES_BUCKETS,
        )
        self.pending_labels = Gauge(
            "pending_labels",
            "Predictions waiting for their delayed label (the outcome window has not closed yet), by task.",
            ["task"],
            namespace=ns,
            registry=registry,
        )

        # --- online model quality (progressive validation: scored before learning)
        self.online_roc_auc = Gauge(
            "online_roc_auc",
            "Online ROC AUC of the model, by task.",
            ["task"],
            namespace=ns,
            registry=registry,
        )
        self.online_log_loss = Gauge(
            "online_log_loss",
            "Online log loss of the model, by task.",
            ["task"],
            namespace=ns,
            registry=registry,
        )
        self.online_calibration_error = Gauge(
            "online_calibration_error",
            "Online expected calibration error of the model, by task.",
            ["task"],
            namespace=ns,
            registry=registry,
        )

        self.online_labels_learned = Gauge(
            "online_labels_learned",
            "Labels the online models of this worker's input partitions have learned, by task.",
            ["task"],
            namespace=ns,
            registry=registry,
        )
        self.online_models_warm = Gauge(
            "online_models_warm",
            "Input partitions of this worker whose online model is warm (serves instead of the rule), by task.",
            ["task"],
            namespace=ns,
            registry=registry,
        )

        # --- sequence model
        self.sequence_model = Info(
            "sequence_model", "The sequence model being served.", namespace=ns, registry=registry
        )
        self.scoring_batch_size = Histogram(
            "scoring_batch_size",
            "Sequences per sequence-model scoring call.",
            namespace=ns,
            registry=registry,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.scoring_seconds = Histogram(
            "scoring_seconds",
            "Wall time of one sequence-model scoring call, in seconds.",
            namespace=ns,
            registry=registry,
            buckets=SCORING_BUCKETS,
        )
        self.sequence_states = Counter(
            "sequence_states",
            "Events scored by the sequence model, by how the user's hidden state was had: stepped (the "
            "stored state, advanced by the event) or rebuilt (from the recent-event ring: a new model, "
            "a record without one, an event out of order).",
            ["state"],
            namespace=ns,
            registry=registry,
        )
        self.shadow_score_difference = Histogram(
            "shadow_score_difference",
            "Shadow candidate's score minus the served sequence model's, per scored window.",
            ["task"],
            namespace=ns,
            registry=registry,
            buckets=(-0.5, -0.2, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.2, 0.5),
        )
        self.shadow_model = Info(
            "shadow_model", "The candidate sequence model scored in shadow (metrics only).", namespace=ns, registry=registry
        )
        self.model_refresh = Counter(
            "model_refresh",
            "Attempts to load a newer model from the registry, by result.",
            ["result"],
            namespace=ns,
            registry=registry,
        )

        # --- query API (stream/api.py)
        self.api_requests = Counter(
            "api_requests",
            "Query API requests (/v1/users/...), by how they were answered; 'unauthorized': a missing or wrong "
            "bearer token (401).",
            ["result"],
            namespace=ns,
            registry=registry,
        )
        self.api_lookup_seconds = Histogram(
            "api_lookup_seconds",
            "Wall time of a user lookup answered by this worker (read the record, score it), in seconds.",
            namespace=ns,
            registry=registry,
            buckets=SCORING_BUCKETS,
        )

        # --- lifecycle
        self.worker_ready = Gauge(
            "worker_ready",
            "1 when the worker is ready (tables recovered, model loaded), else 0.",
            namespace=ns,
            registry=registry,
        )

        # Start every bounded counter at zero so rate() and the alerts see a series from the first
        # scrape instead of "no data" until the first increment.
        for t in EVENT_TYPE_LABELS:
            self.events_consumed.labels(type=t)
        for r in INVALID_REASONS:
            self.invalid_events.labels(reason=r)
        for task in self.tasks:
            self.signals_emitted.labels(task=task)
            self.pending_labels.labels(task=task)
        for task in LEARNED:  # the tasks with an online model
            self.online_models_warm.labels(task=task)
            self.online_labels_learned.labels(task=task)
        for r in REFRESH_RESULTS:
            self.model_refresh.labels(result=r)
        for r in API_RESULTS:
            self.api_requests.labels(result=r)
        for path in ("local", "forwarded"):
            self.events_routed.labels(path=path)
        # Quality gauges start absent on purpose: a 0 AUC before the first label would page someone.
        self._lag_series: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ recording helpers
    def count_event(self, event_type: str, n: int = 1) -> None:
        """Count ``n`` records of ``event_type`` read from the events topic."""
        self.events_consumed.labels(type=_fold(event_type, EVENT_TYPE_LABELS)).inc(n)

    def count_state_rebuild(self, cause: str) -> None:
        self.state_rebuilds.labels(cause=_check(cause, REBUILD_CAUSES, "cause")).inc()

    def count_invalid(self, reason: str, n: int = 1) -> None:
        """Count ``n`` invalid records; also counts them under ``events_consumed{type="invalid"}``."""
        self.invalid_events.labels(reason=_fold(reason, INVALID_REASONS)).inc(n)
        self.events_consumed.labels(type="invalid").inc(n)

    def count_signal(self, task: str, n: int = 1) -> None:
        """Count ``n`` signals sent for ``task``."""
        self.signals_emitted.labels(task=_check(task, self.tasks, "task")).inc(n)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one processed batch: its size and its wall time."""
        self.processing_batch_size.observe(size)
        self.processing_seconds.observe(seconds)

    def observe_event_to_signal(self, event_timestamp_s: float, sent_at_s: float | None = None) -> None:
        """Record the delay from an event's Kafka timestamp (epoch seconds, as Faust's
        ``message.timestamp``) to the send of the signal it triggered (default: now).

        Clock skew between producer and worker can make the difference negative; it is clamped
        to 0 rather than dropped, so the count still matches the signals sent.
        """
        now = time.time() if sent_at_s is None else sent_at_s
        self.event_to_signal_seconds.observe(max(0.0, now - event_timestamp_s))

    def observe_records(self, sizes: Iterable[int]) -> None:
        """Record the sizes, in bytes, of the per-user records a batch wrote to the state table."""
        observe = self.state_record_bytes.observe
        for n in sizes:
            observe(n)

    def observe_scoring(self, size: int, seconds: float) -> None:
        """Record one sequence-model scoring call."""
        self.scoring_batch_size.observe(size)
        self.scoring_seconds.observe(seconds)

    def count_sequence_states(self, stepped: int, rebuilt: int) -> None:
        """Count the events whose hidden state was stepped or rebuilt."""
        self.sequence_states.labels(state="stepped").inc(stepped)
        self.sequence_states.labels(state="rebuilt").inc(rebuilt)

    def set_pending_labels(self, task: str, n: int) -> None:
        """Set how many predictions of ``task`` wait for their label."""
        self.pending_labels.labels(task=_check(task, self.tasks, "task")).set(n)

    def set_online_quality(
        self,
        task: str,
        *,
        roc_auc: float | None = None,
        log_loss: float | None = None,
        calibration_error: float | None = None,
    ) -> None:
        """Publish the online quality of ``task``'s model. ``None`` or NaN leaves a gauge as it was
        (River's metrics are undefined until both classes have been seen)."""
        _check(task, self.tasks, "task")
        for gauge, value in (
            (self.online_roc_auc, roc_auc),
            (self.online_log_loss, log_loss),
            (self.online_calibration_error, calibration_error),
        ):
            if value is not None and not math.isnan(value):
                gauge.labels(task=task).set(value)

    def set_sequence_model(self, version: str) -> None:
        """Publish the served sequence model version (replaces the previous one)."""
        self.sequence_model.info({"version": version})

    def observe_shadow(self, task: str, differences) -> None:
        """Record shadow-minus-served score differences of one scoring call."""
        h = self.shadow_score_difference.labels(task=_check(task, LEARNED, "task"))
        for d in differences:
            h.observe(float(d))

    def set_shadow_model(self, version: str) -> None:
        self.shadow_model.info({"version": version})

    def count_api(self, result: str) -> None:
        """Count one query API request by how it was answered (:data:`API_RESULTS`)."""
        self.api_requests.labels(result=_check(result, API_RESULTS, "result")).inc()

    def count_model_refresh(self, ok: bool) -> None:
        """Count one model refresh attempt."""
        self.model_refresh.labels(result="success" if ok else "failure").inc()

    def set_ready(self, ready: bool) -> None:
        """Mirror the readiness probe into ``worker_ready``."""
        self.worker_ready.set(1 if ready else 0)

    # ------------------------------------------------------------------ consumer lag series
    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Set ``consumer_lag`` for each ``(topic, partition)`` in ``lag``.

        Partitions not in ``lag`` keep their last value; call :meth:`retain_partitions` after a
        rebalance to drop the ones this worker no longer owns.
        """
        for (topic, partition), value in lag.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(value)
            self._lag_series.add((topic, int(partition)))

    def remove_partition(self, topic: str, partition: int) -> None:
        """Delete the ``consumer_lag`` series of a partition this worker no longer owns.

        Without this the gauge would keep reporting the last lag seen before the revocation, and
        two workers would both claim the partition on the dashboard. Unknown partitions are ignored.
        """
        key = (topic, int(partition))
        if key in self._lag_series:
            self._lag_series.discard(key)
            self.consumer_lag.remove(topic, str(partition))

    def retain_partitions(self, owned: Iterable[tuple[str, int]], topics: Collection[str] | None = None) -> None:
        """Remove the lag series of every partition not in ``owned`` (only of ``topics``, if given:
        the topics of the reader calling) and set ``assigned_partitions``."""
        keep = {(t, int(p)) for t, p in owned}
        for topic, partition in sorted(self._lag_series - keep):
            if topics is not None and topic not in topics:
                continue
            self.remove_partition(topic, partition)
        self.assigned_partitions.set(len(keep))

    # ------------------------------------------------------------------ reading back
    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one sample (``None`` if absent); for tests and debugging."""
        return self.registry.get_sample_value(name, labels)

    def series_names(self) -> frozenset[str]:
        """Every sample name the registry can expose (``x_total``, ``x_bucket``, ``x_info`` ...).

        Used to check that dashboards and alert rules only query metrics that exist.
        """
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
            "gauge": ("",),
        }
        return frozenset(
            family.name + suffix for family in self.registry.collect() for suffix in suffixes[family.type]
        )
