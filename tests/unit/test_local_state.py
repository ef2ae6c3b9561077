"""The local table store's checks (stream/local_state.py), on real RocksDB files."""


def test_persisted_offsets_are_read_as_faust_writes_them(tmp_path):
    from rocksdict import Options, Rdict

    from stream.local_state import OFFSET_KEY, ahead_of_changelog, persisted_offsets

    for partition, offset in [(0, 41), (3, 1200)]:
        db = Rdict(str(tmp_path / f"user-state-{partition}.db"), options=Options(raw_mode=True))
        db.put(b"some-user", b"record")
        db.put(OFFSET_KEY, str(offset).encode())  # faust.stores.rocksdb.Store.set_persisted_offset
        db.close()
    (tmp_path / "online-models-0.db").mkdir()
    assert persisted_offsets(tmp_path, "user-state") == {0: 41, 3: 1200}
    assert ahead_of_changelog(persisted_offsets(tmp_path, "user-state"), {0: 42, 3: 900}) == [3]


def test_a_damaged_database_is_an_error_not_a_silent_skip(tmp_path):
    import pytest
    from rocksdict import Options, Rdict

    from stream.local_state import persisted_offsets

    db = Rdict(str(tmp_path / "user-state-0.db"), options=Options(raw_mode=True))
    db.put(b"k", b"v")
    db.close()
    for f in (tmp_path / "user-state-0.db").iterdir():
        if f.name.startswith("MANIFEST"):
            f.write_bytes(b"\x00garbage")
    with pytest.raises(Exception):  # noqa: B017 - rocksdict raises its own exception types
        persisted_offsets(tmp_path, "user-state")
