import tempfile
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import orjson
import pytest
from cost_records import forwarded, record, unpriced, write
from hypothesis import given
from hypothesis import strategies as st

from proxy import periods
from proxy.analysis import Filters, RecordFileError, RecordReader, Summary, Tally, summarise
from proxy.money import Exchange

NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # a Wednesday
RATES = Exchange("USD", {"CNY": Decimal("0.14")})


def cost(tally: Tally) -> Decimal:
    return round(tally.cost, 9)


def test_totals_and_breakdowns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record(total_cost=0.1, user_id="team-a", task_type="chat", cached_input_tokens=20),
            record(model="gpt-4o-mini", total_cost=0.2, user_id="team-b", input_tokens=10, output_tokens=5,
                   total_tokens=15),
            record(provider="anthropic", model="claude-sonnet-4-5", total_cost=0.3, user_id="team-a",
                   task_type="code"),
        ],
    )  # fmt: skip
    summary = summarise([path])
    totals = summary.totals
    assert (totals.requests, totals.input_tokens, totals.output_tokens, totals.total_tokens) == (
        3,
        210,
        105,
        315,
    )
    assert totals.cached_input_tokens == 20
    assert cost(totals) == Decimal("0.6")
    assert round(totals.cost_per_request or 0, 9) == Decimal("0.2")
    assert round(totals.cost_per_1k_tokens or 0, 9) == round(Decimal("0.6") * 1000 / 315, 9)
    assert {name: cost(tally) for name, tally in summary.by_provider.items()} == {
        "openai": Decimal("0.3"),
        "anthropic": Decimal("0.3"),
    }
    assert list(summary.by_model) == ["anthropic/claude-sonnet-4-5", "openai/gpt-4o-mini", "openai/gpt-4o"]
    assert {name: tally.requests for name, tally in summary.by_user.items()} == {"team-a": 2, "team-b": 1}
    assert list(summary.by_user) == ["team-a", "team-b"]  # by cost: 0.4, then 0.2
    assert {name: tally.requests for name, tally in summary.by_task_type.items()} == {
        "code": 1,
        "(none)": 1,
        "chat": 1,
    }
    assert (summary.first_timestamp, summary.last_timestamp) == ("2026-11-23T10:30:00.000000Z",) * 2
    assert summary.skipped_lines == 0


def test_many_small_costs_sum_exactly(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [record(total_cost=0.1)] * 10_000)
    assert sum([0.1] * 10_000) != 1000.0
    assert round(summarise([path]).totals.cost, 9) == Decimal("1000")


def test_currencies_convert_with_rates_and_others_stay_apart(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record(total_cost=1.0),
            record(provider="dashscope", model="qwen-plus", currency="CNY", total_cost=10.0),
            record(provider="dashscope", model="qwen-plus", currency="CNY", total_cost=5.0),
            record(provider="sakana", model="x", currency="JPY", total_cost=300.0),
        ],
    )
    summary = summarise([path], exchange=RATES)
    assert summary.currency == "USD"
    assert cost(summary.totals) == Decimal("3.1")  # 1 + 15 * 0.14
    assert summary.totals.unconverted == {"JPY": Decimal("300")}
    assert summary.totals.costed_requests == 3
    assert cost(summary.by_provider["dashscope"]) == Decimal("2.1")
    assert summary.by_provider["sakana"].cost == 0
    assert summary.by_provider["sakana"].unconverted == {"JPY": Decimal("300")}

    in_cny = summarise([path], exchange=RATES.to("CNY"))
    assert in_cny.currency == "CNY"
    assert round(in_cny.totals.cost, 9) == round(Decimal(1) / Decimal("0.14") + 15, 9)


def test_unpriced_calls_are_counted_and_named_never_costed(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record(total_cost=0.5),
            unpriced(provider="openrouter", model="mystery"),
            unpriced(provider="openrouter", model="mystery"),
            unpriced(provider="local", model="llama"),
            record(provider="local", model="other", total_cost=0.0, priced=False),
        ],
    )
    summary = summarise([path])
    assert summary.totals.requests == 5
    assert summary.totals.unpriced == 4
    assert summary.unpriced_models == {"openrouter/mystery": 2, "local/llama": 1, "local/other": 1}
    assert cost(summary.totals) == Decimal("0.5")
    assert summary.totals.cost_per_request == Decimal("0.5")
    assert summary.by_provider["openrouter"].unpriced == 2


