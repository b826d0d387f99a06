from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.stats import PIECE_BYTES, RollingTotals

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def line(age: timedelta, **fields: Any) -> bytes:
    stamp = (NOW - age).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    record = {
        "timestamp": stamp,
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
        "total_cost": 0.1,
        "currency": "USD",
        "status_code": 200,
        "error": None,
    }
    return orjson.dumps({**record, **fields}) + b"\n"


def totals(path: Path, now: datetime = NOW, piece_bytes: int = PIECE_BYTES) -> RollingTotals:
    stats = RollingTotals(path, "USD", {"CNY": Decimal("0.14")}, clock=lambda: now, piece_bytes=piece_bytes)
    stats.load()
    return stats


def test_sums_the_last_24_hours_exactly(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(timedelta(hours=25))
        + line(timedelta(hours=23), total_cost=0.2)
        + line(timedelta(hours=1), provider="deepseek", model="deepseek-chat", total_cost=0.7)
        + line(timedelta(minutes=1), status_code=429, total_cost=0.0)
        + line(timedelta(minutes=1), error="upstream_timeout", total_cost=None)
    )
    snapshot = totals(path).snapshot()
    assert snapshot["requests"] == 4
    assert snapshot["errors"] == 2
    assert (snapshot["input_tokens"], snapshot["output_tokens"], snapshot["total_tokens"]) == (40, 20, 60)
    assert snapshot["total_cost"] == 0.9  # 0.2 + 0.7 + 0.0 exactly; floats would give 0.8999999999999999
    assert snapshot["provider_costs"] == {"deepseek": 0.7, "openai": 0.2}
    assert snapshot["model_costs"] == {"deepseek/deepseek-chat": 0.7, "openai/gpt-4o": 0.2}


def test_calls_without_a_price_are_counted_apart_from_the_total(tmp_path: Path) -> None:
    # Their cost is in no total: the count says the total leaves them out, so none reads as $0 spent.
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(timedelta(minutes=9), total_cost=0.2, priced=True)
        + line(timedelta(minutes=8), model="my-ft", total_cost=None, priced=False, usage_source="provider")
        # An older writer's record, without `priced`: unpriced when it has no cost.
        + line(timedelta(minutes=7), model="my-ft", total_cost=None)
        # Priced, but the call failed without usage: not an unpriced model.
        + line(timedelta(minutes=6), total_cost=None, priced=True, status_code=504, error="upstream_timeout")
        # Forwarded as is (GET /openai/v1/files): not metered, so nothing to price.
        + line(
            timedelta(minutes=5),
            model=None,
            total_cost=None,
            priced=False,
            usage_source="none",
            endpoint="/openai/v1/files",
        )
    )
    snapshot = totals(path).snapshot()
    assert (snapshot["requests"], snapshot["unpriced_requests"], snapshot["total_cost"]) == (5, 2, 0.2)
    # A day later both have left the window, minute by minute as the other calls do.
    later = NOW + timedelta(hours=24, minutes=-7, seconds=1)
    assert totals(path, now=later).snapshot()["unpriced_requests"] == 0


def test_a_record_with_1_hour_cache_writes_is_summed_as_any_other(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    price = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75, "tier": None}
    path.write_bytes(
        line(timedelta(hours=1), total_cost=0.2)
        + line(
            timedelta(minutes=1),
            provider="anthropic",
            model="claude-sonnet-4-6",
            total_cost=0.03168,
            cache_write_tokens=3000,
            price=price | {"cache_write_1h": 6.0},
            cache_write_1h_tokens=2000,
        )
    )
    snapshot = totals(path).snapshot()
    assert (snapshot["requests"], snapshot["total_cost"]) == (2, 0.23168)
    assert snapshot["provider_costs"] == {"anthropic": 0.03168, "openai": 0.2}


def test_a_stamp_with_an_offset_is_in_the_window_by_its_utc_moment(tmp_path: Path) -> None:
    # The window starts at 2026-11-22 12:00 UTC. 08:00 in New York is 13:00 UTC, inside it; 12:30 in
    # Cairo is 10:30 UTC, outside; their text says the opposite.
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(timedelta(0), timestamp="2026-11-22T08:00:00-05:00", total_cost=0.2)
        + line(timedelta(0), timestamp="2026-11-22T12:30:00+02:00", total_cost=0.4)
    )
    snapshot = totals(path).snapshot()
    assert (snapshot["requests"], snapshot["total_cost"]) == (1, 0.2)


