"""Full-pipeline benchmark: ``python -m benchmarks.pipeline_bench`` is ``intentstream bench pipeline``.

Kept beside the other benchmarks so that ``benchmarks/`` lists every benchmark there is; the
harness itself is :mod:`benchmarks.harness`, which ``intentstream bench`` imports. Options are
those of ``intentstream bench`` (``--events``, ``--users``, ``--partitions``, ``--repeats``,
``--rate``, ``--restart``, ``--json``); add ``baselines`` or ``all`` as the first argument to get
the baselines and the ratios too.
"""

from __future__ import annotations

import sys

from stream.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-"):
        argv = ["pipeline", *argv]
    sys.exit(main(["bench", *argv]))