def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record(total_cost=0.25),
            b"garbage\n",
            b"\n",
            b"[1, 2]\n",
            b'"just text"\n',
            orjson.dumps(record(input_tokens="many")) + b"\n",
            orjson.dumps(record() | {"timestamp": None}) + b"\n",
            record(timestamp="not-a-time"),  # would sort after every record, and no hour holds it
            record(timestamp="2026-11-23T25:00:00.000000Z"),
            record(total_cost=0.25),
            b'{"timestamp":"2026-11-23T10:30:00.000000Z","request_id":"torn',
        ],
    )
    summary = summarise([path])
    assert summary.totals.requests == 2
    assert cost(summary.totals) == Decimal("0.5")
    assert summary.skipped_lines == 8
    assert summary.last_timestamp == "2026-11-23T10:30:00.000000Z"
    reader = RecordReader([path])
    assert len(list(reader)) == 2
    assert reader.skipped == 8


def test_lines_that_are_not_utf8_or_nest_past_the_recursion_limit_are_skipped_and_counted(
    tmp_path: Path,
) -> None:
    # A write cut inside a character of a model name, joined by the next record, once stopped every report
    # but CSV and detailed with a traceback: msgspec reads UTF-8 only in the strings it builds, and raises
    # UnicodeDecodeError there (RecursionError past the nesting Python allows), not a DecodeError.
    whole = orjson.dumps(record(model="qwen-通义", total_cost=0.25))
    torn = whole[: whole.index("义".encode()) + 1]
    not_utf8 = whole.replace(b'"127.0.0.1"', b'"127.0.0.\xff"')  # in a field not counted: not JSON either
    nested = b'{"timestamp":"2026-11-23T10:30:00.000000Z","price":' + b"[" * 5000 + b"]" * 5000 + b"}"
    path = write(
        tmp_path / "c.jsonl", [whole + b"\n", torn + whole + b"\n", not_utf8 + b"\n", nested + b"\n", whole]
    )
    for filters in (Filters(), Filters(periods.between("2026-11-23", "2026-11-23"))):
        for workers in (1, 2):
            summary = summarise([path], filters, workers=workers, parallel_min_bytes=1)
            assert (summary.totals.requests, cost(summary.totals), summary.skipped_lines) == (
                2,
                Decimal("0.5"),
                3,
            )
            assert list(summary.by_model) == ["openai/qwen-通义"]
        reader = RecordReader([path], filters)
        assert (len(list(reader)), reader.skipped) == (2, 3)


def test_lines_stamped_outside_the_period_are_not_counted_as_skipped_by_either_reader(tmp_path: Path) -> None:
    # A CSV of yesterday once noted the torn lines of every day, where the summary noted yesterday's.
    torn = b'{"timestamp":"2026-11-%sT10:30:00.000000Z","request_id":"torn\n'
    path = write(
        tmp_path / "c.jsonl",
        [torn % b"23", record("2026-11-24T10:00:00.000000Z"), torn % b"24", torn % b"25", b"garbage\n"],
    )
    yesterday = Filters(periods.yesterday(NOW))
    reader = RecordReader([path], yesterday)
    assert (len(list(reader)), reader.skipped) == (1, 2)
    assert summarise([path], yesterday).skipped_lines == 2


def test_two_records_on_one_line_are_skipped_whatever_the_blank_lines_and_workers(tmp_path: Path) -> None:
    # A blank line once evened out the line count of a block, so the one-call decode took the two
    # records as two lines' worth; RecordReader skips such a line.
    one, two, three = (orjson.dumps(record(user_id=user)) for user in ("a", "b", "c"))
    path = tmp_path / "c.jsonl"
    path.write_bytes(one + two + b"\n\n" + three + b"\n \t\n" + two + b" " + one + b"\n" + three + b"\n")
    reader = RecordReader([path])
    assert ([r["user_id"] for r in reader], reader.skipped) == (["c", "c"], 2)
    for workers in (1, 2):
        summary = summarise([path], workers=workers, parallel_min_bytes=1)
        assert (summary.totals.requests, list(summary.by_user), summary.skipped_lines) == (2, ["c"], 2)


