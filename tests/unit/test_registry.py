"""Model registry: versions, promotion by metric, rollback, atomic writes, refusal of bad artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from models.registry import ArtifactError, Registry


def read_model(path: Path) -> bytes:
    """A stand-in loader: a real one would be ``lambda p: SequenceScorer.load(p / "seq.pt")``."""
    data = (path / "artifact.bin").read_bytes()
    if not data.startswith(b"model"):
        raise ValueError("incompatible artifact")
    return data


def test_save_list_promote_and_load(tmp_path):
    reg = Registry(tmp_path)
    v1 = reg.save(b"model-1", {"metrics": {"auc": 0.6}, "schema": 1})
    v2 = reg.save(b"model-2", {"metrics": {"auc": 0.7}})
    assert [m["version"] for m in reg.list()] == [v1, v2]
    assert reg.list()[0]["schema"] == 1 and "created_at" in reg.list()[0]
    assert reg.current() is None
    with pytest.raises(ArtifactError, match="no current"):
        reg.load_current(read_model)
    reg.promote(v1)
    assert reg.load_current(read_model) == (v1, b"model-1")
    # A second Registry object on the same root sees the same state (a restarted worker).
    assert Registry(tmp_path).current() == v1


def test_saves_a_directory_artifact(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "seq.pt").write_bytes(b"weights")
    (src / "sub" / "vocab.json").write_text("{}")
    reg = Registry(tmp_path / "reg")
    v = reg.save(src, {"metrics": {"auc": 0.5}})
    reg.promote(v)
    version, path = reg.load_current()
    assert version == v and (path / "seq.pt").read_bytes() == b"weights"
    assert (path / "sub" / "vocab.json").exists()


def test_promote_if_better_and_rollback(tmp_path):
    reg = Registry(tmp_path)
    v1 = reg.save(b"model-1", {"metrics": {"auc": 0.70, "logloss": 0.3}})
    v2 = reg.save(b"model-2", {"metrics": {"auc": 0.65, "logloss": 0.2}})
    v3 = reg.save(b"model-3", {"metrics": {"auc": 0.75, "logloss": 0.4}})
    assert reg.promote_if_better(v1, "auc") is True  # nothing current yet
    assert reg.promote_if_better(v2, "auc") is False and reg.current() == v1
    assert reg.promote_if_better(v3, "auc") is True and reg.current() == v3
    assert reg.promote_if_better(v2, "logloss", higher_is_better=False) is True
    assert reg.rollback() == v3
    assert reg.rollback() == v1
    with pytest.raises(ArtifactError, match="nothing to roll back"):
        reg.rollback()
    with pytest.raises(ArtifactError, match="no metric"):
        reg.promote_if_better(reg.save(b"model-4", {}), "auc")


def test_corrupted_artifact_is_refused_and_current_kept(tmp_path):
    reg = Registry(tmp_path)
    good = reg.save(b"model-good", {"metrics": {"auc": 0.6}})
    reg.promote(good)
    bad = reg.save(b"model-bad", {"metrics": {"auc": 0.9}})
    (reg.path(bad) / "artifact.bin").write_bytes(b"model-b\x00d")  # bit rot after the save
    with pytest.raises(ArtifactError, match="corrupted"):
        reg.promote_if_better(bad, "auc")
    assert reg.current() == good
    # Corruption of the current version itself is reported, not silently served.
    (reg.path(good) / "artifact.bin").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        reg.load_current(read_model)


def test_incompatible_artifact_rejected_by_loader(tmp_path):
    reg = Registry(tmp_path)
    good = reg.save(b"model-1", {"metrics": {"auc": 0.6}})
    reg.promote(good, loader=read_model)
    other = reg.save(b"not a model", {"metrics": {"auc": 0.9}})
    with pytest.raises(ArtifactError, match="cannot be loaded: ValueError: incompatible"):
        reg.promote_if_better(other, "auc", loader=read_model)
    assert reg.current() == good


def test_crash_during_save_leaves_no_version(tmp_path, monkeypatch):
    reg = Registry(tmp_path)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        reg.save(b"model-1", {"metrics": {"auc": 0.6}})
    monkeypatch.undo()
    assert reg.list() == []
    assert [p.name for p in tmp_path.iterdir()] == ["versions"]  # the temporary dir was removed
    # A leftover temporary dir from a hard crash (kill -9) is never taken for a version.
    (tmp_path / ".incoming-x" / "artifact").mkdir(parents=True)
    assert reg.list() == [] and reg.save(b"model-2") == "000001"


def test_state_file_is_replaced_atomically(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    v1, v2 = reg.save(b"model-1"), reg.save(b"model-2")
    reg.promote(v1)
    real_replace = os.replace

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        reg.promote(v2)
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads((tmp_path / "state.json").read_text())["current"] == v1
    assert reg.current() == v1
