"""One frozen settings object: the only reader of environment variables.

Every option has a default suited to the embedded demo; an environment variable overrides it
(``INTENTSTREAM_<NAME>``, except ``KAFKA_BOOTSTRAP_SERVERS``). ``intentstream config`` prints each
option with the variable that sets it. A bad value stops start-up with a message that names the
variable (see :func:`load_settings`).

>>> s = Settings(events_partitions=4)
>>> s.events_partitions, s.events_topic
(4, 'shop.events')
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.logic.signals import Task

PREFIX = "INTENTSTREAM_"
MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS


class ConfigError(SystemExit):
    """Raised for an invalid configuration; its message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    # --- deployment
    env: Literal["dev", "production"] = Field("dev", description="production requires an explicit pseudonym key")
    app_id: str = Field("intentstream", description="Faust app id: consumer group and internal topic prefix")
    kafka_bootstrap_servers: str | None = Field(
        None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "INTENTSTREAM_KAFKA_BOOTSTRAP_SERVERS"),
        description="host:port[,host:port]; unset = start a local Kafka broker",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    data_dir: Path = Field(Path(".intentstream"), description="state, local broker data, keys")
    kafka_home: Path | None = Field(
        None, description="where `make kafka` puts the local broker's jars (default ~/.cache/intentstream/kafka-<version>)"
    )
    java_home: Path | None = Field(
        None, validation_alias=AliasChoices("JAVA_HOME", "INTENTSTREAM_JAVA_HOME"),
        description="the Java 17+ that runs the local broker (default: java on PATH)",
    )
    broker_heap_mb: int = Field(1024, ge=256, le=65_536, description="heap of the local broker's JVM")
    model_dir: Path | None = Field(None, description="model registry directory (default: DATA_DIR/models)")
    store: Literal["memory://", "rocksdb://"] = Field("rocksdb://", description="Faust table store")
    stop_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a worker's stop that takes longer (a broker gone) ends the process at once; "
        "keep it below the orchestrator's grace period"
    )  # fmt: skip
    web_port: int = Field(6066, ge=1, le=65535, description="/metrics, /healthz, /readyz")
    web_host: str = Field("127.0.0.1", description="address the web server binds (0.0.0.0 in containers)")
    web_advertised_host: str | None = Field(
        None, description="the host name or address other workers reach this one's web port at: a lookup of a user "
        "another worker owns is forwarded there (default: WEB_HOST, or this host's name when it binds 0.0.0.0 or ::)",
    )  # fmt: skip
    api_token: SecretStr | None = Field(
        None, description="bearer token of the query API (/v1/...; >= 16 chars); required by a worker with "
        "INTENTSTREAM_ENV=production; unset in dev: no token asked",
    )  # fmt: skip
    standby_replicas: int = Field(0, ge=0, le=3, description="warm copies of each table partition on other workers")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key for user ids (>= 16 chars); dev default: a random key kept in DATA_DIR"
    )

    # --- topics
    events_topic: str = "shop.events"
    events_partitions: int = Field(4, ge=1, le=1024)
    dlq_topic: str = "shop.events.dlq"
    intent_topic: str = "signals.purchase_intent"
    churn_topic: str = "signals.churn_risk"
    latent_topic: str = "signals.latent_needs"
    signal_partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=10)

    # --- batching: per-event table writes and awaited sends cost far more than the work itself
    ingest: Literal["faust", "raw"] = Field(
        "raw",
        description="ingest stage: 'raw', a batched aiokafka consumer reading the input partitions that go with "
        "the internal partitions Faust assigned this worker (offsets under <app_id>-ingest), or 'faust', an agent "
        "(slower: Faust's per-record cost, docs/BENCHMARKS.md)",
    )
    batch_size: int = Field(1000, ge=1, le=100_000)
    batch_wait_ms: int = Field(
        20, ge=1, le=60_000,
        description="longest wait to fill a batch: longer waits make bigger, cheaper batches and add latency",
    )  # fmt: skip
    batch_linger_ms: int = Field(
        40, ge=0, le=10_000,
        description="the raw ingest holds fetched records until the oldest is this old (Kafka timestamp), so that "
        "batches grow at moderate load instead of each paying the fixed costs; older records go at once; 0: off "
        "(stream/logic/batching.py, docs/BENCHMARKS.md)",
    )  # fmt: skip
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: outputs may repeat after a crash (same signal_id); exactly_once: each "
        "worker's outputs and input offsets commit in Kafka transactions, so read_committed consumers see each "
        "signal once (stream/agents/outputs.py)",
    )
    commit_interval_ms: int = Field(
        1_000, ge=10, le=600_000,
        description="at_least_once: time between two offset commits, Faust's and the raw ingest's (each after a "
        "producer flush); a crash re-reads at most this much input, which the state de-duplicates",
    )  # fmt: skip
    transaction_commit_ms: int = Field(
        100, ge=1, le=60_000,
        description="exactly_once: longest time between two commits of the raw ingest's transaction (outputs "
        "become visible to read_committed consumers at each commit)",
    )  # fmt: skip
    transaction_timeout_ms: int = Field(
        15_000, ge=1_000, le=900_000,
        description="exactly_once: the broker aborts a transaction left open this long (a worker that died and "
        "did not come back under the same worker id)",
    )  # fmt: skip
    worker_id: str | None = Field(
        None, description="stable name of this worker (its transactional id); default: host name + data directory"
    )
    local_processing: bool = Field(
        True,
        description="process an event on the worker that ingests it when that worker owns the event's internal "
        "partition, instead of through the internal topic (raw ingest, inline scoring; stream/logic/routing.py)",
    )
    max_event_bytes: int = Field(16_384, ge=256, le=1_048_576, description="larger input records are dead-lettered as oversized")
    max_record_bytes: int = Field(
        1_000_000, ge=65_536, le=100 * 2**20,
        description="the largest record a worker produces (its producers' max request size; the brokers' and topics' "
        "message.max.bytes must allow it): internal packs are split to fit",
    )  # fmt: skip
    dead_letter_max_bytes: int = Field(
        65_536, ge=0, le=16 * 2**20, description="a dead letter keeps at most this many bytes of the original record"
    )
    max_future_skew_ms: int = Field(3_600_000, ge=0, description="events further ahead of the wall clock are rejected")

    # --- state and signals
    allowed_lateness_ms: int = Field(60_000, ge=0)
    session_gap_ms: int = Field(30 * MINUTE_MS, ge=1000)
    intent_horizon_ms: int = Field(30 * MINUTE_MS, ge=1000)
    churn_after_ms: int = Field(30 * DAY_MS, ge=1000, description="silence after which a user counts as churned")
    churn_risk_after_ms: int = Field(7 * DAY_MS, ge=1000, description="silence after which churn risk is checked")
    state_ttl_ms: int = Field(90 * DAY_MS, ge=1000)
    intent_threshold: float = Field(0.5, gt=0, lt=1)
    churn_threshold: float = Field(0.6, gt=0, lt=1)
    hysteresis: float = Field(0.1, ge=0, lt=0.5)
    cooldown_ms: int = Field(30 * MINUTE_MS, ge=0)
    latent_top_k: int = Field(5, ge=1, le=50)
    archive_dir: str | None = Field(
        None, description="event archive (Parquet by hour; a directory or s3:// path); default DATA_DIR/archive, 'off' disables"
    )
    archive_flush_s: float = Field(60.0, gt=0, description="seconds between archive files (at most this much is lost in a crash)")
    online_learning: bool = Field(True, description="River models learn from delayed labels and serve once warm")
    model_checkpoint_s: float = Field(30.0, gt=0, description="seconds between online-model checkpoints per partition")
    model_checkpoint_labels: int = Field(
        2_000, ge=1, description="most labels a partition's online models learn between two checkpoints (fewer "
        "while they are young: a tenth of what they had learned)"
    )
    sequence_serving: bool = Field(True, description="serve the registry's current sequence model (blended with the online model)")
    model_poll_s: float = Field(10.0, gt=0, description="seconds between looks at the model registry for a newly promoted version")
    sequence_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the sequence model scores (auto: cuda if present)")
    sequence_max_batch: int = Field(512, ge=1, le=65_536, description="most windows per sequence-model forward pass")
    sequence_threads: int = Field(1, ge=1, le=64, description="torch CPU threads for sequence scoring")
    sequence_shadow: bool = Field(False, description="also score with the newest unpromoted version; its scores feed metrics only")
    explain_events: int = Field(8, ge=0, le=64, description="newest events tried by the occlusion explanation of a signal (0: none)")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        for hp in v.split(","):
            host, sep, port = hp.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{hp!r} is not host:port")
        return v.strip()

    @field_validator("kafka_home", "java_home", mode="before")
    @classmethod
    def _unset_path(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("pseudonym_key", "api_token")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @model_validator(mode="after")
    def _checks(self) -> Settings:
        if self.env == "production" and self.pseudonym_key is None:
            raise ValueError("INTENTSTREAM_PSEUDONYM_KEY must be set when INTENTSTREAM_ENV=production")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError("INTENTSTREAM_KAFKA_SASL_USERNAME is required for SASL")
        if self.state_ttl_ms <= self.churn_after_ms:
            # A user's state may only expire once their churn outcome is known.
            raise ValueError("INTENTSTREAM_STATE_TTL_MS must be greater than INTENTSTREAM_CHURN_AFTER_MS")
        if self.sequence_device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("INTENTSTREAM_SEQUENCE_DEVICE=cuda but no CUDA device is available (use auto or cpu)")
        if self.allowed_lateness_ms >= self.session_gap_ms:
            raise ValueError("INTENTSTREAM_ALLOWED_LATENESS_MS must be smaller than INTENTSTREAM_SESSION_GAP_MS")
        if self.dead_letter_max_bytes * 4 // 3 + 4096 > self.max_record_bytes:
            raise ValueError("INTENTSTREAM_DEAD_LETTER_MAX_BYTES, base64-encoded, must fit in INTENTSTREAM_MAX_RECORD_BYTES")
        if self.max_event_bytes * 6 + 4096 > self.max_record_bytes:
            # An accepted event, re-encoded with its text escaped (up to 6 bytes a character), must fit in a pack.
            raise ValueError("INTENTSTREAM_MAX_EVENT_BYTES must be at most a sixth of INTENTSTREAM_MAX_RECORD_BYTES")
        names = [self.events_topic, self.dlq_topic, self.intent_topic, self.churn_topic, self.latent_topic]
        if len(set(names)) != len(names):
            raise ValueError("topic names must be distinct")
        return self

    def check_worker(self) -> None:
        """What a worker needs beyond every command's settings: it serves the query API, so in
        production only with a token (the trainer and the tools run without one)."""
        if self.env == "production" and self.api_token is None:
            raise ConfigError("intentstream: invalid configuration\n  INTENTSTREAM_API_TOKEN: must be set when "
                              "INTENTSTREAM_ENV=production (the query API's bearer token, >= 16 chars)")  # fmt: skip

    @property
    def advertised_url(self) -> str:
        """This worker's web address as other workers reach it (Faust's ``canonical_url``)."""
        host = self.web_advertised_host
        if not host:
            import socket

            host = socket.gethostname() if self.web_host in ("0.0.0.0", "::", "") else self.web_host
        return f"http://{host}:{self.web_port}"

    # --- derived
    @property
    def registry_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def archive_root(self) -> str | None:
        if self.archive_dir == "off":
            return None
        return self.archive_dir or str(self.data_dir / "archive")

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}-events-by-user"

    @property
    def ingest_group(self) -> str:
        """The consumer group under which the input topic's offsets are committed: the raw
        ingest's own (``<app_id>-ingest``) or, with ``ingest=faust``, the application's. With
        exactly-once also the application's: aiokafka 0.14 commits the offsets of one consumer
        group per transaction, and a transactional offset commit needs no group membership."""
        if self.ingest == "raw" and self.processing_guarantee == "at_least_once":
            return f"{self.app_id}-ingest"
        return self.app_id

    def worker_identity(self) -> str:
        """This worker's stable name: ``INTENTSTREAM_WORKER_ID``, or the host name and a digest of the
        data directory (a StatefulSet pod's name and volume; a local worker's directory), so that a
        restarted worker has the same name and two workers on one host differ.

        >>> Settings(worker_id="worker-0").worker_identity()
        'worker-0'
        """
        if self.worker_id:
            return self.worker_id
        import hashlib
        import socket

        return f"{socket.gethostname()}-{hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:8]}"

    def changelog_topics(self) -> dict[str, str]:
        """Each Faust table's changelog topic, named as Faust names it (``<app_id>-<table>-changelog``)."""
        return {table: f"{self.app_id}-{table}-changelog" for table in ("user-state", "online-models")}

    def signal_topics(self) -> dict[Task, str]:
        return {Task.PURCHASE_INTENT: self.intent_topic, Task.CHURN_RISK: self.churn_topic, Task.LATENT_NEEDS: self.latent_topic}

    def secret_key(self) -> bytes:
        """The pseudonymisation key. Dev: created once at random under DATA_DIR (mode 0600)."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        path = self.data_dir / "pseudonym.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()


def env_var(field: str) -> str:
    """The environment variable that sets ``field``."""
    if field == "kafka_bootstrap_servers":
        return "KAFKA_BOOTSTRAP_SERVERS"
    if field == "java_home":
        return "JAVA_HOME"
    return PREFIX + field.upper()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; on error exit with the offending variable named."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if p]
            name = env_var(loc[0]) if loc else "configuration"
            lines.append(f"  {name}: {err['msg']}")
        raise ConfigError("intentstream: invalid configuration\n" + "\n".join(lines)) from None


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(environment variable, current value, description) for every option; secrets masked."""
    rows = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "***" if isinstance(value, SecretStr) else str(value)
        rows.append((env_var(name), shown, field.description or ""))
    return rows
