"""Re-runnable benchmarks and evaluations (docs/BENCHMARKS.md names the command for each figure)."""

from __future__ import annotations

import json
from pathlib import Path


def print_json(doc: object, path: Path | None = None) -> None:
    """Print ``doc`` as indented JSON on stdout and, if ``path`` is given, write it there too."""
    out = json.dumps(doc, indent=2)
    print(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
