"""Where an ingested event is processed: on the worker that ingested it, or via the internal topic.

Every event is ingested by the worker that reads its input partition and processed by the worker
that owns its user's internal partition (the table's partition). When those are the same worker,
the internal topic is a detour: one more produce, fetch and batch wait, and Faust's per-record
work, for nothing (docs/BENCHMARKS.md measured it as most of the event-to-signal latency at
moderate load). Such an event is processed where it is ingested (*local*), provided that cannot
change any user's outcome:

* **Per-user order.** An event may be processed locally only once every earlier event of its user
  that went through the internal topic has been processed. After any change of assignment, every
  partition is *closed* (its events are forwarded, as without this module). The ingest then *arms*
  a gate per owned internal partition: that partition's end offset, read after the ingest has
  taken its new input partitions (so every pack an earlier owner forwarded from below our start
  is in the log). A gate *opens* once the application's consumer group has committed the
  partition up to that end offset and past every pack this worker ever forwarded to it (each
  acknowledged), whenever it was sent. Committed means processed: Faust commits an offset only
  after the agent handled the record. The partition then stays local until the next change of
  assignment.

  The end offset alone does not cover this worker's own packs: with exactly-once they sit in its
  open transaction, unacknowledged until the commit, and a ``read_committed`` end offset (the
  last stable offset) stops before them. A gate that opened on the end offset would let events
  read later be applied before those packs, whose events would then come second and be
  dead-lettered as ``late_event``: lost. So every pack is followed, from its send to its
  acknowledgement, across assignments.
* **Ownership.** A change of assignment closes everything as soon as it starts (the caller compares
  Faust's rebalance count, which Faust bumps before it revokes anything), and a revocation waits
  for a batch in progress to write its state and flush it (the worker's processing lock), so
  that the partition's next owner reads a changelog that holds it.

An earlier owner of an input partition may still forward the tail it read (both owners read an
uncommitted tail while a partition moves). Those packs carry the same events, in the same order,
as the new owner processes locally, so whichever copy comes second is a duplicate that the
per-user de-duplication rejects; order is kept either way.

The internal topic still receives every event: the ones processed locally as packs that the
process agent skips, so that it remains the complete pseudonymised history that
``intentstream train --from-topic`` reads.

Pure bookkeeping: no Kafka, no Faust; ``stream.agents.runtime`` feeds it offsets.

>>> r = LocalRouting()
>>> r.reset(1); r.arm(1, {0: 5, 1: 0})
True
>>> sorted(r.open({0: 4}))  # partition 1 is empty; 0 is not processed up to its end yet
[1]
>>> r.sent(0); r.acked(0, 7); sorted(r.open({0: 7}))  # our forward at offset 7 is not processed
[]
>>> sorted(r.open({0: 8})), sorted(r.local)
([0], [0, 1])
>>> r.reset(2); r.local
set()
"""

from __future__ import annotations


class LocalRouting:
    """The internal partitions whose events this worker processes where it ingests them."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.generation: int | None = None  # the assignment these sets belong to
        self.local: set[int] = set()
        self.gates: dict[int, int] = {}  # closed partition -> end offset read when armed
        # Every pack this worker forwarded, whatever the assignment then: a pack sent before a
        # gate was armed may still be unacknowledged (exactly-once: in the open transaction)
        # and above the end offset the gate was armed with.
        self.inflight: dict[int, int] = {}  # packs forwarded to a partition, not acknowledged yet
        self.forwarded: dict[int, int] = {}  # highest acknowledged offset of those packs
        self.armed = False

    def reset(self, generation: int) -> None:
        """The assignment changed (or started to): close every partition, drop the gates."""
        self.generation = generation
        self.local.clear()
        self.gates.clear()
        self.armed = False

    def needs_arming(self, generation: int) -> bool:
        return self.enabled and self.generation == generation and not self.armed

    def arm(self, generation: int, end_offsets: dict[int, int]) -> bool:
        """Gate each owned internal partition at its end offset, read after the ingest took its
        input partitions. False if the assignment moved on."""
        if not self.enabled or generation != self.generation:
            return False
        self.gates = dict(end_offsets)
        self.armed = True
        return True

    def sent(self, partition: int) -> None:
        """A pack was forwarded to ``partition`` (any partition, gated or not, local or not)."""
        self.inflight[partition] = self.inflight.get(partition, 0) + 1

    def acked(self, partition: int, offset: int) -> None:
        """A pack of :meth:`sent` was acknowledged (with exactly-once: committed) at ``offset``."""
        self.inflight[partition] = self.inflight.get(partition, 1) - 1
        self.forwarded[partition] = max(self.forwarded.get(partition, -1), offset)

    def open(self, committed: dict[int, int]) -> set[int]:
        """Open the gates that ``committed`` (the group's committed offset per partition; -1 or
        missing: none) shows passed; returns the partitions opened."""
        opened = set()
        for partition, end in list(self.gates.items()):
            need = max(end, self.forwarded.get(partition, -1) + 1)
            if self.inflight.get(partition, 0) == 0 and (need == 0 or committed.get(partition, -1) >= need):
                del self.gates[partition]
                self.local.add(partition)
                opened.add(partition)
        return opened
