"""Which records of a batch the consumer skipped (stream.agents.gaps), against a log in memory:
before the batch's first record and between its records, wherever Faust dropped them."""

from __future__ import annotations

import asyncio

from stream.agents.gaps import GapFiller, Record


class LogGaps(GapFiller):
    """A GapFiller that reads a log kept in memory (offset -> value; missing offsets are
    transaction markers or aborted records: no records)."""

    def __init__(self, log: dict[int, bytes], committed: int) -> None:
        async def committed_offsets(partitions: list[int]) -> dict[int, int]:
            return dict.fromkeys(partitions, committed)

        super().__init__("it-events-by-user", committed_offsets, lambda: None)
        self.log = log
        self.reads: list[tuple[int, int]] = []

    async def _read(self, partition: int, start: int, end: int) -> list[Record]:
        self.reads.append((start, end))
        return [Record(partition, o, b"pack", v, None) for o, v in sorted(self.log.items()) if start <= o < end]


def skipped(gaps: GapFiller, offsets: list[int]) -> list[int]:
    return [r.offset for r in asyncio.run(gaps.skipped(1, offsets))]


def test_records_skipped_between_the_records_of_one_batch_are_found():
    # Committed up to 28; Faust delivered 28 and then 68, 70 in the same batch: 30-66 were dropped.
    log = {o: b"pack %d" % o for o in range(28, 72, 2)}  # markers at the odd offsets
    gaps = LogGaps(log, committed=28)
    assert skipped(gaps, [28, 68, 70]) == list(range(30, 68, 2))
    assert gaps.reads == [(29, 70)], "one read for the batch, from the first gap to the last (the marker at 69)"


def test_a_batch_without_a_gap_reads_nothing():
    gaps = LogGaps({o: b"x" for o in range(10)}, committed=3)
    assert skipped(gaps, [3, 4, 5]) == []
    gaps.advance(1, 6)
    assert skipped(gaps, [4, 5, 6, 7]) == [], "a redelivery is older than expected: no gap"
    assert gaps.reads == []


def test_a_gap_before_the_first_record_is_found_as_before():
    gaps = LogGaps({o: b"x" for o in range(10)}, committed=3)
    assert skipped(gaps, [7, 8]) == [3, 4, 5, 6]
    gaps.advance(1, 9)
    assert skipped(gaps, [9]) == []