def test_other_currencies_are_converted_or_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(timedelta(minutes=5), currency="CNY", total_cost=10.0)
        + line(timedelta(minutes=5), currency="EUR", total_cost=3.0)
    )
    snapshot = totals(path).snapshot()
    assert snapshot["total_cost"] == 1.4
    assert snapshot["unconverted"] == {"EUR": 3.0}
    assert snapshot["requests"] == 2


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0, 1e9), st.sampled_from(["USD", "CNY"])), max_size=20))
@example([(3.0, "USD"), (2.220446049250314e-16, "USD")])
def test_the_totals_are_the_exact_sums_of_the_records_rounded_once(
    tmp_path: Path, costs: list[tuple[float, str]]
) -> None:
    # 3 + 2.220446049250314e-16 is just past halfway between 3.0 and the float after it: summed to
    # Decimal's 28 digits, it came back as 3.0.
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b"".join(line(timedelta(minutes=1), total_cost=cost, currency=code) for cost, code in costs)
    )
    with localcontext() as context:
        context.prec = 2000
        exact = sum(Decimal(repr(cost)) * (Decimal("0.14") if code == "CNY" else 1) for cost, code in costs)
    snapshot = totals(path).snapshot()
    assert snapshot["total_cost"] == float(exact)
    assert snapshot["provider_costs"] == ({"openai": float(exact)} if costs else {})


