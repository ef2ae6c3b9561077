"""The JSON Schemas in schemas/ agree with the code that reads and writes the topics."""

import dataclasses
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from models.events import InvalidEvent, parse_event
from models.features.state import StateConfig
from stream.logic.ingest import REASONS, DeadLetter, Pseudonymizer, ingest_one
from stream.logic.pipeline import Pipeline, PipelineConfig
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.logic.signals import Signal, Task
from stream.logic.simulator import ShopperSimulator

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def validator(name):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_simulated_events_match_the_input_schema_and_the_parser():
    v = validator("shop_event")
    for raw in ShopperSimulator(seed=3, users=50).take(2000):
        v.validate(raw)
        parse_event(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"event_id": "1", "user_id": "u", "type": "refund", "ts": 1_700_000_000_000},
        {"event_id": "1", "user_id": "u", "type": "click", "ts": 1_700_000_000_000},
        {"event_id": "1", "user_id": "u", "type": "search", "ts": 1_700_000_000_000},
        {"event_id": "1", "type": "purchase", "ts": 1_700_000_000_000},
        {"event_id": "1", "user_id": "u", "type": "purchase", "ts": 1_700_000_000},
    ],
)
def test_schema_and_parser_reject_the_same_events(raw):
    assert list(validator("shop_event").iter_errors(raw))
    with pytest.raises(InvalidEvent):
        parse_event(raw)


def test_signals_from_the_pipeline_match_the_schema():
    cfg = PipelineConfig(StateConfig(), PolicyRule(0.5, 0.1, 60_000), PolicyRule(0.6, 0.1, 60_000))
    pipe = Pipeline(cfg, RuleScorer(), clock=lambda: 1)
    pseudonymize = Pseudonymizer(b"schema-test-key-0123456789")
    events = [ingest_one(json.dumps(e).encode(), pseudonymize) for e in ShopperSimulator(seed=1, users=30).take(3000)]
    out = pipe.process({}, [(0, e) for e in events])
    assert {s.task for s in out.signals} >= {Task.PURCHASE_INTENT, Task.LATENT_NEEDS}
    v = validator("signal")
    for s in out.signals:
        assert isinstance(s, Signal)
        v.validate(json.loads(s.to_json()))


def test_the_signal_type_and_its_schema_name_the_same_fields_and_tasks():
    schema = json.loads((SCHEMAS / "signal.schema.json").read_text())
    fields = [f.name for f in dataclasses.fields(Signal)]
    assert set(fields) == set(schema["properties"])
    required = {f.name for f in dataclasses.fields(Signal) if f.default is dataclasses.MISSING}
    assert required == set(schema["required"])
    assert schema["properties"]["task"]["enum"] == [t.value for t in Task]


def test_dead_letters_match_the_schema_and_every_reason_is_listed():
    v = validator("dead_letter")
    enum = set(json.loads((SCHEMAS / "dead_letter.schema.json").read_text())["properties"]["reason"]["enum"])
    assert enum == set(REASONS)
    d = DeadLetter("malformed_json", "Expecting value", b"{oops", "shop.events", 2, 41).to_dict()
    v.validate(d)