def test_records_of_older_and_newer_writers(tmp_path: Path) -> None:
    old = {
        "timestamp": "2026-11-23T10:30:00.000000Z",
        "user_id": "team-a",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
        "total_cost": 0.01,
    }
    old_unpriced = old | {"total_cost": None}
    newer = record(total_cost=0.02, v=2) | {"carbon_grams": 1.5}
    path = write(tmp_path / "c.jsonl", [old, old_unpriced, newer])
    summary = summarise([path])
    assert summary.totals.requests == 3
    assert summary.totals.unpriced == 1
    assert cost(summary.totals) == Decimal("0.03")
    assert summary.totals.errors == 0
    completed = list(RecordReader([path]))
    assert completed[0]["currency"] == "USD" and completed[0]["priced"] is True
    assert completed[0]["status_code"] == 200 and completed[0]["task_type"] is None
    assert completed[1]["priced"] is False
    assert completed[2]["v"] == 2 and completed[2]["carbon_grams"] == 1.5  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(provider="anthropic"), {"c"}),
        (Filters(model="mini"), {"b"}),
        (Filters(model="gpt-4o"), {"a", "b", "e"}),
        (Filters(user="team-b"), {"b", "d"}),
        (Filters(task_type="code"), {"c"}),
        (Filters(session="s-1"), {"a", "d"}),
        (Filters(errors_only=True), {"d", "e"}),
        (Filters(provider="openai", errors_only=True), {"d", "e"}),
        (Filters(provider="nobody"), set()),
    ],
)
def test_filters(tmp_path: Path, filters: Filters, expected: set[str]) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record(request_id="a", session_id="s-1"),
            record(request_id="b", model="gpt-4o-mini", user_id="team-b"),
            record(request_id="c", provider="anthropic", model="claude", task_type="code"),
            record(request_id="d", model=None, user_id="team-b", session_id="s-1", status_code=499,
                   error="client_disconnected"),
            record(request_id="e", status_code=429),
        ],
    )  # fmt: skip
    assert {item["request_id"] for item in RecordReader([path], filters)} == expected
    assert summarise([path], filters).totals.requests == len(expected)


def test_period_edges_at_midnight_week_and_month_start(tmp_path: Path) -> None:
    stamps = [
        "2026-10-31T23:59:59.999999Z",
        "2026-11-01T00:00:00.000000Z",  # month start
        "2026-11-22T23:59:59.999999Z",  # Sunday
        "2026-11-23T00:00:00.000000Z",  # Monday: week start
        "2026-11-24T23:59:59.999999Z",
        "2026-11-25T00:00:00.000000Z",  # today
        "2026-11-25T10:29:59.999999Z",
        "2026-11-25T10:30:00.000000Z",  # now: the end is exclusive
    ]
    path = write(tmp_path / "c.jsonl", [record(stamp, request_id=stamp) for stamp in stamps])

    def chosen(period: periods.Period) -> list[str]:
        ids = [item["request_id"] for item in RecordReader([path], Filters(period))]
        assert summarise([path], Filters(period)).totals.requests == len(ids)
        return ids

    assert chosen(periods.today(NOW)) == stamps[5:7]
    assert chosen(periods.yesterday(NOW)) == stamps[4:5]
    assert chosen(periods.this_week(NOW)) == stamps[3:7]
    assert chosen(periods.this_month(NOW)) == stamps[1:7]
    assert chosen(periods.between("2026-10-31", "2026-11-22")) == stamps[0:3]
    assert chosen(periods.last_hours(10.5, NOW)) == stamps[5:7]


def test_a_stamp_with_an_offset_counts_at_its_utc_moment(tmp_path: Path) -> None:
    # Another writer's stamps in New York time, the night its daylight saving ended: 01:30 came twice, at
    # 05:30 and 06:30 UTC; 20:30 the evening before is already November in UTC. Compared as text, they
    # fell in October and twice in the 01:00 hour.
    stamps = ["2026-10-31T20:30:00-04:00", "2026-11-01T01:30:00.000000-04:00", "2026-11-01T01:30:00-05:00"]
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-10-31T23:59:59.999999Z", request_id="october"),
            *(record(stamp, request_id=stamp) for stamp in stamps),
            b'{"timestamp":"2026-10-31T23:00:00-04:00","torn',  # inside November: read, and counted
            b"\n",
        ],
    )
    november = Filters(periods.between("2026-11-01", None))
    assert [item["request_id"] for item in RecordReader([path], november)] == stamps
    summary = summarise([path], november)
    assert (summary.totals.requests, summary.skipped_lines) == (3, 1)
    assert [(hour, tally.requests) for hour, tally in summary.by_hour.items()] == [
        ("2026-11-01T00", 1),
        ("2026-11-01T05", 1),
        ("2026-11-01T06", 1),
    ]
    assert (summary.first_timestamp, summary.last_timestamp) == (
        "2026-11-01T00:30:00.000000Z",
        "2026-11-01T06:30:00.000000Z",
    )
    assert summarise([path], Filters(periods.between(None, "2026-10-31"))).totals.requests == 1


