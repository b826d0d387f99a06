import csv
import io
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path

import orjson
from cost_records import record, unpriced, write
from hypothesis import given
from hypothesis import strategies as st

from proxy import periods
from proxy.analysis import RECORD_FIELDS, Filters, RecordReader, summarise
from proxy.export import amount, summary_json, write_csv, write_json
from proxy.money import Exchange

NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
GROUP_KEYS = {
    "cost", "requests", "input_tokens", "output_tokens", "total_tokens", "cached_input_tokens", "errors",
    "unpriced_requests", "no_usage_requests", "forwarded_requests", "unconverted",
}  # fmt: skip


def test_summary_json_schema(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-25T08:15:00.000000Z", total_cost=0.1, task_type="chat"),
            record("2026-11-25T09:15:00.000000Z", total_cost=0.2, status_code=500, user_id="team-b"),
            unpriced("2026-11-25T09:20:00.000000Z", provider="openrouter", model="m"),
            record("2026-11-25T09:30:00.000000Z", provider="x", currency="JPY", total_cost=30.0),
        ],
    )
    document = summary_json(summarise([path], Filters(periods.last_hours(3, NOW)), Exchange()))
    assert set(document) == {"schema", "currency", "period", "totals", "unpriced_models", "skipped_lines"} | {
        "by_provider", "by_model", "by_user", "by_task_type", "by_hour",
    }  # fmt: skip
    assert document["schema"] == 1 and document["currency"] == "USD"
    assert document["period"] == {
        "start": "2026-11-25T07:30:00.000000Z",
        "end": "2026-11-25T10:30:00.000000Z",
        "first_record": "2026-11-25T08:15:00.000000Z",
        "last_record": "2026-11-25T09:30:00.000000Z",
    }
    totals = document["totals"]
    assert set(totals) == GROUP_KEYS | {"average_cost_per_request", "average_cost_per_1k_tokens"}
    assert totals["cost"] == 0.3  # exact sum, rounded to 10 places: not 0.30000000000000004
    assert (totals["requests"], totals["errors"], totals["unpriced_requests"]) == (4, 1, 1)
    assert totals["unconverted"] == {"JPY": 30.0}
    assert totals["average_cost_per_request"] == 0.15
    assert totals["average_cost_per_1k_tokens"] == 1.0  # $0.3 over 300 priced tokens
    assert document["unpriced_models"] == {"openrouter/m": 1}
    assert list(document["by_model"]) == ["openai/gpt-4o", "openrouter/m", "x/gpt-4o"]
    assert document["by_model"]["openai/gpt-4o"] == {
        "cost": 0.3, "requests": 2, "input_tokens": 200, "output_tokens": 100, "total_tokens": 300,
        "cached_input_tokens": 0, "errors": 1, "unpriced_requests": 0, "no_usage_requests": 0,
        "forwarded_requests": 0, "unconverted": {},
    }  # fmt: skip
    assert set(document["by_task_type"]) == {"chat", "(none)"}
    assert set(document["by_user"]) == {"team-a", "team-b"}
    by_hour = document["by_hour"]
    assert list(by_hour) == ["2026-11-25T07", "2026-11-25T08", "2026-11-25T09", "2026-11-25T10"]
    assert [by_hour[hour]["requests"] for hour in by_hour] == [0, 1, 3, 0]
    assert all(set(group) == GROUP_KEYS for group in by_hour.values())


def test_json_rounds_costs_too_big_for_the_default_decimal_precision(tmp_path: Path) -> None:
    # 1e20 to 10 places is 31 digits, past the 28 of the default decimal context.
    path = write(tmp_path / "c.jsonl", [record(total_cost=1e20), record(total_cost=3e20)])
    totals = summary_json(summarise([path]))["totals"]
    assert (totals["cost"], totals["average_cost_per_request"]) == (4e20, 2e20)


def test_json_rounds_a_cost_up_to_a_power_of_ten(tmp_path: Path) -> None:
    # 0.3 + 9.7 as floats is 9.9999999999999992...: to 10 places it is 10.0000000000, a digit more than
    # the value had, which a context of just the value's digits could not hold (InvalidOperation).
    path = write(tmp_path / "c.jsonl", [record(total_cost=0.3), record(total_cost=9.7)])
    document = summary_json(summarise([path]))
    assert document["totals"]["cost"] == document["by_model"]["openai/gpt-4o"]["cost"] == 10.0


@given(st.decimals(-(10**30), 10**30, allow_nan=False), st.integers(0, 12))
def test_amount_is_the_value_rounded_half_even_to_its_places(value: Decimal, places: int) -> None:
    with localcontext() as context:
        context.prec = 100
        assert amount(value, places) == float(value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN))


def test_long_periods_are_by_day(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [record("2026-11-20T08:00:00.000000Z"), record()])
    document = summary_json(summarise([path], Filters(periods.this_month(NOW))))
    assert "by_hour" not in document
    assert len(document["by_day"]) == 25
    assert document["by_day"]["2026-11-20"]["requests"] == 1
    assert document["by_day"]["2026-11-23"]["requests"] == 1


def test_a_long_period_without_records_has_its_empty_days(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [record("2026-11-20T08:00:00.000000Z")])
    document = summary_json(summarise([path], Filters(periods.this_month(NOW), provider="nobody")))
    assert "by_hour" not in document
    assert list(document["by_day"]) == [f"2026-11-{day:02d}" for day in range(1, 26)]
    assert {group["requests"] for group in document["by_day"].values()} == {0}
    today = summary_json(summarise([path], Filters(periods.today(NOW))))
    assert list(today["by_hour"]) == [f"2026-11-25T{hour:02d}" for hour in range(11)]


