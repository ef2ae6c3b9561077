"""The worker's garbage-collector settings once it is ready (stream.agents.upkeep.freeze_heap)."""

import gc
import weakref

from stream.agents.upkeep import GC_THRESHOLDS, freeze_heap


class Node:
    pass


def test_a_ready_worker_freezes_its_start_up_heap_collects_less_often_and_still_reclaims_cycles():
    before = gc.get_threshold()
    try:
        freeze_heap()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
        assert GC_THRESHOLDS[0] > before[0]  # young collections rarer than Python's default
        cycle = Node()
        cycle.me = cycle  # freed only by the collector, never by reference counting
        alive = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