def test_period_applies_to_records_that_do_not_start_with_the_timestamp(tmp_path: Path) -> None:
    inside = dict(reversed(record("2026-11-25T01:00:00.000000Z").items()))
    outside = dict(reversed(record("2026-11-20T01:00:00.000000Z").items()))
    path = write(tmp_path / "c.jsonl", [inside, outside])
    assert summarise([path], Filters(periods.today(NOW))).totals.requests == 1


def test_empty_period(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [record("2026-11-01T00:00:00.000000Z")])
    summary = summarise([path], Filters(periods.today(NOW)))
    assert summary.totals == Tally()
    assert summary.by_provider == {} and summary.first_timestamp is None
    # The period's hours are still there, empty: a series of a bounded period always covers it.
    hours = summary.timeline("hour")
    assert [key for key, _ in hours] == [f"2026-11-25T{hour:02d}" for hour in range(11)]
    assert all(tally == Tally() for _, tally in hours)
    assert summarise([path], Filters(periods.ALL_TIME, provider="nobody")).timeline("hour") == []


def test_timeline_shows_empty_hours_and_days_as_zero(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-25T07:10:00.000000Z", total_cost=0.5),
            record("2026-11-25T07:50:00.000000Z", total_cost=0.25),
            record("2026-11-25T09:59:59.999999Z", total_cost=1.0),
        ],
    )
    summary = summarise([path], Filters(periods.last_hours(4, NOW)))
    series = [(key, tally.requests, cost(tally)) for key, tally in summary.timeline("hour")]
    assert series == [
        ("2026-11-25T06", 0, 0),
        ("2026-11-25T07", 2, Decimal("0.75")),
        ("2026-11-25T08", 0, 0),
        ("2026-11-25T09", 1, Decimal("1")),
        ("2026-11-25T10", 0, 0),
    ]
    days = summarise([path], Filters(periods.between("2026-11-23", "2026-11-25"))).timeline("day")
    assert [(key, tally.requests) for key, tally in days] == [
        ("2026-11-23", 0),
        ("2026-11-24", 0),
        ("2026-11-25", 3),
    ]
    everything = summarise([path]).timeline("hour")
    assert [key for key, _ in everything] == ["2026-11-25T07", "2026-11-25T08", "2026-11-25T09"]


def test_records_at_the_calendars_ends(tmp_path: Path) -> None:
    # The year 9999's last microsecond has no moment after it to close the period with, nor an hour or
    # day after it for a series to step to. A stamp whose offset puts it past the calendar in UTC is in
    # no hour at all: not a record, like a stamp that is not a time.
    path = write(
        tmp_path / "c.jsonl",
        [
            record("9999-12-31T22:30:00.000000Z", total_cost=0.5),
            record("9999-12-31T23:59:59.999999Z", total_cost=0.25),
            record("9999-12-31T23:00:00-05:00"),
            record("0001-01-01T00:30:00+01:00"),
        ],
    )
    summary = summarise([path])
    assert (summary.totals.requests, cost(summary.totals), summary.skipped_lines) == (2, Decimal("0.75"), 2)
    assert summary.bounds() == (datetime(9999, 12, 31, 22, 30, tzinfo=UTC), periods.LAST_MOMENT)
    hours = [(key, tally.requests) for key, tally in summary.timeline("hour")]
    assert hours == [("9999-12-31T22", 1), ("9999-12-31T23", 1)]
    assert [(key, tally.requests) for key, tally in summary.timeline("day")] == [("9999-12-31", 2)]
    late = summarise([path], Filters(periods.between("9999-12-31T23:00:00Z", None)))
    assert [(key, tally.requests) for key, tally in late.timeline("hour")] == [("9999-12-31T23", 1)]


def test_gzip_and_globs_are_read_together(tmp_path: Path) -> None:
    write(tmp_path / "cost-tracking.jsonl.1.gz", [record(total_cost=1.0)] * 3)
    write(tmp_path / "cost-tracking.jsonl", [record(total_cost=0.5)])
    summary = summarise([str(tmp_path / "cost-tracking.jsonl*")])
    assert (summary.totals.requests, cost(summary.totals)) == (4, Decimal("3.5"))
    with pytest.raises(RecordFileError):
        summarise([tmp_path / "missing.jsonl"])


