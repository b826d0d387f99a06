import csv
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from cost_records import forwarded, record, unpriced, write

from proxy.report import main

NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # a Wednesday
ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
currency: USD
exchange_rates: {CNY: 0.14}
features:
  cost_tracking: {file: records/cost.jsonl}
budgets: {daily: 10.0, monthly: 200.0, warn_at: 0.5, critical_at: 0.8}
providers:
  openai:
    base_url: https://api.openai.com/v1
    api_key: ${UNSET_KEY_FOR_REPORT_TESTS}
    models:
      gpt-4o: {pricing: {input: 2.5, output: 10}}
"""
RECORDS: list[dict[str, Any] | bytes] = [
    record("2026-11-25T08:10:00.000000Z", total_cost=1.5, input_tokens=1000, output_tokens=200,
           total_tokens=1200, cached_input_tokens=100, task_type="chat"),
    record("2026-11-25T08:40:00.000000Z", model="gpt-4o-mini", total_cost=0.25, user_id="team-b"),
    record("2026-11-25T09:05:00.000000Z", provider="dashscope", model="qwen-plus", currency="CNY",
           total_cost=10.0, user_id="team-b", task_type="code"),
    unpriced("2026-11-25T09:50:00.000000Z", provider="openrouter", model="mystery", status_code=429),
    b"torn line\n",
]  # fmt: skip


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./config.yml of the checkout
    (tmp_path / "config.yml").write_text(CONFIG)
    return write(tmp_path / "records" / "cost.jsonl", RECORDS)


def run(
    args: list[str], capsys: pytest.CaptureFixture[str], environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = main(args, now=NOW, environ=environ or {})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([], capsys)
    assert code == 0
    assert err == "note: skipped 1 line that is not whole JSON records\n"
    # $1.5 + $0.25 + 10 CNY at 0.14 = $3.15 over the three priced calls and their 1,500 tokens.
    expected = """\
============================================================
LLM PROXY COST ANALYSIS SUMMARY
============================================================
Time Period: 2026-11-24T10:30:00 to 2026-11-25T10:30:00 UTC
Total Cost: $3.150000
Total Requests: 4
Total Tokens: 1,650 (input 1,300, output 350, cached 100)
Average Cost per Request: $1.050000
Average Cost per 1K Tokens: $2.100000
Errors: 1
Unpriced: 1 call to 1 unpriced model (not in the total): openrouter/mystery (1)
Skipped lines: 1 (not whole JSON records)

COST BY PROVIDER:
openai       | $1.750000 |     2 req |      1,350 tokens
dashscope    | $1.400000 |     1 req |        150 tokens
openrouter   | $0.000000 |     1 req |        150 tokens | 1 unpriced

TOP MODELS BY COST:
openai/gpt-4o       | $1.500000 |     1 req |      1,200 tokens
dashscope/qwen-plus | $1.400000 |     1 req |        150 tokens
openai/gpt-4o-mini  | $0.250000 |     1 req |        150 tokens
openrouter/mystery  | $0.000000 |     1 req |        150 tokens | 1 unpriced

TOP USERS BY COST:
team-b       | $1.650000 |     2 req |        300 tokens
team-a       | $1.500000 |     2 req |      1,350 tokens | 1 unpriced

