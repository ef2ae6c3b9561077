"""Each patch of stream/patches.py is checked against the exact upstream code it replaces: when an
upgrade changes that code, these fail, and the patch must be looked at again (kept, changed or
dropped) before the digest is updated."""

import pytest

from stream import patches


def _original(fn):
    return getattr(fn, "original", fn)


def test_aiokafka_seek_to_committed_is_the_code_the_patch_was_written_for():
    from aiokafka import AIOKafkaConsumer

    assert patches.source_digest(_original(AIOKafkaConsumer.seek_to_committed)) == patches.SEEK_TO_COMMITTED_DIGEST


def test_faust_highwaters_is_the_code_the_patch_was_written_for():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert patches.source_digest(_original(AIOKafkaConsumerThread._highwaters)) == patches.HIGHWATERS_DIGEST


def test_install_is_idempotent_and_keeps_the_originals():
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    patches.install()
    seek, high = AIOKafkaConsumer.seek_to_committed, AIOKafkaConsumerThread._highwaters
    patches.install()
    assert AIOKafkaConsumer.seek_to_committed is seek and AIOKafkaConsumerThread._highwaters is high
    assert seek.original is not seek and high.original is not high


@pytest.mark.parametrize("name", ["install_uncommitted_seek_to_beginning", "install_committed_highwaters"])
def test_each_patch_names_the_versions_it_was_checked_on(name):
    doc = getattr(patches, name).__doc__
    assert "0.14.0" in doc or "0.15.3" in doc


def test_the_faust_internals_the_worker_reads_are_still_there():
    """Not patches, but internals the worker relies on (faust-streaming 0.15.3): the context
    variable that names the current event (tables pick a write's partition from it:
    ``stream.agents.records.as_current``), the table's store (``Table.data``, read and written once
    per user per batch) and the producer's send buffer (``FaustOutputs.flush`` waits until it is
    empty). An upgrade that moves one of them fails here instead of in a worker."""
    import contextvars
    import inspect

    import faust.streams
    import faust.tables.base
    import faust.transport.producer

    from stream.agents.records import PartitionEvent, as_current

    assert isinstance(faust.streams._current_event, contextvars.ContextVar)
    stand_in = PartitionEvent("topic", 3)
    with as_current(stand_in):
        assert faust.streams.current_event() is stand_in
    assert faust.streams.current_event() is None
    assert "event.message.partition" in inspect.getsource(faust.tables.base.Collection.partition_for_key)
    assert isinstance(faust.tables.base.Collection.data, property)
    assert isinstance(faust.transport.producer.ProducerBuffer.size, property)
