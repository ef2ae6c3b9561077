"""Versioned model artifacts on a local directory, written atomically, promoted by a metric.

Layout under ``root``::

    versions/000001/            one directory per version, never modified once visible
        artifact/...            the saved files (a directory, or ``artifact.bin`` for bytes)
        metadata.json           caller metadata + version, created_at, sha256 of every file
    state.json                  {"current": "000002", "history": ["000001", "000002"]}

A version is written into a hidden temporary directory and renamed into ``versions/`` in one
step, so readers see it whole or not at all; ``state.json`` is replaced the same way. Before a
version is promoted or loaded its checksums are verified, and the caller's loader runs on it:
a corrupted or incompatible artifact raises :class:`ArtifactError`, and the current model stays.

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> v1 = reg.save(b"model-1", {"metrics": {"val_auc": 0.70}})
>>> reg.promote_if_better(v1, metric="val_auc")
True
>>> v2 = reg.save(b"model-2", {"metrics": {"val_auc": 0.65}})
>>> reg.promote_if_better(v2, metric="val_auc"), reg.current()
(False, '000001')
>>> (reg.path(reg.current()) / "artifact.bin").read_bytes()
b'model-1'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_STATE = "state.json"
_META = "metadata.json"


class ArtifactError(RuntimeError):
    """A version that must not be served: missing, corrupted, or rejected by its loader."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Registry:
    def __init__(self, root: str | os.PathLike, *, create: bool = True) -> None:
        """``create=False`` for readers (a worker on a read-only mount): nothing is created, and a
        registry that does not exist yet simply has no current version."""
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        if create:
            self.versions_dir.mkdir(parents=True, exist_ok=True)

    # -- writing --------------------------------------------------------------------------------
    def save(self, artifact: str | os.PathLike | bytes, metadata: dict[str, Any] | None = None) -> str:
        """Store a new version (a directory or file path, or raw bytes); returns its version id.

        ``metadata`` should carry ``metrics`` (used by :meth:`promote_if_better`) and whatever
        describes compatibility (e.g. the feature schema version). It must be JSON-serialisable.
        """
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            dest = tmp / "artifact"
            if isinstance(artifact, (bytes, bytearray)):
                dest.mkdir()
                (dest / "artifact.bin").write_bytes(bytes(artifact))
            elif Path(artifact).is_dir():
                shutil.copytree(artifact, dest)
            else:
                dest.mkdir()
                shutil.copy2(artifact, dest / Path(artifact).name)
            files = {str(p.relative_to(dest)): _sha256(p) for p in sorted(dest.rglob("*")) if p.is_file()}
            for p in dest.rglob("*"):
                if p.is_file():
                    with open(p, "rb+") as f:
                        os.fsync(f.fileno())
            meta = dict(metadata or {})
            meta["created_at"] = datetime.now(UTC).isoformat()
            meta["files"] = files
            while True:  # another writer may take the same number: rename fails, try the next one
                version = f"{self._next_number():06d}"
                meta["version"] = version
                with open(tmp / _META, "w") as f:
                    json.dump(meta, f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.rename(tmp, self.versions_dir / version)
                except OSError:
                    if (self.versions_dir / version).exists():
                        continue
                    raise
                _fsync_dir(self.versions_dir)
                return version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _next_number(self) -> int:
        nums = [int(p.name) for p in self.versions_dir.iterdir() if p.name.isdigit()]
        return max(nums, default=0) + 1

    # -- reading --------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Metadata of every stored version, oldest first."""
        out = []
        for p in sorted(self.versions_dir.iterdir()):
            if p.name.isdigit():
                try:
                    out.append(self.metadata(p.name))
                except ArtifactError:
                    continue  # unreadable metadata: not listed, and refused by promote/load
        return out

    def path(self, version: str) -> Path:
        """Directory holding the version's files."""
        return self.versions_dir / version / "artifact"

    def metadata(self, version: str) -> dict[str, Any]:
        try:
            with open(self.versions_dir / version / _META) as f:
                return json.load(f)
        except FileNotFoundError:
            raise ArtifactError(f"version {version} does not exist") from None
        except (OSError, ValueError) as e:
            raise ArtifactError(f"version {version}: unreadable metadata ({e})") from e

    def verify(self, version: str) -> dict[str, Any]:
        """Check every file against its recorded checksum; returns the metadata."""
        meta = self.metadata(version)
        root = self.path(version)
        for name, digest in meta.get("files", {}).items():
            p = root / name
            if not p.is_file():
                raise ArtifactError(f"version {version}: file {name} is missing")
            if _sha256(p) != digest:
                raise ArtifactError(f"version {version}: file {name} is corrupted (checksum mismatch)")
        return meta

    def _state(self) -> dict[str, Any]:
        try:
            with open(self.root / _STATE) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"current": None, "history": []}

    def current(self) -> str | None:
        return self._state()["current"]

    # -- promotion ------------------------------------------------------------------------------
    def promote(self, version: str, loader: Callable[[Path], Any] | None = None) -> None:
        """Make ``version`` current after verifying it (and, if given, loading it with ``loader``)."""
        self.verify(version)
        if loader is not None:
            self._load(version, loader)
        state = self._state()
        state["history"] = [*state["history"], version]
        state["current"] = version
        _atomic_write_json(self.root / _STATE, state)

    def promote_if_better(
        self,
        version: str,
        metric: str,
        higher_is_better: bool = True,
        loader: Callable[[Path], Any] | None = None,
    ) -> bool:
        """Promote ``version`` if its ``metadata["metrics"][metric]`` beats the current version's
        (or there is no current version). Returns whether it was promoted."""
        new = self.verify(version).get("metrics", {}).get(metric)
        if new is None or new != new:
            raise ArtifactError(f"version {version} has no metric {metric!r}")
        cur = self.current()
        if cur is not None:
            old = self.metadata(cur).get("metrics", {}).get(metric)
            if old is not None and (new <= old if higher_is_better else new >= old):
                return False
        self.promote(version, loader)
        return True

    def rollback(self) -> str:
        """Go back to the version promoted before the current one; returns it."""
        state = self._state()
        hist = state["history"]
        if len(hist) < 2:
            raise ArtifactError("nothing to roll back to")
        prev = hist[-2]
        self.verify(prev)
        state["history"] = hist[:-1]
        state["current"] = prev
        _atomic_write_json(self.root / _STATE, state)
        return prev

    def _load(self, version: str, loader: Callable[[Path], T]) -> T:
        try:
            return loader(self.path(version))
        except ArtifactError:
            raise
        except Exception as e:  # the loader's own error (bad checkpoint, schema mismatch...)
            raise ArtifactError(f"version {version} cannot be loaded: {type(e).__name__}: {e}") from e

    def load_current(self, loader: Callable[[Path], T] | None = None) -> tuple[str, T | Path]:
        """(version, loaded object) of the current version; the artifact directory if no loader.

        Raises :class:`ArtifactError` when there is no current version or it fails its checks,
        so a worker can keep serving the model it already has.
        """
        cur = self.current()
        if cur is None:
            raise ArtifactError("no current version")
        self.verify(cur)
        if loader is None:
            return cur, self.path(cur)
        return cur, self._load(cur, loader)
