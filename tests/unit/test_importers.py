"""Importers: each format on small synthetic files (good rows, malformed rows, counts), then on
the real excerpts in ../shared/data when that folder exists (counts must equal SOURCE.md)."""

from __future__ import annotations

import gzip
import json
from datetime import date
from pathlib import Path

import pytest

from models.datasets.importers import (
    FORMAT_PROBE_ROWS,
    FORMATS,
    ImportRowError,
    ImportStats,
    WrongFormat,
    day_start_ms,
    load_events,
    read_dataset,
)
from models.events import parse_event

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_all(path: Path, fmt: str, **options) -> tuple[list[dict], ImportStats]:
    stats = ImportStats()
    return list(read_dataset(path, fmt, stats=stats, **options)), stats


# --- taobao ----------------------------------------------------------------------------------

TAOBAO = """\
1,100,7,pv,1511544070
1,101,7,cart,1511544080
1,101,7,fav,1511544081
1,101,7,buy,1511544090
2,200,8,pv,1511544000
2,200,8,like,1511544001
2,200,8,pv,notatime
2,200,pv,1511544002

3,300,9,pv,1511543000
"""


def test_taobao_maps_behaviours_and_counts_skips(tmp_path):
    events, stats = read_all(write(tmp_path / "ub.csv", TAOBAO), "taobao")
    assert [(e["user_id"], e["type"], e["ts"]) for e in events] == [
        ("1", "click", 1511544070000),
        ("1", "add_to_cart", 1511544080000),
        ("1", "purchase", 1511544090000),
        ("2", "click", 1511544000000),
        ("3", "click", 1511543000000),
    ]
    assert events[0] == {
        "event_id": "taobao:ub.csv:1",
        "user_id": "1",
        "type": "click",
        "ts": 1511544070000,
        "item_id": "100",
        "category_id": "7",
    }
    assert "session_id" not in events[0]  # the data has no sessions
    assert stats.rows_read == 9  # the blank line is not a row
    assert stats.events == 5
    assert dict(stats.skipped) == {
        "dropped_fav": 1,
        "unknown_behavior": 1,
        "bad_number": 1,
        "wrong_field_count": 1,
    }
    assert stats.by_type == {"click": 3, "add_to_cart": 1, "purchase": 1}
    # errors carry line numbers; the deliberate fav drop is not an error
    assert [(line, reason) for line, reason, _ in stats.errors] == [
        (6, "unknown_behavior"),
        (7, "bad_number"),
        (8, "wrong_field_count"),
    ]
    assert stats.malformed == 3


def test_every_produced_dict_passes_parse_event(tmp_path):
    events, _ = read_all(write(tmp_path / "ub.csv", TAOBAO), "taobao")
    parsed = [parse_event(e) for e in events]
    assert [p.type for p in parsed] == [e["type"] for e in events]


def test_strict_raises_naming_file_and_line(tmp_path):
    path = write(tmp_path / "ub.csv", TAOBAO)
    with pytest.raises(ImportRowError, match=r"ub\.csv:6: unknown_behavior") as info:
        read_all(path, "taobao", strict=True)
    assert info.value.line_no == 6 and info.value.reason == "unknown_behavior"


def test_gzip_is_transparent_and_ids_ignore_the_suffix(tmp_path):
    plain, _ = read_all(write(tmp_path / "ub.csv", TAOBAO), "taobao")
    (tmp_path / "gz").mkdir()
    zipped, _ = read_all(write(tmp_path / "gz" / "ub.csv.gz", TAOBAO), "taobao")
    assert zipped == plain


def test_event_ids_are_deterministic_and_source_can_be_overridden(tmp_path):
    path = write(tmp_path / "ub.csv", TAOBAO)
    first, _ = read_all(path, "taobao")
    again, _ = read_all(path, "taobao")
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    renamed, _ = read_all(path, "taobao", source="batch7")
    assert renamed[0]["event_id"] == "taobao:batch7:1"


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "ub.csv"
    path.write_bytes(b"1,100,7,pv,1511544070\r\n1,100,7,buy,1511544071\r\n")
    events, stats = read_all(path, "taobao")
    assert [e["type"] for e in events] == ["click", "purchase"] and stats.malformed == 0