def test_new_lines_from_any_writer_are_folded_in_and_torn_lines_wait(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(line(timedelta(minutes=3)))
    stats = totals(path)
    assert stats.snapshot()["requests"] == 1
    whole = line(timedelta(minutes=2))
    with open(path, "ab") as file:
        file.write(whole + whole[:20])
    assert stats.snapshot()["requests"] == 2
    with open(path, "ab") as file:
        file.write(whole[20:] + b"garbage\n")
    assert stats.snapshot()["requests"] == 3


def test_records_leave_the_window_as_time_passes(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(line(timedelta(hours=23, minutes=50)) + line(timedelta(hours=1)))
    now = [NOW]
    stats = RollingTotals(path, "USD", {}, clock=lambda: now[0])
    stats.load()
    assert stats.snapshot()["requests"] == 2
    now[0] = NOW + timedelta(minutes=20)
    assert stats.snapshot()["requests"] == 1


def test_start_up_reads_only_the_tail_of_a_large_file(tmp_path: Path) -> None:
    # Recent records at the head, then 3 MB of old ones: reading the whole file would count the head;
    # reading back from the end stops in the old block, well before it.
    path = tmp_path / "r.jsonl"
    with open(path, "wb") as file:
        file.write(line(timedelta(hours=1)) * 10)
        file.write(line(timedelta(days=3)) * 20_000)
        file.write(line(timedelta(hours=2)) * 3)
    assert path.stat().st_size > 3 * (1 << 20)
    assert totals(path).snapshot()["requests"] == 3


def test_folding_in_pieces_gives_the_totals_of_one_read(tmp_path: Path) -> None:
    # Lines of many lengths, so that pieces end inside lines, on their newlines and just after them, and
    # a line longer than a piece is carried across several.
    def lines(minutes: int) -> bytes:
        return b"".join(
            line(timedelta(minutes=minutes, seconds=n), provider="p" * n, input_tokens=n, total_cost=n / 8)
            for n in range(1, 30)
        )

    path = tmp_path / "r.jsonl"
    path.write_bytes(lines(9) + b"[1, 2]\n" + lines(8))
    assert path.stat().st_size < PIECE_BYTES  # the default reads this file in one piece
    pieced = [totals(path, piece_bytes=size) for size in (1, 2, 7, 100, 199, 256, 1000)]
    one_read = totals(path).snapshot()
    assert one_read["requests"] == 58
    assert [stats.snapshot() for stats in pieced] == [one_read] * len(pieced)

    last = line(timedelta(minutes=1), input_tokens=1000)
    with open(path, "ab") as file:
        file.write(lines(5) + last[:-10])
    waiting = totals(path).snapshot()
    assert (waiting["requests"], waiting["input_tokens"]) == (87, 3 * 435)
    assert [stats.snapshot() for stats in pieced] == [waiting] * len(pieced)
    with open(path, "ab") as file:
        file.write(last[-10:])
    whole = totals(path).snapshot()
    assert (whole["requests"], whole["input_tokens"]) == (88, 3 * 435 + 1000)
    assert [stats.snapshot() for stats in pieced] == [whole] * len(pieced)


def test_a_missing_file_gives_zeros_and_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    stats = totals(path)
    assert stats.snapshot()["requests"] == 0
    path.write_bytes(line(timedelta(minutes=1)))
    assert stats.snapshot()["requests"] == 1


def test_lines_that_are_not_records_are_skipped_at_start_up_and_later(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    foreign = b'{"timestamp": ["2026"], "total_cost": 1}\n'
    path.write_bytes(line(timedelta(minutes=3)) + foreign + b"[1, 2]\n" + line(timedelta(minutes=2)))
    stats = totals(path)
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (2, 0.2)
    with open(path, "ab") as file:
        file.write(foreign + line(timedelta(minutes=1), input_tokens="10") + line(timedelta(minutes=1)))
    snapshot = stats.snapshot()
    assert (snapshot["requests"], snapshot["total_cost"], snapshot["input_tokens"]) == (3, 0.3, 30)


def test_a_line_not_utf8_or_nested_too_deep_is_skipped_at_start_up_and_later(tmp_path: Path) -> None:
    # A write cut inside a character of a model name, joined by the next record, once stopped the proxy at
    # start-up with a UnicodeDecodeError (a RecursionError for the nesting): the reports skip such a line.
    path = tmp_path / "r.jsonl"
    whole = line(timedelta(minutes=3), model="qwen-通义")
    bad = whole[: whole.index("义".encode()) + 1] + whole
    bad += b'{"timestamp":"2026-11-23T11:00:00.000000Z","x":' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    path.write_bytes(whole + bad + line(timedelta(minutes=2)))
    stats = totals(path)
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (2, 0.2)
    with open(path, "ab") as file:
        file.write(bad + line(timedelta(minutes=1)))
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (3, 0.3)


def test_a_record_whose_timestamp_is_not_a_time_is_skipped_at_start_up_and_later(tmp_path: Path) -> None:
    # The reports skip such a line (its stamp places it in no hour); "yesterday" sorts after every minute,
    # so /health would also have kept it for ever.
    path = tmp_path / "r.jsonl"
    stamps = ("yesterday", "2026-13-45T99:99:99Z", "2026-11-23T11:61:00.000000Z")
    bad = b"".join(line(timedelta(0), timestamp=stamp, total_cost=5.0) for stamp in stamps)
    path.write_bytes(line(timedelta(minutes=3)) + bad + line(timedelta(minutes=2)))
    stats = totals(path)
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (2, 0.2)
    with open(path, "ab") as file:
        file.write(bad + line(timedelta(minutes=1)))
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (3, 0.3)


def test_a_line_that_is_not_a_record_does_not_end_the_read_back_at_start_up(tmp_path: Path) -> None:
    # The last block's first whole line is stamped in the past but is no time (February 30th): taken for
    # a record, it would say the window starts after it, and the recent records before it be left out.
    path = tmp_path / "r.jsonl"
    recent = line(timedelta(hours=1))
    bogus = line(timedelta(0), timestamp="2026-02-30T10:00:00.000000Z")
    after = ((1 << 20) - len(bogus)) // len(recent)  # lines after it: the block starts inside the one before
    path.write_bytes(recent * 2_000 + bogus + recent * after)
    assert totals(path).snapshot()["requests"] == 2_000 + after


def test_a_record_stamped_ahead_of_the_clock_counts_from_its_time_on(tmp_path: Path) -> None:
    # A clock that was set ahead and put back, or a line from elsewhere: a record stamped in ten years is
    # not one of the last 24 hours, and never leaves them if it is counted.
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(timedelta(hours=1))
        + line(-timedelta(days=3650), total_cost=100.0)
        + line(-timedelta(hours=3), total_cost=10.0)
    )
    now = [NOW]
    stats = RollingTotals(path, "USD", {}, clock=lambda: now[0])
    stats.load()
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (1, 0.1)
    now[0] = NOW + timedelta(hours=3)
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (2, 10.1)


def test_a_record_stamped_far_in_the_past_does_not_end_the_read_back_at_start_up(tmp_path: Path) -> None:
    # The last block's first whole line is a record of ten years ago (a clock that was wrong for a while,
    # a line from elsewhere): it does not say that the window starts after it.
    path = tmp_path / "r.jsonl"
    recent = line(timedelta(hours=1))
    ancient = line(timedelta(days=3650), total_cost=100.0)
    after = ((1 << 20) - len(ancient)) // len(
        recent
    )  # lines after it: the block starts inside the one before
    path.write_bytes(recent * 2_000 + ancient + recent * after)
    snapshot = totals(path).snapshot()
    assert snapshot["requests"] == 2_000 + after
    assert snapshot["total_cost"] == pytest.approx(0.1 * (2_000 + after))


def test_a_file_copied_and_emptied_under_the_proxy_is_summed_again_from_its_start(tmp_path: Path) -> None:
    # logrotate's copytruncate: the same file (same inode) emptied, then written on past where /health
    # had read it, before it looks again. Read on from there, it kept the records gone with the copy and
    # missed the new ones before that point.
    path = tmp_path / "r.jsonl"
    old = line(timedelta(minutes=5), input_tokens=100)
    path.write_bytes(old * 3)
    stats = totals(path)
    assert stats.snapshot()["requests"] == 3
    with open(path, "r+b") as file:
        file.truncate(0)
    with open(path, "ab") as file:
        file.write(b"".join(line(timedelta(minutes=1), input_tokens=n) for n in range(1, 6)))
    assert path.stat().st_size > len(old) * 3
    snapshot = stats.snapshot()
    assert (snapshot["requests"], snapshot["input_tokens"]) == (5, 15)


def test_a_path_that_cannot_be_read_keeps_the_totals_last_read_and_says_why(tmp_path: Path) -> None:
    # A folder where the file was: the read failed (Is a directory), /health with it, and start-up too.
    path = tmp_path / "r.jsonl"
    path.mkdir()
    stats = totals(path)
    assert (stats.snapshot()["requests"], stats.problem) == (
        0,
        f"cannot read cost-tracking file {path} (Is a directory): cost_stats_24h are the totals last read "
        "from it",
    )
    path.rmdir()
    path.write_bytes(line(timedelta(minutes=2)) * 2)
    assert (stats.snapshot()["requests"], stats.problem) == (2, None)
    path.unlink()
    path.mkdir()
    assert stats.snapshot()["requests"] == 2 and stats.problem is not None


def test_a_path_whose_folder_is_a_file_is_a_missing_file(tmp_path: Path) -> None:
    # The folder moved away and a file put in its place: nothing to read there, as for a file moved away.
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "r.jsonl").write_bytes(line(timedelta(minutes=2)))
    stats = totals(folder / "r.jsonl")
    folder.rename(tmp_path / "old-logs")
    folder.write_bytes(b"")
    assert (stats.snapshot()["requests"], stats.problem) == (1, None)
    assert (totals(folder / "r.jsonl").snapshot()["requests"], stats.problem) == (0, None)


