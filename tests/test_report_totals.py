"""The report's figures against an independent sum of the raw lines of generated record files.

Each seed writes a record file of the proxy's shape (and once, a rotated .gz beside it): several
providers, models priced and unpriced, currencies with a rate (CNY, EUR) and without (JPY), calls
streamed and not, failed, refused, left by their client and answered without usage, cached, cache-write
and reasoning tokens, on hour, day and month boundaries; some records are stamped by another writer in
New York time, across the end of its daylight saving time (2026-11-01 06:00 UTC, when 01:30 comes
twice); and a few lines are not records. Reports have no time zone option: they are UTC throughout.
The expected figures are worked out here from the lines alone, in Decimal and plain loops (each cost as
the decimal its line writes, as docs/reports.md promises), and compared with what the command line prints.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.report import main

NOW = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)  # a Monday, the day after New York left daylight saving
FIRST = datetime(2026, 10, 30, 0, 0, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
RATES = {"USD": Decimal(1), "CNY": Decimal("0.14"), "EUR": Decimal("1.08")}  # JPY has none
# provider -> (currency, {model: (input, output, cached input, cache write, 1-hour cache write) per 1M})
PROVIDERS: dict[str, tuple[str, dict[str, tuple[str, str, str, str, str]]]] = {
    "openai": ("USD", {"gpt-4o": ("2.5", "10", "1.25", "2.5", "2.5"),
                       "gpt-4o-mini": ("0.15", "0.6", "0.075", "0.15", "0.15")}),
    "anthropic": ("USD", {"claude-sonnet-4-5": ("3", "15", "0.3", "3.75", "6")}),
    "dashscope": ("CNY", {"qwen-plus": ("0.8", "2", "0.16", "0.8", "0.8")}),
    "mistral": ("EUR", {"mistral-large-latest": ("2", "6", "2", "2", "2")}),
    "sakura": ("JPY", {"sakura-llm": ("150", "600", "150", "150", "150")}),
    "openrouter": ("USD", {}),
}  # fmt: skip
CALLED = [
    *((provider, model) for provider, (_, models) in PROVIDERS.items() for model in models),
    ("openai", "gpt-5-preview"),  # no price
    ("openrouter", "some/new-model"),  # no price
    ("openai", None),  # an images call without a model (optional there): metered, no price, (none)
]
# Calls forwarded as is, not metered: no model, no usage; the GET of chat/completions lists stored ones.
FORWARDED = [
    ("openai", "/openai/v1/files"),
    ("openai", "/openai/v1/chat/completions"),
    ("anthropic", "/anthropic/v1/models"),
    ("dashscope", "/dashscope/v1/files/file-1"),
]
USERS = ["team-a", "team-b", "key:0123456789ab"]
# outcome -> (status, error, has usage); "refused" is priced at 0, "gone" has an estimated usage.
OUTCOMES = {
    "ok": (200, None, True),
    "stream": (200, None, True),
    "gone": (499, "client_disconnected", True),
    "no_usage": (200, None, False),
    "failed": (502, "upstream_unreachable", False),
    "timeout": (504, "upstream_timeout", False),
    "refused": (429, None, False),
}
Usage = tuple[int, int, int, int, int, int]  # input, output, cached, cache write, reasoning, 1-hour writes


def config_text(budgets: str = "{daily: 25.0, monthly: 400.0, warn_at: 0.5, critical_at: 0.8}") -> str:
    lines = [
        "currency: USD",
        "exchange_rates: {CNY: 0.14, EUR: 1.08}",
        "features: {cost_tracking: {file: records/cost-tracking.jsonl}}",
        f"budgets: {budgets}",
        "providers:",
    ]
    for provider, (currency, models) in PROVIDERS.items():
        lines += [
            f"  {provider}:",
            f"    base_url: https://{provider}.example/v1",
            f"    currency: {currency}",
        ]
        lines.append("    models:" if models else "    models: {}")
        for model, (inp, out, cached, write, write_1h) in models.items():
            prices = f"input: {inp}, output: {out}, cached_input: {cached}, cache_write: {write}"
            prices += f", cache_write_1h: {write_1h}"
            lines.append(f"      {model}: {{pricing: {{{prices}}}}}")
    return "\n".join(lines) + "\n"


def utc_stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S.%f}Z"  # the proxy's


def new_york_stamp(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).isoformat(timespec="microseconds")  # another writer's


def proxy_record(
    rng: random.Random, stamp: str, provider: str, model: str | None, outcome: str, usage: Usage | None
) -> dict[str, Any]:
    """One call's record, its fields in the proxy's order, its costs priced as the proxy prices them."""
    currency, models = PROVIDERS[provider]
    price = models.get(model) if model is not None else None
    status, error, _ = OUTCOMES[outcome]
    inp, out, cached, written, reasoning, written_1h = usage or (0, 0, 0, 0, 0, 0)
    costs: list[float | None] = [None, None, None]
    if price is not None and (usage is not None or outcome == "refused"):
        per_token = [Fraction(value) / 1_000_000 for value in price]
        input_cost = max(inp - cached - written, 0) * per_token[0] + cached * per_token[2]
        input_cost += (written - written_1h) * per_token[3] + written_1h * per_token[4]
        output_cost = out * per_token[1]
        costs = [float(input_cost), float(output_cost), float(input_cost + output_cost)]
    streamed = outcome in ("stream", "gone") or (outcome != "ok" and rng.random() < 0.3)
    return {
        "timestamp": stamp,
        "request_id": f"chatcmpl-{rng.getrandbits(48):012x}",
        "user_id": rng.choice(USERS),
        "ip_address": "10.0.0.7",
        "provider": provider,
        "model": model,
        "endpoint": "/openai/v1/images/generations" if model is None else "/v1/chat/completions",
        "is_streaming": streamed,
        "input_tokens": inp,
        "output_tokens": out,
        "total_tokens": inp + out,
        "input_cost": costs[0],
        "output_cost": costs[1],
        "total_cost": costs[2],
        "finish_reason": "stop" if usage is not None and status == 200 else None,
        "v": 1,
        "response_model": model,
        "cached_input_tokens": cached,
        "cache_write_tokens": written,
        "reasoning_tokens": reasoning,
        "currency": currency,
        "priced": price is not None,
        "usage_source": "none" if usage is None else "estimated" if outcome == "gone" else "provider",
        "status_code": status,
        "error": error,
        "duration_ms": round(rng.uniform(50, 40_000), 3),
        "ttfb_ms": round(rng.uniform(20, 900), 3) if usage is not None else None,
        "proxy_request_id": f"{rng.getrandbits(128):032x}",
        "session_id": rng.choice([None, "s-1", "s-2"]),
        "task_type": rng.choice([None, "chat", "code", "summarise"]),
        "provider_reported_cost": costs[2] if provider == "openrouter" else None,
        "price": None
        if costs[2] is None or price is None
        else dict(zip(("input", "output", "cached_input", "cache_write"), map(float, price[:4]), strict=True))
        | {"tier": None, "cache_write_1h": float(price[4])},
        "cache_write_1h_tokens": written_1h,
    }


def random_call(rng: random.Random, stamp: str) -> dict[str, Any]:
    if rng.random() < 0.05:
        provider, endpoint = rng.choice(FORWARDED)
        outcome = rng.choice(["no_usage", "refused"])
        return proxy_record(rng, stamp, provider, None, outcome, None) | {"endpoint": endpoint}
    provider, model = rng.choice(CALLED)
    outcome = rng.choices(list(OUTCOMES), weights=(10, 8, 1, 1, 1, 1, 1))[0]
    usage = None
    if OUTCOMES[outcome][2]:
        inp = rng.randint(1, 30_000)
        cached = rng.randint(0, inp) if rng.random() < 0.3 else 0
        written = rng.randint(0, inp - cached) if provider == "anthropic" and rng.random() < 0.4 else 0
        out = rng.randint(0, 4_000)
        reasoning = rng.randint(0, out) if rng.random() < 0.2 else 0
        written_1h = rng.randint(0, written) if written and rng.random() < 0.5 else 0
        usage = (inp, out, cached, written, reasoning, written_1h)
    return proxy_record(rng, stamp, provider, model, outcome, usage)


# Moments a report's periods and buckets begin or end at: each gets a record, some stamped in New York.
EDGES = [
    datetime(2026, 10, 31, 0, 0, tzinfo=UTC),
    datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 1, 0, 0, tzinfo=UTC),  # a month's first moment: 2026-10-31T20:00 in New York
    datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30-04:00 in New York
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30-05:00 in New York
    datetime(2026, 11, 2, 0, 0, tzinfo=UTC),
    NOW - timedelta(hours=24),
    NOW - timedelta(hours=48),
    NOW,  # the end of every period that ends now: outside it
    NOW + timedelta(minutes=5),  # a clock a little ahead
]


@dataclass(frozen=True)
class Line:
    """A line of the record files: a record, read back once, or a line that is not one."""

    raw: bytes
    record: dict[str, Any] | None = None
    moment: datetime | None = None  # the record's time in UTC, or that of the stamp a bad line begins with


def read_back(raw: bytes) -> Line:
    record = json.loads(raw)
    return Line(raw, record, moment_of(record["timestamp"]))


def file_lines(rng: random.Random, calls: list[tuple[datetime, dict[str, Any]]]) -> list[Line]:
    """The records in the order the proxy writes them (when each call ends), with lines that are not."""
    ordered = sorted(calls, key=lambda call: call[0] + timedelta(milliseconds=call[1]["duration_ms"]))
    lines = [read_back(json.dumps(record, separators=(",", ":")).encode() + b"\n") for _, record in ordered]
    proxy_written = [line for line in lines if line.record and line.record["timestamp"].endswith("Z")]
    for _ in range(6):
        line = rng.choice(proxy_written)
        other = rng.choice(lines).raw
        bad = rng.choice(
            [
                line.raw[: rng.randint(40, len(line.raw) - 2)] + b"\n",  # torn by a crash, closed off
                line.raw[:-1] + other,  # two records on one line
                retyped(line.raw),  # a token count written as a string by another writer
            ]
        )
        lines.insert(rng.randrange(len(lines)), Line(bad, moment=line.moment))
    lines.insert(rng.randrange(len(lines)), Line(b"Traceback (most recent call last):\n"))
    lines.insert(rng.randrange(len(lines)), Line(b'{"v":1,"timestamp":"yesterday"}\n'))
    lines.insert(rng.randrange(len(lines)), Line(b"\n"))  # blank: not counted
    return lines


def retyped(raw: bytes) -> bytes:
    record = json.loads(raw)
    return (
        json.dumps(record | {"input_tokens": str(record["input_tokens"])}, separators=(",", ":")).encode()
        + b"\n"
    )


def generate(seed: int, folder: Path, *, rotated: bool = False) -> list[Line]:
    """Write records/cost-tracking.jsonl (rotated: its first half in .jsonl.1.gz); the lines in the order
    the glob records/cost-tracking.jsonl* reads them."""
    rng = random.Random(seed)
    span = int((NOW - FIRST).total_seconds() * 1_000_000)
    moments = [FIRST + timedelta(microseconds=rng.randrange(span)) for _ in range(400)] + EDGES
    calls = []
    for moment in moments:
        stamp = new_york_stamp(moment) if rng.random() < 0.2 else utc_stamp(moment)
        calls.append((moment, random_call(rng, stamp)))
    lines = file_lines(rng, calls)
    half = len(lines) // 2 if rotated else 0
    (folder / "records").mkdir()
    if rotated:
        rotated_lines = b"".join(line.raw for line in lines[:half])
        (folder / "records" / "cost-tracking.jsonl.1.gz").write_bytes(gzip.compress(rotated_lines))
    (folder / "records" / "cost-tracking.jsonl").write_bytes(b"".join(line.raw for line in lines[half:]))
    return lines[half:] + lines[:half]  # sorted by name: the current file first


def moment_of(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp).astimezone(UTC)


def within(start: datetime | None, end: datetime | None, moment: datetime) -> bool:
    return (start is None or start <= moment) and (end is None or moment < end)


def records_in(
    lines: list[Line], start: datetime | None, end: datetime | None, **only: Callable[[Any], bool]
) -> list[dict[str, Any]]:
    """The records of [start, end) in file order, each field test in `only` passed."""
    return [
        line.record
        for line in lines
        if line.record is not None
        and line.moment is not None  # a record's line always has its moment (read_back)
        and within(start, end, line.moment)
        and all(test(line.record[name]) for name, test in only.items())
    ]


def skipped_in(lines: list[Line], start: datetime | None, end: datetime | None) -> int:
    """Lines that are not records and not blank, but for those stamped outside the period."""
    return sum(
        1
        for line in lines
        if line.record is None
        and line.raw.strip()
        and (line.moment is None or within(start, end, line.moment))
    )


@dataclass
class Group:
    """A group of calls as docs/reports.md defines it, summed exactly."""

    cost: Decimal = Decimal(0)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    errors: int = 0
    unpriced_requests: int = 0
    no_usage_requests: int = 0
    forwarded_requests: int = 0  # of the unpriced, the calls forwarded as is
    unconverted: dict[str, Decimal] = field(default_factory=dict)
    costed_requests: int = 0  # the calls in `cost`, for the averages
    costed_tokens: int = 0

    def add(self, record: dict[str, Any], rates: dict[str, Decimal]) -> None:
        self.requests += 1
        for name in ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens"):
            setattr(self, name, getattr(self, name) + record[name])
        self.errors += record["error"] is not None or record["status_code"] >= 400
        if not record["priced"]:
            self.unpriced_requests += 1
            self.forwarded_requests += forwarded(record)
        elif record["total_cost"] is None:
            self.no_usage_requests += 1
        elif record["currency"] in rates:
            self.cost += written(record["total_cost"]) * rates[record["currency"]]
            self.costed_requests += 1
            self.costed_tokens += record["total_tokens"]
        else:
            currency = record["currency"]
            self.unconverted[currency] = self.unconverted.get(currency, Decimal(0)) + written(
                record["total_cost"]
            )

    def as_json(self) -> dict[str, Any]:
        document = {name: getattr(self, name) for name in self.__dataclass_fields__}
        del document["costed_requests"], document["costed_tokens"]
        document["cost"] = places(self.cost, 10)
        document["unconverted"] = {
            code: places(value, 10) for code, value in sorted(self.unconverted.items())
        }
        return document


def written(cost: float) -> Decimal:
    """A cost as its line writes it (json.dumps writes a float's shortest repr), not the float's binary."""
    return Decimal(repr(cost))


def places(value: Decimal, digits: int) -> float:
    with localcontext() as exact:
        exact.prec = 200
        return float(value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN))


def exact_rates(currency: str) -> dict[str, Decimal]:
    """The rates into `currency` (USD or one with a rate), divided out exactly."""
    with localcontext() as exact:
        exact.prec = 200
        return {code: rate / RATES[currency] for code, rate in RATES.items()}


def grouped(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], str], rates: dict[str, Decimal]
) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for record in records:
        groups.setdefault(key(record), Group()).add(record, rates)
    return groups


def total(records: list[dict[str, Any]], rates: dict[str, Decimal] = RATES) -> Group:
    group = Group()
    for record in records:
        group.add(record, rates)
    return group


def forwarded(record: dict[str, Any]) -> bool:
    """A call forwarded as is, as docs/reports.md tells it: no model, no usage, not on the images API."""
    images = record["endpoint"].removesuffix("/").endswith(("/images/generations", "/images/edits"))
    unmetered = record["model"] is None and record["usage_source"] == "none"
    return not record["priced"] and unmetered and not images


def model_name(record: dict[str, Any]) -> str:
    return f"{record['provider']}/{record['model'] if record['model'] is not None else '(none)'}"


def buckets(
    records: list[dict[str, Any]], start: datetime, end: datetime, unit: timedelta
) -> list[tuple[datetime, Group]]:
    """Every UTC hour or day from start's to the last one before end, those without calls empty."""
    first = start.replace(minute=0, second=0, microsecond=0)
    if unit == timedelta(days=1):
        first = first.replace(hour=0)
    groups: dict[datetime, Group] = {}
    for record in records:
        moment = moment_of(record["timestamp"])
        groups.setdefault(first + (moment - first) // unit * unit, Group()).add(record, RATES)
    series, moment = [], first
    while moment < end:
        series.append((moment, groups.get(moment, Group())))
        moment += unit
    return series


def usd(value: Decimal) -> str:
    text = f"{value:,.6f}"
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def skipped_note(count: int) -> str:
    if not count:
        return ""
    lines = "1 line that is" if count == 1 else f"{count:,} lines that are"
    return f"note: skipped {lines} not whole JSON records\n"


def calls(count: int) -> str:
    return f"{count:,} call{'s' if count != 1 else ''}"


def expected_notes(records: list[dict[str, Any]], skipped: int) -> list[str]:
    """What a text report says its total leaves out, in the words of docs/reports.md."""
    group, notes = total(records), []
    unpriced: dict[str, int] = {}
    passed: dict[str, int] = {}
    for record in records:
        if forwarded(record):
            passed[record["provider"]] = passed.get(record["provider"], 0) + 1
        elif not record["priced"]:
            unpriced[model_name(record)] = unpriced.get(model_name(record), 0) + 1
    if unpriced:
        names = ", ".join(f"{name} ({count:,})" for name, count in sorted(unpriced.items()))
        models = f"{len(unpriced)} unpriced model{'s' if len(unpriced) != 1 else ''}"
        notes.append(f"Unpriced: {calls(sum(unpriced.values()))} to {models} (not in the total): {names}")
    if passed:
        names = ", ".join(f"{name} ({count:,})" for name, count in sorted(passed.items()))
        providers = f"{len(passed)} provider{'s' if len(passed) != 1 else ''}"
        notes.append(
            f"Forwarded as is: {calls(sum(passed.values()))} to {providers}"
            f" (not metered, so nothing to price; not in the total): {names}"
        )
    if group.no_usage_requests:
        notes.append(
            f"Without usage: {calls(group.no_usage_requests)} (failed, or answered without usage; no cost,"
            " not in the total)"
        )
    if group.unconverted:
        amounts = ", ".join(f"{value:,.6f} {code}" for code, value in sorted(group.unconverted.items()))
        notes.append(f"Not converted (no exchange rate to USD, not in the total): {amounts}")
    if skipped:
        notes.append(f"Skipped lines: {skipped:,} (not whole JSON records)")
    return notes


@dataclass
class Report:
    """The command line, run in a folder holding config.yml and the records."""

    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main(["--file", "records/cost-tracking.jsonl*", *args], now=NOW, environ={})
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *args: str) -> dict[str, Any]:
        code, out, _ = self("--format", "json", *args)
        assert code == 0
        return dict(json.loads(out))


SEEDS = [1, 2]


@pytest.fixture(params=SEEDS)
def generated(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[list[Line], Report]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yml").write_text(config_text())
    return generate(request.param, tmp_path), Report(capsys)


def assert_summary_json(
    document: dict[str, Any], lines: list[Line], start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """The JSON document of a period against the records of its lines; returns those records."""
    records = records_in(lines, start, end)
    group = total(records)
    totals = document["totals"]
    assert totals == group.as_json() | {
        "average_cost_per_request": places(group.cost / group.costed_requests, 10),
        "average_cost_per_1k_tokens": places(group.cost * 1000 / group.costed_tokens, 10),
    }
    for name, key in (
        ("by_provider", lambda r: r["provider"]),
        ("by_model", model_name),
        ("by_user", lambda r: r["user_id"]),
        ("by_task_type", lambda r: r["task_type"] or "(none)"),
    ):
        expected = {k: g.as_json() for k, g in grouped(records, key, RATES).items()}
        assert document[name] == expected, name
        costs = [value["cost"] for value in document[name].values()]
        assert costs == sorted(costs, reverse=True), f"{name} by cost, highest first"
    unpriced: dict[str, int] = {}
    for record in records:
        if not record["priced"]:
            unpriced[model_name(record)] = unpriced.get(model_name(record), 0) + 1
    assert document["unpriced_models"] == unpriced
    assert document["skipped_lines"] == skipped_in(lines, start, end)
    moments = sorted(moment_of(record["timestamp"]) for record in records)
    period = document["period"]
    assert [period["start"], period["end"]] == [None if at is None else utc_stamp(at) for at in (start, end)]
    assert [moment_of(period["first_record"]), moment_of(period["last_record"])] == [moments[0], moments[-1]]
    low, high = start or moments[0], end or moments[-1] + timedelta(microseconds=1)
    unit, series_name, width = (
        (timedelta(hours=1), "by_hour", 13)
        if high - low <= timedelta(hours=48)
        else (timedelta(days=1), "by_day", 10)
    )
    assert series_name in document and ({"by_hour", "by_day"} - {series_name}).isdisjoint(document)
    series = [
        (utc_stamp(moment)[:width], group.as_json()) for moment, group in buckets(records, low, high, unit)
    ]
    assert list(document[series_name].items()) == series
    return records


def test_json_of_periods_against_the_lines(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    day, hour = timedelta(days=1), timedelta(hours=1)
    today = datetime(2026, 11, 2, tzinfo=UTC)
    cases: list[tuple[list[str], datetime | None, datetime | None]] = [
        (["--all"], None, None),
        (["--since", "48"], NOW - 48 * hour, NOW),
        (["--since", "24"], NOW - 24 * hour, NOW),
        (["--yesterday"], today - day, today),
        (["--month"], datetime(2026, 11, 1, tzinfo=UTC), NOW),
        # An end given as a date includes its day; times are UTC unless they give an offset.
        (["--start", "2026-10-30", "--end", "2026-10-31"], today - 3 * day, today - day),
        (["--start", "2026-11-01T01:30:00-04:00"], datetime(2026, 11, 1, 5, 30, tzinfo=UTC), None),
        (["--end", "2026-11-01T01:30:00-05:00"], None, datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        (
            ["--start", "2026-10-31T00:00:00Z", "--end", "2026-11-01T06:00:00"],
            today - 2 * day,
            today - 18 * hour,
        ),
    ]
    for args, start, end in cases:
        records = assert_summary_json(report.json(*args), lines, start, end)
        assert records, args


def test_rotated_files_are_read_with_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yml").write_text(config_text())
    lines, report = generate(SEEDS[0], tmp_path, rotated=True), Report(capsys)
    assert_summary_json(report.json("--all"), lines, None, None)
    code, out, _ = report("--all", "--format", "csv")
    assert code == 0
    ids = [row[1] for row in csv.reader(io.StringIO(out))][1:]
    assert ids == [record["request_id"] for record in records_in(lines, None, None)]


def test_filters_and_another_currency(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    document = report.json("--all", "--errors", "--model", "gpt")
    gpt = records_in(lines, None, None, model=lambda model: model is not None and "gpt" in model)
    failed = [r for r in gpt if r["error"] is not None or r["status_code"] >= 400]
    assert document["totals"] == total(failed).as_json() | {
        "average_cost_per_request": document["totals"]["average_cost_per_request"],
        "average_cost_per_1k_tokens": document["totals"]["average_cost_per_1k_tokens"],
    }
    assert len(failed) > 0

    session = records_in(lines, None, None, session_id=lambda s: s == "s-1", provider=lambda p: p == "openai")
    document = report.json("--all", "--session", "s-1", "--provider", "openai")
    assert document["by_model"] == {
        name: group.as_json() for name, group in grouped(session, model_name, RATES).items()
    }

    records = records_in(lines, None, None, user_id=lambda u: u == "team-b", task_type=lambda t: t == "code")
    document = report.json("--all", "--user", "team-b", "--task-type", "code", "--currency", "cny")
    assert document["currency"] == "CNY"
    in_cny = total(records, exact_rates("CNY"))
    assert document["totals"]["cost"] == in_cny.as_json()["cost"]
    assert document["totals"]["unconverted"] == in_cny.as_json()["unconverted"]
    assert document["by_provider"] == {
        name: group.as_json()
        for name, group in grouped(records, lambda r: r["provider"], exact_rates("CNY")).items()
    }


def test_summary_text_against_the_lines(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    code, out, err = report("--yesterday", "--limit", "20")  # every model: forwarded calls add (none)s
    assert code == 0
    records, skipped = records_in(lines, start, end), skipped_in(lines, start, end)
    assert err == skipped_note(skipped)
    group = total(records)
    head, *sections = out.split("\n\n")
    assert head.splitlines()[3:] == [
        "Time Period: 2026-11-01T00:00:00 to 2026-11-02T00:00:00 UTC",
        f"Total Cost: {usd(group.cost)}",
        f"Total Requests: {group.requests:,}",
        f"Total Tokens: {group.total_tokens:,} (input {group.input_tokens:,}, output {group.output_tokens:,},"
        f" cached {group.cached_input_tokens:,})",
        f"Average Cost per Request: {usd(group.cost / group.costed_requests)}",
        f"Average Cost per 1K Tokens: {usd(group.cost * 1000 / group.costed_tokens)}",
        f"Errors: {group.errors:,}",
        *expected_notes(records, skipped),
    ]
    tables = {section.splitlines()[0]: section.splitlines()[1:] for section in sections}
    for title, key in (
        ("COST BY PROVIDER:", lambda r: r["provider"]),
        ("TOP MODELS BY COST:", model_name),
        ("COST BY TASK TYPE:", lambda r: r["task_type"] or "(none)"),
    ):
        shown = {}
        for row in tables[title]:
            name, cost, requests, tokens, *extras = (cell.strip() for cell in row.split(" | "))
            shown[name] = (cost, requests, tokens, extras)
        expected = {}
        for name, g in grouped(records, key, RATES).items():
            priceless = g.unpriced_requests - g.forwarded_requests
            extras = [f"{priceless:,} unpriced"] if priceless else []
            extras += [f"{g.forwarded_requests:,} forwarded"] if g.forwarded_requests else []
            extras += [f"+{value:,.6f} {code} unconverted" for code, value in sorted(g.unconverted.items())]
            expected[name] = (usd(g.cost), f"{g.requests:,} req", f"{g.total_tokens:,} tokens", extras)
        assert shown == expected, title


BAR = re.compile(r"^(\S+)\s+(\S+)\s+([\d,]+) req\s+([\d,]+) tokens\s*(#*)$")


@pytest.mark.parametrize(
    ("args", "start", "end", "unit"),
    [
        (["--today", "--format", "hourly"], datetime(2026, 11, 2, tzinfo=UTC), NOW, timedelta(hours=1)),
        (["--since", "30", "--format", "hourly"], NOW - timedelta(hours=30), NOW, timedelta(hours=1)),
        (["--week", "--format", "daily"], datetime(2026, 11, 2, tzinfo=UTC), NOW, timedelta(days=1)),
        (
            ["--start", "2026-10-29", "--end", "2026-11-01", "--format", "daily"],
            datetime(2026, 10, 29, tzinfo=UTC),
            datetime(2026, 11, 2, tzinfo=UTC),
            timedelta(days=1),
        ),
    ],
)
def test_hourly_and_daily_text_against_the_lines(
    generated: tuple[list[Line], Report], args: list[str], start: datetime, end: datetime, unit: timedelta
) -> None:
    lines, report = generated
    code, out, _ = report(*args)
    assert code == 0
    records = records_in(lines, start, end)
    series = buckets(records, start, end, unit)
    largest = max(group.cost for _, group in series)
    rows = out.splitlines()[1 : 1 + len(series)]
    label = "%Y-%m-%dT%H:00" if unit == timedelta(hours=1) else "%Y-%m-%d"
    expected = []
    for moment, group in series:
        with localcontext() as exact:
            exact.prec = 200
            bar = "#" * round(group.cost / largest * 40) if largest else ""
        expected.append(
            (f"{moment:{label}}", usd(group.cost), f"{group.requests:,}", f"{group.total_tokens:,}", bar)
        )
    assert [match.groups() for match in map(BAR.match, rows) if match] == expected
    assert out.splitlines()[1 + len(series) :] == expected_notes(records, skipped_in(lines, start, end))


def test_quiet_totals(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    for args, start, end in (
        (["--all"], None, None),
        (["--week"], datetime(2026, 11, 2, tzinfo=UTC), NOW),
        (["--since", "0.5"], NOW - timedelta(minutes=30), NOW),
    ):
        group = total(records_in(lines, start, end))
        code, out, err = report("-q", *args)
        assert (code, out) == (0, f"{group.total_tokens}\t{group.cost:.6f}\t{group.requests}\n")
        if group.unpriced_requests - group.forwarded_requests:
            assert f"Unpriced: {calls(group.unpriced_requests - group.forwarded_requests)} to " in err
        if group.forwarded_requests:
            assert f"Forwarded as is: {calls(group.forwarded_requests)} to " in err


def test_csv_rows_are_the_records_of_the_period(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    start, end = datetime(2026, 10, 31, 10, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    code, out, err = report(
        "--start", "2026-10-31T06:00:00-04:00", "--end", "2026-11-01T01:30:00-05:00", "--format", "csv"
    )
    assert code == 0
    records = records_in(lines, start, end)
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header == list(records[0])
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        for cell, (name, value) in zip(row, record.items(), strict=True):
            if value is None:
                assert cell == "", name
            elif isinstance(value, bool):
                assert cell == ("true" if value else "false"), name
            elif isinstance(value, dict):
                assert json.loads(cell) == value, name
            elif isinstance(value, float):
                assert float(cell) == value, name
            else:
                assert cell == str(value), name
    skipped = skipped_in(lines, start, end)
    assert err == skipped_note(skipped)


SYMBOLS = {"USD": "$", "EUR": "€"}


def detail(record: dict[str, Any]) -> list[str]:
    """A call's line of --format detailed: UTC time, model, tokens, cost in its own currency, user, status."""
    cost = record["total_cost"]
    if not record["priced"]:
        shown = "forwarded" if forwarded(record) else "unpriced"
    elif cost is None:
        shown = "no usage"
    else:
        amount = f"{Decimal(repr(cost)):,.6f}"  # the cost as the line writes it, to 6 places
        symbol = SYMBOLS.get(record["currency"])
        shown = f"{symbol}{amount}" if symbol else f"{amount} {record['currency']}"
    status = f"{record['status_code']}" + (f" {record['error']}" if record["error"] else "")
    return [
        f"{moment_of(record['timestamp']):%Y-%m-%d %H:%M:%S}",
        model_name(record),
        f"{record['input_tokens']:,} in",
        f"{record['output_tokens']:,} out",
        shown,
        record["user_id"],
        status,
    ]


def test_detailed_lines_oldest_first(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    records = records_in(lines, NOW - timedelta(hours=30), NOW)
    # Oldest first by the time the call arrived, not the order the lines were written in.
    ordered = [detail(r) for r in sorted(records, key=lambda r: (moment_of(r["timestamp"]), detail(r)))]
    for limit in ([], ["--limit", "25"]):
        code, out, _ = report("--since", "30", "--format", "detailed", *limit)
        assert code == 0
        assert [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()] == ordered[
            -25 if limit else 0 :
        ]


def assert_projection(projection: dict[str, Any], lines: list[Line], start: datetime | None) -> None:
    """A --project of the period from start (None: the first record) to now, against the lines."""
    month_start = datetime(2026, 11, 1, tzinfo=UTC)
    if start is None:
        start = min(moment_of(r["timestamp"]) for r in records_in(lines, None, None))
        period = total(records_in(lines, None, None))
    else:
        period = total(records_in(lines, start, NOW))
    days = Decimal((NOW - start).total_seconds()) / 86400
    average = period.cost / days
    month = total(records_in(lines, month_start, NOW)).cost
    days_left = Decimal((datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds()) / 86400
    runs_out: dict[str, float | None] = {}
    for name, limit, since, resets_in in (
        ("daily", Decimal(25), datetime(2026, 11, 2, tzinfo=UTC), Decimal("0.875")),
        ("monthly", Decimal(400), month_start, days_left),
    ):
        remaining = limit - total(records_in(lines, since, NOW)).cost
        lasts = remaining / average
        runs_out[name] = 0.0 if remaining <= 0 else places(lasts, 4) if lasts < resets_in else None
    assert projection == {
        "period_days": places(days, 4),
        "daily_average": places(average, 10),
        "month_to_date": places(month, 10),
        "days_left_in_month": places(days_left, 4),
        "projected_month": places(month + average * days_left, 10),
        "runs_out_in_days": runs_out,
    }


def test_projection_arithmetic(generated: tuple[list[Line], Report]) -> None:
    lines, report = generated
    for args, start in (
        (["--since", "24"], NOW - timedelta(hours=24)),
        (["--since", "6"], NOW - timedelta(hours=6)),
        (["--month"], datetime(2026, 11, 1, tzinfo=UTC)),
        (["--all"], None),
    ):
        document = report.json("--project", *args)
        assert_projection(document["projection"], lines, start)
        assert [budget["name"] for budget in document["budgets"]] == ["daily", "monthly"]
    code, out, _ = report("--project", "--since", "24")
    average = total(records_in(lines, NOW - timedelta(hours=24), NOW)).cost
    month = total(records_in(lines, datetime(2026, 11, 1, tzinfo=UTC), NOW)).cost
    assert out.split("\n\n")[-1].splitlines()[:4] == [
        "PROJECTION",
        f"Daily average: {usd(average)} (over 1.00 days)",
        f"Month to date (2026-11): {usd(month)}",
        f"Projected month total: {usd(month + average * Decimal('28.875'))} (28.88 days left)",
    ]


# Tokens per cent of each priced model's input and output (JPY: 0.15 and 0.6 yen), so that a budget can be
# set at exactly a threshold of what they spend.
CENTS = {
    "gpt-4o": (4_000, 1_000),
    "qwen-plus": (12_500, 5_000),
    "mistral-large-latest": (5_000, 5_000),
    "sakura-llm": (1_000, 1_000),
}


def cents_lines(seed: int, folder: Path) -> list[Line]:
    """This month's calls (and last month's) costing whole cents, with unpriced, forwarded and failed ones."""
    rng = random.Random(seed)
    calls = []
    start = datetime(2026, 10, 31, 12, tzinfo=UTC)
    span = int((NOW + timedelta(minutes=10) - start).total_seconds() * 1_000_000)
    moments = [start + timedelta(microseconds=rng.randrange(span)) for _ in range(80)]
    moments += [datetime(2026, 11, 2, tzinfo=UTC), NOW - timedelta(microseconds=1), NOW]
    for index, moment in enumerate(moments):
        stamp = new_york_stamp(moment) if rng.random() < 0.2 else utc_stamp(moment)
        if index % 9 == 4:
            provider, endpoint = rng.choice(FORWARDED)
            passed = proxy_record(rng, stamp, provider, None, "no_usage", None) | {"endpoint": endpoint}
            calls.append((moment, passed))
            continue
        provider, model = ("openai", "gpt-4o") if index % 5 == 0 else rng.choice(CALLED)
        outcome = "ok" if index % 5 == 0 else rng.choice(["ok", "ok", "stream", "failed", "refused"])
        usage = None
        if OUTCOMES[outcome][2]:
            per_input, per_output = CENTS.get(model or "", (1_000, 1_000))
            usage = (per_input * rng.randint(0, 300), per_output * rng.randint(1, 300), 0, 0, 0, 0)
        calls.append((moment, proxy_record(rng, stamp, provider, model, outcome, usage)))
    lines = [line for line in file_lines(rng, calls) if line.record is not None]
    (folder / "records").mkdir()
    (folder / "records" / "cost-tracking.jsonl").write_bytes(b"".join(line.raw for line in lines))
    return lines


def decimal_spend(records: list[dict[str, Any]], rates: dict[str, Decimal]) -> Decimal:
    """What a budget counts, each cost as the decimal it is written as: the spend a level is judged by."""
    return sum(
        (
            Decimal(repr(r["total_cost"])) * rates[r["currency"]]
            for r in records
            if r["priced"] and r["total_cost"] is not None and r["currency"] in rates
        ),
        Decimal(0),
    )


def budget_notes(name: str, group: Group, currency: str) -> list[str]:
    parts = []
    priceless = group.unpriced_requests - group.forwarded_requests
    if priceless:
        parts.append(f"{priceless} unpriced call{'s' if priceless != 1 else ''}")
    if group.forwarded_requests:
        parts.append(f"{calls(group.forwarded_requests)} forwarded as is (not metered)")
    if group.no_usage_requests:
        parts.append(f"{calls(group.no_usage_requests)} without usage")
    if group.unconverted:
        amounts = ", ".join(f"{value:,.6f} {code}" for code, value in sorted(group.unconverted.items()))
        parts.append(f"{amounts} (no exchange rate to {currency})")
    return [f"Not in the {name} spend: {'; '.join(parts)}"] if parts else []


# (daily, monthly): None for no such budget, else (fraction of the budget spent, whether the budget is
# a cent more, so that its spend falls just short of that fraction).
BUDGET_CASES = [
    ((Decimal("0.5"), False), (Decimal("0.5"), True)),
    ((Decimal("0.8"), True), (Decimal("0.8"), False)),
    ((Decimal("0.5"), True), None),
    ((Decimal("0.8"), False), (Decimal("0.5"), False)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", BUDGET_CASES)
def test_budget_levels_and_exit_codes_at_exactly_the_thresholds(
    seed: int,
    case: tuple[tuple[Decimal, bool] | None, tuple[Decimal, bool] | None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    lines = cents_lines(seed, tmp_path)
    windows = {
        "daily": records_in(lines, datetime(2026, 11, 2, tzinfo=UTC), NOW),
        "monthly": records_in(lines, datetime(2026, 11, 1, tzinfo=UTC), NOW),
    }
    limits: dict[str, Decimal] = {}
    for name, chosen in zip(("daily", "monthly"), case, strict=True):
        if chosen is not None:
            fraction, short = chosen
            limits[name] = decimal_spend(windows[name], RATES) / fraction + (Decimal("0.01") if short else 0)
    budgets = ", ".join(f"{name}: {limit}" for name, limit in limits.items())
    (tmp_path / "config.yml").write_text(config_text(f"{{{budgets}, warn_at: 0.5, critical_at: 0.8}}"))
    for currency in ("USD", "CNY"):
        assert_budgets(Report(capsys), windows, limits, currency)


def assert_budgets(
    report: Report, windows: dict[str, list[dict[str, Any]]], limits: dict[str, Decimal], currency: str
) -> None:
    """--budget in text, JSON and -q, in a currency, against the spend of each budget's window."""
    rates = exact_rates(currency)
    expected = []
    for name, limit in limits.items():
        # The fraction is worked out in USD, where the limit was set: 1/0.14 has no end in decimal.
        fraction = decimal_spend(windows[name], RATES) / limit
        with localcontext() as exact:
            exact.prec = 200
            limit_there = limit / RATES[currency]
        level = (
            "critical" if fraction >= Decimal("0.8") else "warning" if fraction >= Decimal("0.5") else "ok"
        )
        group = total(windows[name], rates)
        expected.append((name, limit_there, group, fraction, level))
    worst = max({"ok": 0, "warning": 1, "critical": 2}[level] for *_, level in expected)

    code, out, _ = report("--budget", "--currency", currency)
    money = usd if currency == "USD" else lambda value: f"{value:,.6f} {currency}"
    assert code == worst
    assert out.splitlines() == [
        f"BUDGETS ({currency}, UTC)",
        *(
            f"{name:<8} {money(group.cost)} of {money(limit)} spent, {money(limit - group.cost)} left"
            f" ({fraction * 100:.1f}%)  {level.upper()}"
            for name, limit, group, fraction, level in expected
        ),
        *(note for name, _, group, _, _ in expected for note in budget_notes(name, group, currency)),
    ]

    code, out, _ = report("--budget", "--currency", currency, "--format", "json")
    assert code == worst
    document = json.loads(out)
    assert document["currency"] == currency
    assert [
        {key: budget[key] for key in ("name", "limit", "spent", "remaining", "percent", "level")}
        | {key: budget[key] for key in ("unpriced_requests", "forwarded_requests", "unconverted")}
        for budget in document["budgets"]
    ] == [
        {
            "name": name,
            "limit": places(limit, 10),
            "spent": places(group.cost, 10),
            "remaining": places(limit - group.cost, 10),
            "percent": places(fraction * 100, 2),
            "level": level,
            "unpriced_requests": group.unpriced_requests,
            "forwarded_requests": group.forwarded_requests,
            "unconverted": group.as_json()["unconverted"],
        }
        for name, limit, group, fraction, level in expected
    ]

    code, out, err = report("--budget", "--currency", currency, "-q")
    name, limit, group, fraction, level = max(expected, key=lambda status: status[3])
    assert (code, out) == (worst, f"{group.cost:.6f}\t{limit - group.cost:.6f}\t{fraction * 100:.2f}\n")
    assert err.splitlines() == [
        note for name, _, group, _, _ in expected for note in budget_notes(name, group, currency)
    ]