def test_wrong_format_is_detected_not_skipped_row_by_row(tmp_path):
    cdnow = " customer_id date number_of_cds dollar_value\n" + "".join(
        f" {i:05d} 19970101 1 11.77\n" for i in range(FORMAT_PROBE_ROWS + 10)
    )
    path = write(tmp_path / "cd.txt", cdnow)
    with pytest.raises(WrongFormat, match=r"does not look like 'taobao'.*wrong_field_count"):
        read_all(path, "taobao")
    # a header format checks its header first
    with pytest.raises(WrongFormat, match=r"expected header 'SessionId ItemId Time'"):
        read_all(path, "yoochoose")


def test_small_file_with_no_good_row_is_the_wrong_format(tmp_path):
    path = write(tmp_path / "x.csv", "a;b;c\nd;e;f\n")
    with pytest.raises(WrongFormat):
        read_all(path, "taobao")


def test_a_file_of_only_fav_rows_is_not_the_wrong_format(tmp_path):
    events, stats = read_all(write(tmp_path / "ub.csv", "1,2,3,fav,1511544070\n"), "taobao")
    assert events == [] and stats.skipped == {"dropped_fav": 1}


def test_unknown_format_and_options_fail_at_call_time(tmp_path):
    path = write(tmp_path / "ub.csv", TAOBAO)
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_dataset(path, "csv")
    with pytest.raises(TypeError, match="does not take option"):
        read_dataset(path, "taobao", categories=path)
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing.csv", "taobao")


def test_formats_tuple_lists_every_importer():
    assert set(FORMATS) == {
        "taobao",
        "cdnow",
        "yoochoose",
        "diginetica-purchases",
        "diginetica-views",
        "jsonl",
    }


# --- cdnow -----------------------------------------------------------------------------------

CDNOW = """\
 customer_id  date number_of_cds  dollar_value
 00001 19970101  1   11.77
 00002 19970112  1   12.00
 00002 19970112  5   77.00
 00003 19970102  0   0.00
 00003 19970330  2   0.00
 00004 1997-01-02  2   1.00
 00004 19970102  x   1.00
 00004 19970102  2
"""


def test_cdnow_one_purchase_per_row_with_same_day_order_kept(tmp_path):
    events, stats = read_all(write(tmp_path / "cd.txt", CDNOW), "cdnow")
    jan12 = day_start_ms(date(1997, 1, 12))
    assert [(e["user_id"], e["ts"], e["quantity"], e["price"]) for e in events] == [
        ("00001", day_start_ms(date(1997, 1, 1)), 1, 11.77),
        ("00002", jan12, 1, 12.0),
        ("00002", jan12 + 1000, 5, 77.0),  # second row that day: +1 s, after the first
        ("00003", day_start_ms(date(1997, 3, 30)), 2, 0.0),  # a $0 purchase is kept
    ]
    assert all(e["type"] == "purchase" and "item_id" not in e for e in events)
    assert events[0]["event_id"] == "cdnow:cd.txt:2"  # line 1 is the header
    assert stats.rows_read == 8 and stats.events == 4
    assert dict(stats.skipped) == {"zero_quantity": 1, "bad_date": 1, "bad_number": 1, "wrong_field_count": 1}


def test_cdnow_loads_despite_pre_2000_dates(tmp_path):
    events, stats = load_events(write(tmp_path / "cd.txt", CDNOW), "cdnow")
    assert len(events) == 4 and stats.events == 4
    assert events[0].ts == 852076800000  # 1997-01-01, below parse_event's live-traffic floor