def test_a_line_ends_at_a_newline_only(tmp_path: Path) -> None:
    # A carriage return is JSON whitespace: a record with one between its fields is one record, as the
    # reports read it; cut there, its halves were skipped. Two records apart by one are one line, no record.
    path = tmp_path / "r.jsonl"
    inside = line(timedelta(minutes=3), total_cost=0.2).replace(b',"provider"', b',\r"provider"')
    joined = line(timedelta(minutes=3))[:-1] + b"\r" + line(timedelta(minutes=3))
    path.write_bytes(inside + joined)
    stats = totals(path)
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (1, 0.2)
    with open(path, "ab") as file:
        file.write(joined + inside)
    assert (stats.snapshot()["requests"], stats.snapshot()["total_cost"]) == (2, 0.4)


def test_a_record_without_a_price_has_its_cost_in_no_total_whatever_it_says(tmp_path: Path) -> None:
    # Another writer's record that says "priced": false beside a cost: the reports count it unpriced, its
    # cost in no total; /health counted it unpriced and added its cost as well.
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(timedelta(minutes=2), total_cost=0.2)
        + line(timedelta(minutes=1), model="my-ft", total_cost=0.5, priced=False)
    )
    snapshot = totals(path).snapshot()
    assert (snapshot["requests"], snapshot["unpriced_requests"], snapshot["total_cost"]) == (2, 1, 0.2)
    assert snapshot["model_costs"] == {"openai/gpt-4o": 0.2}


def test_a_cost_without_a_model_is_the_providers_none_model(tmp_path: Path) -> None:
    # Another writer's priced record without a model: the reports name it openai/(none); /health had
    # openai/None, which names no model the records have.
    path = tmp_path / "r.jsonl"
    path.write_bytes(line(timedelta(minutes=1), model=None, total_cost=0.2))
    assert totals(path).snapshot()["model_costs"] == {"openai/(none)": 0.2}