def test_write_json_is_valid_json(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [record(total_cost=0.125)])
    stream = io.StringIO()
    write_json(summary_json(summarise([path])), stream)
    assert orjson.loads(stream.getvalue())["totals"]["cost"] == 0.125


def test_csv_has_a_header_and_one_row_per_record(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [record(total_cost=0.1, task_type="chat, with a comma"), unpriced(), b"torn"],
    )
    stream = io.StringIO()
    assert write_csv(RecordReader([path]), stream) == 2
    rows = list(csv.reader(io.StringIO(stream.getvalue())))
    assert rows[0] == list(RECORD_FIELDS)
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["total_cost"] == "0.1" and first["priced"] == "true" and first["session_id"] == ""
    assert first["task_type"] == "chat, with a comma"
    second = dict(zip(rows[0], rows[2], strict=True))
    assert second["total_cost"] == "" and second["priced"] == "false"
    assert Decimal(first["total_cost"]) + Decimal(first["input_tokens"]) == Decimal("100.1")


def test_csv_has_the_1_hour_cache_writes_last_and_0_for_a_record_written_before_them(tmp_path: Path) -> None:
    price = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75, "tier": None}
    newer = record(cache_write_tokens=3000) | {
        "price": price | {"cache_write_1h": 6.0},
        "cache_write_1h_tokens": 2000,
    }
    path = write(tmp_path / "c.jsonl", [newer, record()])
    stream = io.StringIO()
    write_csv(RecordReader([path]), stream)
    header, *rows = list(csv.reader(io.StringIO(stream.getvalue())))
    assert header[-1] == "cache_write_1h_tokens"
    assert [row[-1] for row in rows] == ["2000", "0"]
    assert orjson.loads(rows[0][header.index("price")])["cache_write_1h"] == 6.0


def test_csv_price_cell_is_the_records_json(tmp_path: Path) -> None:
    price = {"input": 2.5, "output": 10.0, "cached_input": 1.25, "cache_write": 2.5, "tier": None}
    path = write(tmp_path / "c.jsonl", [record() | {"price": price}])
    stream = io.StringIO()
    write_csv(RecordReader([path]), stream)
    row = next(csv.DictReader(io.StringIO(stream.getvalue())))
    assert row["price"] == '{"input":2.5,"output":10.0,"cached_input":1.25,"cache_write":2.5,"tier":null}'


FORMULA_STARTS = ["=", "+", "-", "@", "\t", "\r"]  # what a spreadsheet reads as the start of a formula


def csv_rows(path: Path) -> list[dict[str, str]]:
    stream = io.StringIO()
    write_csv(RecordReader([path]), stream)
    return list(csv.DictReader(io.StringIO(stream.getvalue(), newline="")))


def test_csv_text_a_spreadsheet_would_read_as_a_formula_starts_with_a_quote(tmp_path: Path) -> None:
    hyperlink = '=HYPERLINK("http://x","click")'
    client_text = [
        record(model=f"{start}1+1", session_id=f"{start}s", task_type=f"{start}cmd|' /C calc'!A0")
        for start in FORMULA_STARTS
    ]
    other_text = {"endpoint": "@/v1/chat/completions", "request_id": "-1", "response_model": "+m"}
    provider_text = record(model=hyperlink, finish_reason="=1", **other_text)
    plain = record(session_id="s-1", task_type="chat", total_cost=-0.25, input_tokens=-3, ttfb_ms=None)
    rows = csv_rows(write(tmp_path / "c.jsonl", [*client_text, provider_text, plain]))
    assert [(row["model"], row["session_id"], row["task_type"]) for row in rows[:6]] == [
        (f"'{start}1+1", f"'{start}s", f"'{start}cmd|' /C calc'!A0") for start in FORMULA_STARTS
    ]
    names = ["model", "endpoint", "request_id", "response_model", "finish_reason"]
    assert {name: rows[6][name] for name in names} == {
        "model": "'" + hyperlink, "endpoint": "'@/v1/chat/completions", "request_id": "'-1",
        "response_model": "'+m", "finish_reason": "'=1",
    }  # fmt: skip
    names += ["session_id", "task_type", "total_cost", "input_tokens", "ttfb_ms", "is_streaming"]
    assert {name: rows[7][name] for name in names} == {
        "model": "gpt-4o", "endpoint": "/v1/chat/completions", "request_id": "chatcmpl-1",
        "response_model": "gpt-4o-2024-08-06", "finish_reason": "stop", "session_id": "s-1",
        "task_type": "chat", "total_cost": "-0.25", "input_tokens": "-3", "ttfb_ms": "",
        "is_streaming": "false",
    }  # fmt: skip


def test_csv_a_carriage_return_inside_a_text_stays_in_its_cell(tmp_path: Path) -> None:
    # Unquoted, the \r ends the row in a spreadsheet and the formula after it starts the next one.
    model = "gpt-4o\r=1+1"
    rows = csv_rows(write(tmp_path / "c.jsonl", [record(model=model, task_type="a\rb"), record()]))
    assert [(row["timestamp"], row["model"], row["task_type"]) for row in rows] == [
        ("2026-11-23T10:30:00.000000Z", model, "a\rb"),
        ("2026-11-23T10:30:00.000000Z", "gpt-4o", ""),
    ]