def test_load_events_still_rejects_epoch_seconds(tmp_path):
    rows = [
        {"event_id": "a", "user_id": "u", "type": "click", "item_id": "i", "ts": 1511544070},
        {"event_id": "b", "user_id": "u", "type": "click", "item_id": "i", "ts": 1511544070000},
    ]
    path = write(tmp_path / "e.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    events, stats = load_events(path, "jsonl")
    assert [e.event_id for e in events] == ["b"]
    assert stats.skipped == {"invalid_timestamp_too_old": 1} and stats.errors[0][0] == 1
    assert stats.events == 1 and stats.by_type == {"click": 1}


# --- yoochoose -------------------------------------------------------------------------------

YOOCHOOSE = """\
SessionId\tItemId\tTime
3\t214716935\t1396437466.94
3\t214832672\t1396438212.318
6\t214701242\tnan
6\t214826623
"""


def test_yoochoose_sessions_stand_in_for_users(tmp_path):
    events, stats = read_all(write(tmp_path / "y.txt", YOOCHOOSE), "yoochoose")
    assert events == [
        {
            "event_id": "yoochoose:y.txt:2",
            "user_id": "s3",
            "type": "click",
            "ts": 1396437466940,  # rounded, not truncated to ...939
            "session_id": "3",
            "item_id": "214716935",
        },
        {
            "event_id": "yoochoose:y.txt:3",
            "user_id": "s3",
            "type": "click",
            "ts": 1396438212318,
            "session_id": "3",
            "item_id": "214832672",
        },
    ]
    assert dict(stats.skipped) == {"bad_number": 1, "wrong_field_count": 1}


# --- diginetica ------------------------------------------------------------------------------

PURCHASES = """\
sessionId;userId;timeframe;eventdate;ordernumber;itemId
150;18278;17100868;2016-05-06;16421;25911
151;NA;6454547;2016-05-06;16290;175874
152;NA;-5;2016-05-06;16290;175874
153;NA;5;2016-13-06;16290;175874
"""
VIEWS = """\
session_id;user_id;item_id;timeframe;eventdate
1;NA;81766;526309;2016-05-09
1;NA;31331;1031018;2016-05-09
2;77;9654;75848;2016-05-09
"""
CATEGORIES = "itemId;categoryId\n25911;1096\n81766;12\n"


def test_diginetica_purchases(tmp_path):
    cats = write(tmp_path / "cats.csv.gz", CATEGORIES)
    events, stats = read_all(write(tmp_path / "p.csv", PURCHASES), "diginetica-purchases", categories=cats)
    may6 = day_start_ms(date(2016, 5, 6))
    assert [(e["user_id"], e["session_id"], e["ts"], e["item_id"], e.get("category_id")) for e in events] == [
        ("18278", "150", may6 + 17100868, "25911", "1096"),
        ("s151", "151", may6 + 6454547, "175874", None),  # anonymous: the session stands in
    ]
    assert all(e["type"] == "purchase" for e in events)
    assert dict(stats.skipped) == {"out_of_range": 1, "bad_date": 1}


def test_diginetica_views_with_and_without_categories(tmp_path):
    path = write(tmp_path / "v.csv", VIEWS)
    plain, _ = read_all(path, "diginetica-views")
    assert [(e["user_id"], e["type"], e["ts"]) for e in plain] == [
        ("s1", "click", day_start_ms(date(2016, 5, 9)) + 526309),
        ("s1", "click", day_start_ms(date(2016, 5, 9)) + 1031018),
        ("77", "click", day_start_ms(date(2016, 5, 9)) + 75848),
    ]
    assert all("category_id" not in e for e in plain)
    with_cats, _ = read_all(path, "diginetica-views", categories={"81766": "12"})
    assert [e.get("category_id") for e in with_cats] == ["12", None, None]


def test_diginetica_views_is_not_purchases(tmp_path):
    with pytest.raises(WrongFormat, match="expected header"):
        read_all(write(tmp_path / "v.csv", VIEWS), "diginetica-purchases")


# --- jsonl -----------------------------------------------------------------------------------


def test_jsonl_passes_objects_through_and_fills_missing_ids(tmp_path):
    lines = [
        json.dumps(
            {"event_id": "x1", "user_id": "u", "type": "search", "ts": 1700000000000, "query": "shoes"}
        ),
        json.dumps({"user_id": "u", "type": "view", "ts": 1700000001000, "item_id": 5}),
        "{not json",
        "[1, 2]",
        json.dumps({"user_id": "u", "type": "refund", "ts": 1700000002000}),
    ]
    path = write(tmp_path / "e.jsonl", "\n".join(lines) + "\n")
    raw, stats = read_all(path, "jsonl")
    assert [r["event_id"] for r in raw] == ["x1", "jsonl:e.jsonl:2", "jsonl:e.jsonl:5"]
    assert dict(stats.skipped) == {"bad_json": 1, "not_an_object": 1}

    events, stats = load_events(path, "jsonl")
    assert [(e.event_id, e.type) for e in events] == [("x1", "search"), ("jsonl:e.jsonl:2", "click")]
    assert stats.skipped["invalid_unknown_type"] == 1
    assert (5, "invalid_unknown_type") in [(line, reason) for line, reason, _ in stats.errors]
    with pytest.raises(ImportRowError, match=r"e\.jsonl:3: bad_json"):
        load_events(path, "jsonl", strict=True)


def test_load_events_sorts_by_time_keeping_file_order_for_ties(tmp_path):
    text = "1,1,1,pv,1511544090\n2,2,2,pv,1511544070\n3,3,3,pv,1511544090\n4,4,4,pv,1511544070\n"
    events, _ = load_events(write(tmp_path / "ub.csv", text), "taobao")
    assert [e.user for e in events] == ["2", "4", "1", "3"]


# --- the real excerpts (skipped without ../shared/data) ---------------------------------------

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")


def real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@needs_data
def test_real_taobao_9day_file_matches_source_md():
    events, stats = load_events(
        real("taobao-userbehavior/userbehavior_users_tailsample_9days.csv.gz"), "taobao"
    )
    assert stats.rows_read == 10_000
    assert stats.skipped == {"dropped_fav": 212}
    assert stats.by_type == {"click": 9_046, "add_to_cart": 536, "purchase": 206}
    assert len(events) == 9_788
    assert len({e.user for e in events}) == 114
    assert len({e.user for e in events if e.type == "purchase"}) == 74
    assert all(events[i].ts <= events[i + 1].ts for i in range(len(events) - 1))


@needs_data
def test_real_taobao_470_users_and_timeslice_match_source_md():
    _, stats = load_events(real("taobao-userbehavior/userbehavior_users_headcont_470users.csv.gz"), "taobao")
    assert stats.rows_read == 51_579 and stats.skipped == {"dropped_fav": 1_198}
    assert stats.by_type == {"click": 46_344, "add_to_cart": 2_929, "purchase": 1_108}
    _, stats = load_events(
        real("taobao-userbehavior/userbehavior_timeslice_20171126_0100-0240utc.csv.gz"), "taobao"
    )
    assert stats.rows_read == 82_110 and stats.skipped == {"dropped_fav": 2_532}
    assert stats.by_type == {"click": 73_262, "add_to_cart": 4_498, "purchase": 1_818}


@needs_data
def test_real_cdnow_matches_source_md():
    events, stats = load_events(real("cdnow/CDNOW_master_through_1998-03-31.txt.gz"), "cdnow")
    assert stats.rows_read == 63_753 and stats.events == 63_753 and not stats.skipped
    assert len({e.user for e in events}) == 23_570
    assert sum(e.quantity for e in events) == 152_994
    assert round(sum(e.price for e in events), 2) == 2_286_985.15
    assert sum(e.price == 0 for e in events) == 79
    assert events[0].ts == day_start_ms(date(1997, 1, 1))
    assert day_start_ms(date(1998, 3, 31)) <= events[-1].ts < day_start_ms(date(1998, 4, 1))


@needs_data
def test_real_cdnow_fed_to_taobao_is_rejected():
    with pytest.raises(WrongFormat):
        list(read_dataset(real("cdnow/CDNOW_master_through_1998-03-31.txt.gz"), "taobao"))


@needs_data
def test_real_yoochoose_matches_source_md():
    events, stats = load_events(real("yoochoose-rsc15/yoochoose-clicks-100k_train_full.txt.gz"), "yoochoose")
    assert stats.rows_read == 70_278 and stats.events == 70_278
    assert len({e.session_id for e in events}) == 17_794
    assert len({e.item_id for e in events}) == 2_933


@needs_data
def test_real_diginetica_matches_source_md():
    cats = real("diginetica-cikm2016/product-categories.csv.gz")
    buys, stats = load_events(
        real("diginetica-cikm2016/train-purchases_before_2016-05-18.csv.gz"),
        "diginetica-purchases",
        categories=cats,
    )
    assert stats.rows_read == 15_238 and stats.events == 15_238
    assert len({e.session_id for e in buys}) == 10_661
    assert sum(not e.user.startswith("s") for e in buys) == 6_221
    assert len({e.user for e in buys if not e.user.startswith("s")}) == 4_169
    views, stats = load_events(
        real("diginetica-cikm2016/sample_train-item-views.csv.gz"), "diginetica-views", categories=cats
    )
    assert stats.rows_read == 12_391 and stats.events == 12_391
    assert len({e.session_id for e in views}) == 2_986
    assert sum(not e.user.startswith("s") for e in views) == 4_710