def test_parallel_reading_gives_the_same_summary(tmp_path: Path) -> None:
    items = [
        record(f"2026-11-25T{hour:02d}:00:00.000000Z", total_cost=0.1 * hour, user_id=f"u{hour % 3}",
               status_code=500 if hour % 5 == 0 else 200)
        for hour in range(10)
        for _ in range(30)
    ] + [b"torn\n"]  # fmt: skip
    paths = [write(tmp_path / "a.jsonl", items), write(tmp_path / "b.jsonl.gz", items[:40])]
    serial = summarise(paths, exchange=RATES)
    parallel = summarise(paths, exchange=RATES, workers=2, parallel_min_bytes=1)
    assert parallel == serial
    assert isinstance(serial, Summary) and serial.totals.requests == 340 and serial.skipped_lines == 1
    assert serial.totals.errors == 60 + 30  # hours 0 and 5 in a, hour 0 in b


def test_parallel_reading_while_other_threads_run(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.jsonl", [record(total_cost=0.5, user_id=f"u{index % 4}") for index in range(200)]
    )
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        parallel = summarise([path], workers=2, parallel_min_bytes=1)  # a fork server, not fork
    finally:
        stop.set()
        other.join()
    assert parallel == summarise([path])
    assert (parallel.totals.requests, cost(parallel.totals)) == (200, Decimal(100))


# One call: hour offset from 2026-10-31T22:00Z (across a midnight and a month's end), provider, currency,
# what its cost is, input and output tokens.
CALL = st.tuples(
    st.integers(0, 5),
    st.sampled_from(["openai", "anthropic", "dashscope"]),
    st.sampled_from(["USD", "CNY", "JPY"]),
    st.sampled_from(["cost", "unpriced", "forwarded", "no_usage"]),
    st.integers(0, 200_000),
    st.integers(0, 20_000),
)


@given(st.lists(CALL, max_size=40))
def test_totals_are_the_written_costs_and_every_breakdown_and_series_adds_up_to_them(
    calls: list[tuple[int, str, str, str, int, int]],
) -> None:
    rates = {"USD": Decimal(1), "CNY": Decimal("0.14")}  # JPY has none
    lines, expected, unconverted = [], Decimal(0), Decimal(0)
    for hours, provider, currency, state, inp, out in calls:
        stamp = periods.stamp(
            datetime(2026, 10, 31, 22, tzinfo=UTC) + timedelta(hours=hours, minutes=inp % 60)
        )
        fields = dict(provider=provider, currency=currency, input_tokens=inp, output_tokens=out,
                      total_tokens=inp + out)  # fmt: skip
        if state == "cost":
            total = float((Fraction(inp) * Fraction("2.5") + Fraction(out) * 10) / 1_000_000)
            lines.append(record(stamp, total_cost=total, **fields))
            if currency in rates:
                expected += Decimal(repr(total)) * rates[currency]
            else:
                unconverted += Decimal(repr(total))
        elif state == "no_usage":
            lines.append(record(stamp, input_cost=None, output_cost=None, total_cost=None, **fields))
        else:
            lines.append((unpriced if state == "unpriced" else forwarded)(stamp, **fields))
    with tempfile.TemporaryDirectory() as folder:
        summary = summarise([write(Path(folder) / "c.jsonl", lines)], exchange=RATES)
    totals = summary.totals
    assert totals.cost == expected
    without_rate = any(call[2] == "JPY" and call[3] == "cost" for call in calls)  # listed even at 0
    assert totals.unconverted == ({"JPY": unconverted} if without_rate else {})
    assert totals.requests == len(calls)
    assert totals.unpriced == sum(call[3] in ("unpriced", "forwarded") for call in calls)
    assert totals.forwarded == sum(call[3] == "forwarded" for call in calls)
    assert totals.no_usage == sum(call[3] == "no_usage" for call in calls)
    shown = (totals.cost, totals.requests, totals.total_tokens, totals.unpriced, totals.no_usage)
    tables = [summary.by_provider, summary.by_model, summary.by_user, summary.by_task_type]
    series = [dict(summary.timeline("hour")), dict(summary.timeline("day"))] if calls else []
    for table in [*tables, *series]:
        rows = list(table.values())
        assert (
            sum((row.cost for row in rows), Decimal(0)),
            sum(row.requests for row in rows),
            sum(row.total_tokens for row in rows),
            sum(row.unpriced for row in rows),
            sum(row.no_usage for row in rows),
        ) == shown
