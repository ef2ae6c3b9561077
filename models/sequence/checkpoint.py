"""Save and load sequence-model checkpoints: one file that is enough to score.

A checkpoint holds the weights, the :class:`SeqConfig` as a dict, the category vocabulary
(bucket -> category_id, so top-k buckets can be named), the feature schema version, training
metrics, the training data's time range and the code version. Loading needs this module, the
config and the network only: no training code.

Files are written to a temporary name and renamed, so a crash never leaves half a checkpoint,
and loaded with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from models.sequence.config import SeqConfig
from models.sequence.data import FEATURE_SCHEMA_VERSION
from models.sequence.model import SequenceModel

FORMAT = "intentstream.sequence/1"
CHECKPOINT_NAME = "seq.pt"  # the file's name inside each registry version (models.training writes it)


class CheckpointError(ValueError):
    """The file is not a usable checkpoint (corrupt, another format, or another feature schema)."""


@dataclasses.dataclass
class Loaded:
    model: SequenceModel
    config: SeqConfig
    vocab: dict[int, str]
    metrics: dict[str, Any]
    data_range: tuple[int, int]
    code_version: str
    feature_schema_version: int


def code_version() -> str:
    """The git commit of the code that trained the model, or "unknown" outside a checkout."""
    env = os.environ.get("INTENTSTREAM_CODE_VERSION")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _plain(obj: Any) -> Any:
    """Metrics as plain Python values (weights_only loading accepts only basic types)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def save(
    path: str | os.PathLike,
    model: SequenceModel,
    cfg: SeqConfig,
    *,
    vocab: dict[int, str],
    metrics: dict[str, Any] | None = None,
    data_range: tuple[int, int] | None = None,
) -> None:
    path = Path(path)
    blob = {
        "format": FORMAT,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": {int(k): str(v) for k, v in vocab.items()},
        "metrics": _plain(metrics or {}),
        "data_range": list(data_range) if data_range else None,
        "code_version": code_version(),
        "torch_version": str(torch.__version__),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint; raises :class:`CheckpointError` with the reason if it cannot be used."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated zip, random bytes, a pickle of foreign objects...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    if blob.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: feature schema {blob.get('feature_schema_version')} != this code's {FEATURE_SCHEMA_VERSION}"
        )
    try:
        cfg = SeqConfig.from_dict(blob["config"])
        model = SequenceModel(cfg)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: config or weights do not fit this code ({e})") from e
    model.to(map_location).eval()
    dr = blob.get("data_range")
    return Loaded(
        model=model,
        config=cfg,
        vocab={int(k): v for k, v in blob["vocab"].items()},
        metrics=blob.get("metrics", {}),
        data_range=tuple(dr) if dr else (0, 0),
        code_version=blob.get("code_version", "unknown"),
        feature_schema_version=blob["feature_schema_version"],
    )
