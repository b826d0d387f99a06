from pathlib import Path
from typing import Any

import orjson
import pytest
from cost_records import record, write

from proxy import periods
from proxy.analysis import Filters, RecordReader
from proxy.counts import count
from proxy.filters import NONE
from proxy.sources import Piece

WEEK = Filters(periods.between("2026-11-23", "2026-11-29"))


@pytest.mark.parametrize(
    "wrong",
    [
        {"timestamp": None},
        {"timestamp": 1764000000},
        {"provider": 5},
        {"model": ["gpt-4o"]},
        {"user_id": None},
        {"task_type": 1},
        {"currency": None},
        {"total_cost": "0.1"},
        {"total_cost": True},
        {"total_cost": 1e300},  # too big to add up in units of 2**-100
        {"priced": "yes"},
        {"input_tokens": "many"},
        {"output_tokens": 1.5},
        {"total_tokens": True},
        {"cached_input_tokens": None},
        {"status_code": "200"},
        {"error": {"kind": "timeout"}},
        {"session_id": 7},
    ],
)
def test_a_record_with_a_counted_field_of_another_type_is_skipped_whole(
    tmp_path: Path, wrong: dict[str, Any]
) -> None:
    path = write(tmp_path / "c.jsonl", [record(), record() | wrong])
    counts = count(Piece(path), Filters())
    assert counts.skipped == 1
    assert [values[0] for values in counts.groups.values()] == [1]
    reader = RecordReader([path])
    assert len(list(reader)) == 1 and reader.skipped == 1


def test_missing_fields_take_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [{"timestamp": "2026-11-23T10:30:00.000000Z"}])
    counts = count(Piece(path), Filters())
    assert counts.groups == {(NONE, None, "anonymous", None, "USD", "unpriced"): [1, 0, 0, 0, 0, 0, 0]}
    assert counts.hours == {("2026-11-23T10", "USD", "unpriced"): [1, 0, 0, 0, 0, 0, 0]}
    assert counts.skipped == 0


def test_a_record_of_a_newer_version_is_counted_and_its_new_fields_ignored(tmp_path: Path) -> None:
    newer = record(total_cost=0.5, v=2) | {
        "carbon_grams": 1.5,
        "route": {"tried": ["openai", "azure"], "retries": 1},
        "tags": [],
    }
    path = write(tmp_path / "c.jsonl", [newer, dict(reversed(newer.items()))])
    counts = count(Piece(path), Filters())
    ((key, values),) = counts.groups.items()
    assert key == ("openai", "gpt-4o", "team-a", None, "USD", "cost")
    assert values[:6] == [2, 200, 100, 300, 0, 0] and values[6] == 2**100
    assert counts.skipped == 0


def test_lines_that_are_not_one_record_each_are_skipped_and_counted(tmp_path: Path) -> None:
    whole = orjson.dumps(record())
    cut = whole.index(b',"request_id"') + 1
    path = write(
        tmp_path / "c.jsonl",
        [
            record(),
            whole + whole + b"\n",  # two records on one line
            whole + b" " + whole + b"\n",
            whole[:cut] + b"\n" + whole[cut:] + b"\n",  # one record over two lines
            b"\n",
            b"   \r\n",
            record(),
        ],
    )
    counts = count(Piece(path), Filters())
    assert [values[0] for values in counts.groups.values()] == [2]
    assert counts.skipped == 4


def test_many_blocks_with_a_bad_line_count_as_line_by_line(tmp_path: Path) -> None:
    items: list[dict[str, Any] | bytes] = [
        record(f"2026-11-23T{index % 24:02d}:00:00.000000Z", user_id=f"u{index % 5}") for index in range(2000)
    ]
    items[1500] = b'{"timestamp":"2026-11-23T10:30:00.000000Z","request_id":"torn\n'
    path = write(tmp_path / "c.jsonl", items)
    assert path.stat().st_size > 1 << 20
    counts = count(Piece(path), Filters())
    assert sum(values[0] for values in counts.groups.values()) == 1999
    assert sum(values[0] for values in counts.hours.values()) == 1999
    assert counts.skipped == 1
    assert (counts.first, counts.last) == ("2026-11-23T00:00:00.000000Z", "2026-11-23T23:00:00.000000Z")


def test_lines_stamped_outside_the_period_are_passed_over_unread(tmp_path: Path) -> None:
    torn = b'{"timestamp":"2026-11-%02dT10:30:00.000000Z","request_id":"torn\n'
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-20T10:30:00.000000Z"),
            torn % 20,  # outside: passed over, not counted
            record("2026-11-25T10:30:00.000000Z"),
            torn % 25,  # inside: skipped and counted
            record("2026-11-25T11:30:00.000000Z", total_tokens="many"),
            torn % 30,
        ],
    )
    counts = count(Piece(path), WEEK)
    assert [values[0] for values in counts.groups.values()] == [1]
    assert counts.skipped == 2


@pytest.mark.parametrize(
    ("middle", "counted", "skipped"),
    [
        (record("2026-11-20T10:30:00.000000Z"), 2, 0),
        (b'{"timestamp":"2026-11-20T10:30:00.000000Z","request_id":"torn\n', 2, 0),
        (b'{"timestamp":"2026-11-24T10:30:00.000000Z","request_id":"torn\n', 2, 1),
        (record("2026-11-24T10:30:00.000000Z"), 3, 0),
    ],
)
def test_a_block_inside_the_period_counts_as_line_by_line(
    tmp_path: Path, middle: dict[str, Any] | bytes, counted: int, skipped: int
) -> None:
    inside = record("2026-11-25T10:30:00.000000Z")
    path = write(tmp_path / "c.jsonl", [inside, middle, inside])
    counts = count(Piece(path), WEEK)
    assert sum(values[0] for values in counts.groups.values()) == counted
    assert counts.skipped == skipped
