import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import orjson
import pytest

from proxy.records import CostRecord, RecordWriter, is_record_time, record_time


def record(n: int) -> CostRecord:
    return {
        "timestamp": "2026-11-23T10:30:00.000000Z",
        "request_id": f"r{n}",
        "user_id": "anonymous",
        "ip_address": "127.0.0.1",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "is_streaming": False,
        "input_tokens": n,
        "output_tokens": 1,
        "total_tokens": n + 1,
        "input_cost": 0.1,
        "output_cost": 0.2,
        "total_cost": 0.30000000000000004,
        "finish_reason": "stop",
        "v": 1,
        "response_model": None,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "currency": "USD",
        "priced": True,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
        "duration_ms": 1.5,
        "ttfb_ms": 1.0,
        "proxy_request_id": f"p{n}",
        "session_id": None,
        "task_type": None,
        "provider_reported_cost": None,
        "price": {
            "input": 2.5,
            "output": 10.0,
            "cached_input": 1.25,
            "cache_write": 2.5,
            "tier": None,
            "cache_write_1h": 2.5,
        },
        "cache_write_1h_tokens": 0,
    }


def test_one_line_per_record_in_the_contract_field_order(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "nested" / "records.jsonl")
    writer.open()
    writer.append(record(1))
    writer.append(record(2))
    writer.close()
    lines = (tmp_path / "nested" / "records.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == ["r1", "r2"]
    assert list(orjson.loads(lines[0])) == list(record(1))
    assert orjson.loads(lines[0])["total_cost"] == 0.30000000000000004


def test_a_torn_last_line_is_closed_before_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(orjson.dumps(record(1)) + b"\n" + b'{"timestamp": "2026-11-23T1')
    writer = RecordWriter(path)
    writer.open()
    writer.append(record(2))
    writer.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    assert orjson.loads(lines[2])["request_id"] == "r2"
    assert lines[1].startswith(b'{"timestamp": "2026-11-23T1{')  # joined by r2's first write


def test_two_writers_on_one_file_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    first, second = RecordWriter(path), RecordWriter(path)
    first.open()
    second.open()
    for n in range(200):
        (first if n % 2 else second).append(record(n))
    first.close()
    second.close()
    assert sorted(orjson.loads(line)["input_tokens"] for line in path.read_bytes().splitlines()) == list(
        range(200)
    )


def test_write_error_drops_to_stderr_and_recovers(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    writer = RecordWriter(blocker / "records.jsonl")
    writer.open()
    writer.append(record(3))
    assert writer.dropped == 1
    assert writer.problem is not None
    assert '{"dropped_record": {' in capfd.readouterr().err
    blocker.unlink()
    writer.append(record(4))
    writer.close()
    assert writer.problem is None
    assert orjson.loads((blocker / "records.jsonl").read_bytes())["request_id"] == "r4"


def looking_writer(path: Path) -> RecordWriter:
    """A writer at `path` that looks for a rotation at every record, its first record written."""
    writer = RecordWriter(path)
    writer.LOOK_SECONDS = 0.0
    writer.open()
    writer.append(record(1))
    return writer


def test_a_file_moved_away_is_followed_by_a_new_one_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writer = looking_writer(path)
    moved = path.rename(tmp_path / "records.jsonl.1")  # logrotate's default (create)
    writer.append(record(2))
    path.unlink()  # deleted: started again as well
    writer.append(record(3))
    writer.close()

    assert [orjson.loads(line)["request_id"] for line in moved.read_bytes().splitlines()] == ["r1"]
    assert [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()] == ["r3"]
    assert (writer.dropped, writer.problem) == (0, None)


def test_a_file_moved_where_no_new_one_can_be_opened_keeps_its_records_and_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    path = folder / "records.jsonl"
    writer = looking_writer(path)
    folder.rename(tmp_path / "old-logs")
    folder.write_bytes(b"")  # a file where the folder was: nothing can be opened at path
    writer.append(record(2))

    assert writer.check() == (
        f"cost-tracking file {path} was moved or deleted while the proxy runs, and no new one can be "
        "opened there (File exists): records still go to the old file"
    )
    writer.close()
    moved = tmp_path / "old-logs" / "records.jsonl"
    assert [orjson.loads(line)["request_id"] for line in moved.read_bytes().splitlines()] == ["r1", "r2"]
    assert writer.dropped == 0


def test_a_file_deleted_where_no_new_one_can_be_opened_drops_its_records_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "logs"
    path = folder / "records.jsonl"
    writer = looking_writer(path)
    shutil.rmtree(folder)
    folder.write_bytes(b"")  # a file where the folder was: nothing can be opened at path
    writer.append(record(2))  # went on to the deleted file, where no reader finds it
    assert writer.check() == f"cannot write cost-tracking file {path}: File exists"
    assert writer.dropped == 1
    assert '{"dropped_record": {' in capfd.readouterr().err
    folder.unlink()
    writer.append(record(3))
    writer.close()
    assert [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()] == ["r3"]
    assert (writer.dropped, writer.problem) == (1, None)


class _ClosedPipe:
    def write(self, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class _GoneStderr:
    buffer = _ClosedPipe()

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_record_neither_the_file_nor_stderr_takes_is_counted_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", _GoneStderr())
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    writer = RecordWriter(blocker / "records.jsonl")
    writer.open()
    writer.append(record(3))
    assert (writer.dropped, writer.problem is not None) == (1, True)
    blocker.unlink()
    writer.append(record(4))
    writer.close()
    assert orjson.loads((blocker / "records.jsonl").read_bytes())["request_id"] == "r4"


def test_a_record_orjson_cannot_write_goes_whole_to_stderr_and_the_log_says_so(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records.jsonl"
    writer = RecordWriter(path)
    writer.open()
    writer.append({**record(1), "input_tokens": 2**64})  # over the 64 bits orjson writes
    writer.append(record(2))
    writer.close()

    assert writer.dropped == 1
    [line] = capfd.readouterr().err.splitlines()
    assert json.loads(line) == {"dropped_record": {**record(1), "input_tokens": 18446744073709551616}}
    assert [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()] == ["r2"]
    assert "the record of p1 cannot be written" in caplog.text


@pytest.mark.parametrize(
    ("stamp", "is_time"),
    [
        ("2026-11-23T10:30:00.123456Z", True),
        ("2026-11-23T10:30:00+02:00", True),
        ("9999-12-31T23:59:59.999999Z", True),
        ("9999-12-31T23:00:00-05:00", False),  # the year 10000 in UTC
        ("0001-01-01T00:30:00+01:00", False),  # the year 0 in UTC
        ("yesterday", False),
        ("2026-13-45T99:99:99Z", False),
        ("2026-02-30T10:00:00.000000Z", False),
        ("", False),
    ],
)
def test_a_record_time_is_an_iso_time(stamp: str, is_time: bool) -> None:
    assert is_record_time(stamp) is is_time


@pytest.mark.parametrize(
    ("stamp", "utc"),
    [
        ("2026-11-23T10:30:00.123456Z", "2026-11-23T10:30:00.123456Z"),
        ("2026-11-01T01:30:00-05:00", "2026-11-01T06:30:00.000000Z"),
        ("2026-11-01T01:30:00.5+00:00", "2026-11-01T01:30:00.500000Z"),
        ("2026-11-23T10:30:00Z", "2026-11-23T10:30:00.000000Z"),
        ("2026-11-23 10:30:00.123456Z", "2026-11-23T10:30:00.123456Z"),
        ("2026-11-23T10:30:00", "2026-11-23T10:30:00.000000Z"),  # no zone: UTC
        ("0086-01-01T00:30:00+01:00", "0085-12-31T23:30:00.000000Z"),
        ("9999-12-31T23:00:00-05:00", None),
        ("yesterday", None),
    ],
)
def test_a_record_time_in_the_record_format_is_utc(stamp: str, utc: str | None) -> None:
    assert record_time(stamp) == utc


def test_a_line_another_writer_left_torn_is_closed_before_the_next_record(tmp_path: Path) -> None:
    # Workers share the file: one killed inside its write (or stopped by a full disk) leaves its line
    # torn while another, whose file is open, goes on writing.
    path = tmp_path / "records.jsonl"
    writer = RecordWriter(path)
    writer.open()
    writer.append(record(1))
    with open(path, "ab") as other:
        other.write(b'{"timestamp": "2026-11-23T1')
    writer.append(record(2))
    writer.append(record(3))
    writer.close()
    first, torn, *rest = path.read_bytes().splitlines()
    # The next record joined the torn line, which stays unreadable, and was written again on its own.
    assert torn.startswith(b'{"timestamp": "2026-11-23T1{')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(torn)
    assert [orjson.loads(line)["request_id"] for line in (first, *rest)] == ["r1", "r2", "r3"]


def _append_many(path: Path, tag: str, count: int) -> None:
    writer = RecordWriter(path)
    writer.open()
    for n in range(count):
        # Records over several pages: a write of one is long enough for another writer to look at the
        # file while it is under way.
        writer.append({**record(n), "request_id": f"{tag}{n}", "task_type": "x" * 20_000})
    writer.close()


def test_writers_in_several_processes_leave_no_blank_line_and_every_record_once(tmp_path: Path) -> None:
    # Workers are processes: one looks at the file's end while another's write is under way, and the
    # file's size then grows page by page, so the byte before that size is inside the other's record.
    path = tmp_path / "records.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, tag, 300)) for tag in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    assert sorted(orjson.loads(line)["request_id"] for line in lines) == sorted(
        f"{tag}{n}" for tag in "ab" for n in range(300)
    )