COST BY TASK TYPE:
chat         | $1.500000 |     1 req |      1,200 tokens
code         | $1.400000 |     1 req |        150 tokens
(none)       | $0.250000 |     2 req |        300 tokens | 1 unpriced
"""
    assert out == expected


def test_summary_top_n_and_amounts_without_a_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path / "c.jsonl", [record(total_cost=1.0), record(provider="x", currency="JPY", total_cost=300.0)]
    )
    code, out, _ = run(["--file", str(path), "--all", "--limit", "1"], capsys)
    assert code == 0
    assert "Total Cost: $1.000000\n" in out
    assert "Not converted (no exchange rate to USD, not in the total): 300.000000 JPY\n" in out
    assert "x            | $0.000000 |     1 req |        150 tokens | +300.000000 JPY unconverted\n" in out
    top = (
        "TOP MODELS BY COST:\nopenai/gpt-4o | $1.000000 |     1 req |        150 tokens\n"
        "... and 1 more (--limit N shows more)\n"
    )
    assert top in out


def test_quiet_prints_tokens_cost_requests(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["-q"], capsys)
    assert (code, out) == (0, "1650\t3.150000\t4\n")
    assert "Unpriced: 1 call to" in err


def test_json_matches_an_independent_sum_of_the_file(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--format", "json", "--all"], capsys)
    assert code == 0
    document = orjson.loads(out)
    parsed = [orjson.loads(line) for line in records.read_bytes().splitlines() if line.startswith(b"{")]
    rates = {"USD": Decimal(1), "CNY": Decimal("0.14")}
    independent = sum(Decimal(repr(r["total_cost"])) * rates[r["currency"]] for r in parsed if r["priced"])
    assert Decimal(repr(document["totals"]["cost"])) == independent == Decimal("3.15")
    assert document["totals"]["requests"] == len(parsed) == 4
    assert document["totals"]["total_tokens"] == sum(r["total_tokens"] for r in parsed)
    assert document["by_model"]["dashscope/qwen-plus"]["cost"] == 1.4
    assert document["by_provider"]["openai"]["requests"] == 2
    assert [hour["requests"] for hour in document["by_hour"].values()] == [2, 2]  # 08:00 and 09:00
    assert document["skipped_lines"] == 1


def test_no_usage_data(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("summary", "hourly", "daily", "detailed"):
        assert run(["--yesterday", "--format", fmt], capsys)[:2] == (0, "No usage data found\n")
    assert run(["--yesterday", "-q"], capsys)[:2] == (0, "0\t0.000000\t0\n")
    code, out, _ = run(["--yesterday", "--format", "json"], capsys)
    assert orjson.loads(out)["totals"]["requests"] == 0


def test_detailed_newest_last_with_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-25T09:00:00.000000Z", total_cost=0.5, input_tokens=1234),
            record("2026-11-25T07:00:00.000000Z", total_cost=0.25),  # written late: a long stream
            unpriced("2026-11-25T08:00:00.000000Z", provider="openrouter", model="m", status_code=499,
                     error="client_disconnected", user_id="team-b"),
            record("2026-11-25T10:00:00.000000Z", provider="dashscope", model="qwen", currency="CNY",
                   total_cost=2.0),
            # Priced, but the provider broke off: no usage, so no cost, and not for want of a price.
            record("2026-11-25T09:30:00.000000Z", input_tokens=0, output_tokens=0, total_tokens=0,
                   input_cost=None, output_cost=None, total_cost=None, usage_source="none",
                   status_code=502, error="upstream_reset"),
        ],
    )  # fmt: skip
    code, out, _ = run(["--file", str(path), "--format", "detailed", "--limit", "4"], capsys)
    assert code == 0
    assert out == (
        "2026-11-25 08:00:00  openrouter/m      100 in  50 out      unpriced  team-b"
        "  499 client_disconnected\n"
        "2026-11-25 09:00:00  openai/gpt-4o   1,234 in  50 out     $0.500000  team-a  200\n"
        "2026-11-25 09:30:00  openai/gpt-4o       0 in   0 out      no usage  team-a  502 upstream_reset\n"
        "2026-11-25 10:00:00  dashscope/qwen    100 in  50 out  2.000000 CNY  team-a  200\n"
    )
    everything = run(["--file", str(path), "--format", "detailed"], capsys)[1]
    assert everything.splitlines()[0].startswith("2026-11-25 07:00:00  openai/gpt-4o")


def test_control_characters_of_a_record_reach_the_terminal_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model name is the client's: an escape sequence in it must not rewrite the operator's screen.
    clear = "\x1b[2J\x1b]0;owned\x07"
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-25T09:00:00.000000Z", model="gpt-4o" + clear, total_cost=0.5, user_id="u\x9b1"),
            unpriced("2026-11-25T09:10:00.000000Z", provider="openrouter", model="m\rx"),
            record("2026-11-25T09:20:00.000000Z", currency="X\x1bZ", total_cost=2.0),
        ],
    )
    outputs = [
        run(["--file", str(path), *options], capsys)[1]
        for options in (["--all"], ["--all", "--format", "detailed"], ["--all", "--format", "daily"])
    ]

    for out in outputs:
        assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in out)
    summary, detailed, daily = outputs
    assert "openai/gpt-4o\\x1b[2J\\x1b]0;owned\\x07 | $0.500000 |" in summary
    assert "u\\x9b1" in summary and "+2.000000 X\\x1bZ unconverted" in summary
    assert "Unpriced: 1 call to 1 unpriced model (not in the total): openrouter/m\\x0dx (1)" in summary
    assert "2026-11-25 09:00:00  openai/gpt-4o\\x1b[2J\\x1b]0;owned\\x07" in detailed
    assert "2.000000 X\\x1bZ" in detailed and "openrouter/m\\x0dx" in detailed
    assert "openrouter/m\\x0dx (1)" in daily


def test_detailed_shows_utc_times_in_time_order_whatever_the_stamps_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-25T01:30:00-05:00", request_id="r1"),  # 06:30 UTC
            record("2026-11-25T06:00:00.000000Z", input_tokens=7),
        ],
    )
    code, out, _ = run(["--file", str(path), "--today", "--format", "detailed"], capsys)
    assert code == 0
    assert [line[:19] for line in out.splitlines()] == ["2026-11-25 06:00:00", "2026-11-25 06:30:00"]


def test_hourly_and_daily_show_empty_buckets_with_bars(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--since", "4", "--format", "hourly"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "HOURLY COSTS (UTC)"
    assert lines[1:6] == [
        "2026-11-25T06:00 $0.000000       0 req            0 tokens",
        "2026-11-25T07:00 $0.000000       0 req            0 tokens",
        "2026-11-25T08:00 $1.750000       2 req        1,350 tokens  " + "#" * 40,
        "2026-11-25T09:00 $1.400000       2 req          300 tokens  " + "#" * 32,
        "2026-11-25T10:00 $0.000000       0 req            0 tokens",
    ]
    code, out, _ = run(["--week", "--format", "daily"], capsys)
    assert out.splitlines()[1:4] == [
        "2026-11-23       $0.000000       0 req            0 tokens",
        "2026-11-24       $0.000000       0 req            0 tokens",
        "2026-11-25       $3.150000       4 req        1,650 tokens  " + "#" * 40,
    ]


def test_a_record_whose_timestamp_is_not_a_time_is_skipped(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(records, [*RECORDS, record("not-a-time", total_cost=5.0)])
    for args in (["--all", "-q"], ["--all", "--format", "json"], ["--all", "--format", "csv"]):
        code, out, err = run(args, capsys)
        assert code == 0
        assert err.startswith("note: skipped 2 lines that are not whole JSON records\n")
        assert "not-a-time" not in out
    assert run(["--all", "-q"], capsys)[1] == "1650\t3.150000\t4\n"


def test_a_line_torn_inside_a_character_is_skipped_by_every_format(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Cut inside the "义" of a model name and joined by the next record: a traceback but for csv and detailed.
    whole = orjson.dumps(record("2026-11-25T10:00:00.000000Z", model="qwen-通义", total_cost=5.0))
    write(records, [*RECORDS, whole[: whole.index("义".encode()) + 1] + whole + b"\n"])
    for fmt in ("summary", "hourly", "json", "csv", "detailed"):
        code, out, err = run(["--all", "--format", fmt], capsys)
        assert (code, err) == (0, "note: skipped 2 lines that are not whole JSON records\n")
        assert "通义" not in out
    assert run(["--today", "-q"], capsys)[1] == "1650\t3.150000\t4\n"
    assert run(["--budget"], capsys)[0] == 0


def test_csv_to_an_output_file(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["--all", "--format", "csv", "--output", "report.csv", "--provider", "openai"], capsys
    )
    assert (code, out) == (0, "")
    assert "skipped 1 line" in err
    with open("report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["model"] for row in rows] == ["gpt-4o", "gpt-4o-mini"]
    assert sum(Decimal(row["total_cost"]) for row in rows) == Decimal("1.75")


def test_csv_quotes_a_clients_formula_and_json_keeps_it(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    formula = '=HYPERLINK("http://x","click")'
    write(records, [record("2026-11-25T08:10:00.000000Z", model=formula, session_id="@s", task_type="-t")])
    code, out, _ = run(["--all", "--format", "csv", "--output", "report.csv"], capsys)
    assert (code, out) == (0, "")
    with open("report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["model"], row["session_id"], row["task_type"]) for row in rows] == [
        ("'" + formula, "'@s", "'-t")
    ]
    document = orjson.loads(run(["--all", "--format", "json"], capsys)[1])
    assert (list(document["by_model"]), list(document["by_task_type"])) == ([f"openai/{formula}"], ["-t"])


def test_a_csv_export_that_fails_partway_writes_nothing(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Enough records that rows are written before the read reaches the cut.
    whole = write(
        records.with_name("cost.jsonl.gz"),
        [record(f"2026-11-25T08:{i % 60:02d}:00.000000Z") for i in range(3000)],
    ).read_bytes()
    records.with_name("cost.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    args = ["--file", str(records.with_name("cost.jsonl.gz")), "--all", "--format", "csv"]
    code, out, err = run(args, capsys)
    assert (code, out) == (2, "")
    assert "cannot read record file" in err and err.count("\n") == 1
    Path("report.csv").write_text("the last good export\n")
    code, out, err = run([*args, "--output", "report.csv"], capsys)
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert Path("report.csv").read_text() == "the last good export\n"
    assert sorted(path.name for path in Path().iterdir()) == ["config.yml", "records", "report.csv"]


# Read with --file, read as the config's file, and not read but the file the proxy writes.
@pytest.mark.parametrize("read", ["records/cost.jsonl", None, "other.jsonl"])
def test_output_to_a_record_file_exits_2_and_leaves_it_as_it_was(
    records: Path, capsys: pytest.CaptureFixture[str], read: str | None
) -> None:
    (records.parent.parent / "other.jsonl").write_bytes(records.read_bytes())
    before = records.read_bytes()
    args = ["--file", read] if read else []
    code, out, err = run([*args, "--format", "csv", "--output", "records/cost.jsonl"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "meterproxy report: --output records/cost.jsonl: is a record file; write the report to another file\n"
    )
    assert records.read_bytes() == before


def test_output_to_a_folder_exits_2_with_one_line(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--output", "records"], capsys)
    assert (code, out) == (2, "")
    assert err == "meterproxy report: --output records: is a folder; give the path of a file\n"


@pytest.mark.parametrize(
    ("args", "requests"),
    [
        (["--provider", "openai"], 2),
        (["--model", "4o"], 2),
        (["--user", "team-b"], 2),
        (["--task-type", "code"], 1),
        (["--session", "nobody"], 0),
        (["--errors"], 1),
        (["--start", "2026-11-25T09:00:00Z", "--end", "2026-11-25"], 2),
        (["--start", "2026-11-24", "--end", "2026-11-24"], 0),
        (["--today"], 4),
        (["--month"], 4),
        (["--since", "1"], 1),
    ],
)
def test_filters_and_periods(
    records: Path, capsys: pytest.CaptureFixture[str], args: list[str], requests: int
) -> None:
    code, out, _ = run([*args, "-q"], capsys)
    assert code == 0 and out.split("\t")[2] == f"{requests}\n"


def test_report_in_another_currency(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--currency", "CNY", "-q"], capsys)[1] == "1650\t22.500000\t4\n"  # 3.15 / 0.14
    code, _, err = run(["--currency", "JPY"], capsys)
    assert code == 2
    assert err == (
        "meterproxy report: --currency JPY: no exchange rate for it in the config; use one of CNY, USD"
        " or add exchange_rates.JPY\n"
    )


@pytest.mark.parametrize(
    ("extra_cost", "code", "quiet"),
    [
        (0.0, 0, "3.150000\t6.850000\t31.50\n"),
        (2.0, 1, "5.150000\t4.850000\t51.50\n"),
        (5.0, 2, "8.150000\t1.850000\t81.50\n"),
    ],
)
def test_budget_exit_codes(
    records: Path, capsys: pytest.CaptureFixture[str], extra_cost: float, code: int, quiet: str
) -> None:
    write(records, [*RECORDS, record("2026-11-25T10:00:00.000000Z", total_cost=extra_cost)])
    assert run(["--budget", "-q"], capsys)[:2] == (code, quiet)
    status, out, _ = run(["--budget"], capsys)
    assert status == code
    level = ["OK", "WARNING", "CRITICAL"][code]
    assert out.splitlines()[1].startswith(f"daily    ${3.15 + extra_cost:.6f} of $10.000000 spent")
    assert out.splitlines()[1].endswith(level)
    assert out.splitlines()[2].endswith("OK")  # monthly: under $10 of $200
    status, out, _ = run(["--budget", "--format", "json"], capsys)
    assert status == code
    budgets = orjson.loads(out)["budgets"]
    assert [(b["name"], b["level"]) for b in budgets] == [("daily", level.lower()), ("monthly", "ok")]
    # Each budget's window [start, end) in the record timestamp format, so it compares with records as text.
    assert [(b["start"], b["end"]) for b in budgets] == [
        ("2026-11-25T00:00:00.000000Z", "2026-11-26T00:00:00.000000Z"),
        ("2026-11-01T00:00:00.000000Z", "2026-12-01T00:00:00.000000Z"),
    ]


def test_budget_lists_apart_what_its_spend_leaves_out(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # JPY has no rate: 300 JPY today and 70 JPY earlier this month are not in the spend, nor the
    # openrouter call of today without a price, nor a call that reported no usage; an alert must not read
    # "$3.15, OK" as all there is.
    write(
        records,
        [
            *RECORDS,
            record("2026-11-25T10:00:00.000000Z", currency="JPY", total_cost=300.0),
            record("2026-11-02T10:00:00.000000Z", currency="JPY", total_cost=70.0),
            record("2026-11-02T11:00:00.000000Z", total_cost=None, status_code=504, error="upstream_timeout"),
        ],
    )
    code, out, _ = run(["--budget"], capsys)
    assert (code, out) == (
        0,
        "BUDGETS (USD, UTC)\n"
        "daily    $3.150000 of $10.000000 spent, $6.850000 left (31.5%)  OK\n"
        "monthly  $3.150000 of $200.000000 spent, $196.850000 left (1.6%)  OK\n"
        "Not in the daily spend: 1 unpriced call; 300.000000 JPY (no exchange rate to USD)\n"
        "Not in the monthly spend: 1 unpriced call; 1 call without usage; 370.000000 JPY (no exchange rate"
        " to USD)\n",
    )
    assert run(["--budget", "-q"], capsys) == (
        0,
        "3.150000\t6.850000\t31.50\n",
        "note: skipped 1 line that is not whole JSON records\n"
        "Not in the daily spend: 1 unpriced call; 300.000000 JPY (no exchange rate to USD)\n"
        "Not in the monthly spend: 1 unpriced call; 1 call without usage; 370.000000 JPY (no exchange rate"
        " to USD)\n",
    )
    budgets = orjson.loads(run(["--budget", "--format", "json"], capsys)[1])["budgets"]
    assert [(b["unpriced_requests"], b["no_usage_requests"], b["unconverted"]) for b in budgets] == [
        (1, 0, {"JPY": 300.0}),
        (1, 1, {"JPY": 370.0}),
    ]


def test_a_failed_call_to_a_priced_model_is_not_an_unpriced_model(
    records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timeout = record(
        "2026-11-25T08:20:00.000000Z", input_tokens=0, output_tokens=0, total_tokens=0, input_cost=None,
        output_cost=None, total_cost=None, usage_source="none", status_code=504, error="upstream_timeout",
    )  # fmt: skip
    path = write(tmp_path / "c.jsonl", [record("2026-11-25T08:10:00.000000Z", total_cost=0.5), timeout])
    code, out, _ = run(["--file", str(path), "--all"], capsys)
    assert code == 0
    assert out.splitlines()[4:12] == [
        "Total Cost: $0.500000",
        "Total Requests: 2",
        "Total Tokens: 150 (input 100, output 50, cached 0)",
        "Average Cost per Request: $0.500000",
        "Average Cost per 1K Tokens: $3.333333",
        "Errors: 1",
        "Without usage: 1 call (failed, or answered without usage; no cost, not in the total)",
        "",
    ]
    document = orjson.loads(run(["--file", str(path), "--all", "--format", "json"], capsys)[1])
    assert document["unpriced_models"] == {}
    totals = document["totals"]
    assert (totals["unpriced_requests"], totals["no_usage_requests"], totals["errors"]) == (0, 1, 1)


def test_calls_forwarded_as_is_are_told_apart_from_unpriced_models(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Forwarded calls name no model: there is no price to add for them. An images call without a model
    # was metered (the model is optional there) and billed, and a record of an older writer without
    # usage_source does not say it was forwarded: both stay unpriced, as openai/(none).
    older = unpriced("2026-11-25T10:03:00.000000Z", model=None)
    del older["usage_source"]
    write(
        records,
        [
            *RECORDS,
            forwarded("2026-11-25T10:00:00.000000Z"),
            forwarded("2026-11-25T10:01:00.000000Z", provider="anthropic", endpoint="/anthropic/v1/models"),
            forwarded("2026-11-25T10:02:00.000000Z", endpoint="/openai/v1/chat/completions", status_code=404),
            forwarded("2026-11-25T10:02:30.000000Z", endpoint="/openai/v1/images/generations/"),
            older,
        ],
    )
    code, out, err = run(["--today"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[4:6] == ["Total Cost: $3.150000", "Total Requests: 9"]
    assert lines[10:12] == [
        "Unpriced: 3 calls to 2 unpriced models (not in the total): openai/(none) (2),"
        " openrouter/mystery (1)",
        "Forwarded as is: 3 calls to 2 providers (not metered, so nothing to price; not in the total):"
        " anthropic (1), openai (2)",
    ]
    assert "openai       | $1.750000 |     6 req |      1,500 tokens | 2 unpriced | 2 forwarded" in lines
    assert "anthropic    | $0.000000 |     1 req |          0 tokens | 1 forwarded" in lines

    code, out, _ = run(["--today", "--format", "detailed"], capsys)
    shown = [line.split()[-3:-1] for line in out.splitlines() if "(none)" in line]
    assert shown == [["forwarded", "team-a"]] * 3 + [["unpriced", "team-a"]] * 2

    code, out, _ = run(["--today", "--format", "json"], capsys)
    document = orjson.loads(out)
    totals = document["totals"]
    assert (totals["requests"], totals["unpriced_requests"], totals["forwarded_requests"]) == (9, 6, 3)
    # unpriced_models keeps its meaning, every call without a price: by_model says which were forwarded.
    assert document["unpriced_models"] == {"openrouter/mystery": 1, "openai/(none)": 4, "anthropic/(none)": 1}
    assert document["by_model"]["openai/(none)"]["forwarded_requests"] == 2
    assert document["by_provider"]["anthropic"]["forwarded_requests"] == 1

    budget_notes = [
        "Not in the daily spend: 3 unpriced calls; 3 calls forwarded as is (not metered)",
        "Not in the monthly spend: 3 unpriced calls; 3 calls forwarded as is (not metered)",
    ]
    code, out, _ = run(["--budget", "--project"], capsys)
    assert out.splitlines()[3:5] == budget_notes
    assert run(["--budget", "-q"], capsys)[2].splitlines()[1:] == budget_notes
    document = orjson.loads(run(["--budget", "--format", "json"], capsys)[1])
    counts = [(b["unpriced_requests"], b["forwarded_requests"]) for b in document["budgets"]]
    assert counts == [(6, 3), (6, 3)]
    code, out, _ = run(["--today", "--project", "--format", "json"], capsys)
    assert [b["forwarded_requests"] for b in orjson.loads(out)["budgets"]] == [3, 3]


def test_budget_without_budgets_in_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.jsonl", [record()])
    config = tmp_path / "no-budgets.yml"
    config.write_text(CONFIG.replace("budgets:", "# budgets:"))
    code, out, err = run(["--budget", "--file", str(path), "--config", str(config)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"meterproxy report: --budget: no budgets in {config}; add budgets:")


def test_budget_without_a_config_says_where_one_is_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yml of the checkout
    path = write(tmp_path / "c.jsonl", [record()])
    code, out, err = run(["--budget", "--file", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "meterproxy report: --budget: no config to read budgets from; pass --config PATH, set "
        "METERPROXY_CONFIG or run where config.yml is\n"
    )


def test_projection(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--project"], capsys)
    assert code == 0
    projection = out.split("\n\n")[-1]
    # $3.15 a day over the last 24 hours; 5.5625 days left of November; $6.85 of today's $10 lasts 2.2 days.
    assert projection == (
        "PROJECTION\n"
        "Daily average: $3.150000 (over 1.00 days)\n"
        "Month to date (2026-11): $3.150000\n"
        "Projected month total: $20.671875 (5.56 days left)\n"
        "Daily budget: lasts to the end of the day at this rate\n"
        "Monthly budget: lasts to the end of the month at this rate\n"
    )
    document = orjson.loads(run(["--project", "--format", "json"], capsys)[1])
    assert document["projection"]["projected_month"] == 20.671875
    assert [budget["name"] for budget in document["budgets"]] == ["daily", "monthly"]


def test_record_file_from_the_environment_and_missing_files(
    records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write(tmp_path / "other.jsonl", [record()] * 3)
    (tmp_path / "config.yml").unlink()
    assert run(["--all", "-q"], capsys, {"COST_TRACKING_FILE": str(other)})[1] == "450\t0.300000\t3\n"
    code, out, err = run(["--all"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("meterproxy report: logs/cost-tracking.jsonl: no such record file; pass --file")


def test_config_from_option_and_environment(
    records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = tmp_path / "elsewhere.yml"
    (tmp_path / "config.yml").rename(moved)
    assert run(["--config", str(moved), "-q"], capsys)[1] == "1650\t3.150000\t4\n"
    assert run(["-q"], capsys, {"METERPROXY_CONFIG": str(moved)})[1] == "1650\t3.150000\t4\n"
    code, _, err = run(["--config", "missing.yml"], capsys)
    assert code == 2 and err.startswith("meterproxy report: missing.yml: config file not found")


def test_config_variables_take_their_defaults_as_in_the_proxy(
    records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The config the proxy starts with: defaults apply, an unset key without one stays as written.
    (tmp_path / "config.yml").write_text(
        CONFIG.replace("{file: records/cost.jsonl}", "{file: '${RECORDS:-records/cost.jsonl}'}").replace(
            "https://api.openai.com/v1", "${OPENAI_BASE_URL:-https://api.openai.com/v1}"
        )
    )
    assert run(["-q"], capsys)[:2] == (0, "1650\t3.150000\t4\n")
    other = write(tmp_path / "other.jsonl", [record("2026-11-25T08:00:00.000000Z")] * 3)
    assert run(["-q"], capsys, {"RECORDS": str(other)})[:2] == (0, "450\t0.300000\t3\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--today", "--week"], "--today and --week: choose one period"),
        (["--since", "2", "--start", "2026-01-01"], "--since and --start/--end: choose one period"),
        (["--since", "soon"], "argument --since: 'soon': give a positive number of hours, e.g. --since 24"),
        # Echoed back as -1.0 and 0.0, with no option's name.
        (["--since", "-1"], "argument --since: '-1': give a positive number of hours, e.g. --since 24 (see"),
        (["--since", "0"], "argument --since: '0': give a positive number of hours, e.g. --since 24 (see"),
        (["--since", "nan"], "argument --since: 'nan': give a positive number of hours, e.g. --since 24"),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--limit", "0"], "argument --limit: '0': give a number of at least 1 (see --help)"),
        (["--provider", ""], "argument --provider: give a name, or leave the option out for every record"),
        (["--model="], "argument --model: give a name, or leave the option out for every record"),
        (["--start", "yesterday"], "--start 'yesterday': not a date or time"),
        (["--end", "9999-12-31"], "--end '9999-12-31': past the calendar's ends"),
        (["--since", "1e9"], "--since 1e+09: reaches back before the year 1"),
        (["--since", "inf"], "--since inf: reaches back before the year 1"),
        (["--output", "no/such/folder/out.txt"], "--output no/such/folder/out.txt: cannot write it"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    records: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(args, capsys)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "--task-type NAME" in out and "--budget" in out


def test_script_exit_codes_from_a_shell(tmp_path: Path) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = write(tmp_path / "c.jsonl", [record(now, total_cost=6.0)])
    config = tmp_path / "budgets.yml"
    # Both budgets at 60%: a warning even if the day (not the month) turns while the test runs.
    config.write_text(CONFIG.replace("daily: 10.0, monthly: 200.0", "daily: 10.0, monthly: 10.0"))
    script = (
        f'"{sys.executable}" scripts/analyze_costs.py --config "{config}" --file "{path}" --budget -q;'
        ' echo "exit $?"'
    )
    result = subprocess.run(["sh", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout == "6.000000\t4.000000\t60.00\nexit 1\n"
    assert result.stderr == ""


def test_a_cost_half_way_between_two_shown_amounts_is_rounded_as_written_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One token at $3.50 per 1M is $0.0000035, written 3.5e-06; its float is 3.49999999999999994...e-06,
    # so summing the floats showed $0.000003 where the detailed line, and any rounding of 0.0000035, say
    # $0.000004. Seven gpt-4o tokens in (1.75e-05) and eight more ($0.00002) are $0.0000375: $0.000038.
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-25T08:00:00.000000Z", input_tokens=1, output_tokens=0, total_tokens=1,
                   input_cost=3.5e-06, output_cost=0.0, total_cost=3.5e-06),
            record("2026-11-25T09:00:00.000000Z", input_tokens=7, output_tokens=0, total_tokens=7,
                   input_cost=1.75e-05, output_cost=0.0, total_cost=1.75e-05, user_id="team-b"),
            record("2026-11-25T09:30:00.000000Z", input_tokens=8, output_tokens=0, total_tokens=8,
                   input_cost=2e-05, output_cost=0.0, total_cost=2e-05, user_id="team-b"),
        ],
    )  # fmt: skip
    first = ["--file", str(path), "--start", "2026-11-25T08:00:00Z", "--end", "2026-11-25T09:00:00Z"]
    code, out, _ = run([*first, "--format", "detailed"], capsys)
    assert (code, out.split()[-3]) == (0, "$0.000004")
    assert run([*first, "-q"], capsys)[1] == "1\t0.000004\t1\n"
    assert "Total Cost: $0.000004\n" in run(first, capsys)[1]
    assert "Average Cost per Request: $0.000004\n" in run(first, capsys)[1]
    later = ["--file", str(path), "--start", "2026-11-25T09:00:00Z", "--end", "2026-11-25T10:00:00Z"]
    assert "Total Cost: $0.000038\n" in run(later, capsys)[1]
    assert "team-b       | $0.000038 |" in run(later, capsys)[1]
    code, out, _ = run(["--file", str(path), "--today", "--format", "hourly"], capsys)
    assert out.splitlines()[9:11] == [
        "2026-11-25T08:00 $0.000004       1 req            1 tokens  ####",
        "2026-11-25T09:00 $0.000038       2 req           15 tokens  " + "#" * 40,
    ]
    assert run(["--file", str(path), "--today", "-q"], capsys)[1] == "16\t0.000041\t3\n"
