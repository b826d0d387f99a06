import json
import logging
from pathlib import Path

import pytest

from proxy import calls
from proxy.calls import Call
from proxy.configfile import parse_config
from proxy.ledger import UNPRICED_KEPT, Ledger
from proxy.records import RecordWriter
from proxy.routing import NAME_SHOWN

CONFIG = json.dumps(
    {
        "providers": {
            "p": {
                "base_url": "http://upstream.invalid/v1",
                "models": {"m": {"pricing": {"input": 2, "output": 8}}},
            }
        }
    }
)


def answered(model: str) -> Call:
    provider = parse_config(CONFIG, {}).providers["p"]
    call = Call("id", 0.0, 0.0, provider, model, "chat", False, "user", {})
    call.sent, call.status = True, 200
    call.body = b'{"id":"c1","usage":{"prompt_tokens":1000,"completion_tokens":100}}'
    return call


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_call_is_recorded_once_however_often_it_is_accounted(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "r.jsonl")
    ledger, call = Ledger(enabled=True), answered("m")

    ledger.account(writer, call)
    ledger.account(writer, call)

    (record,) = lines(writer.path)
    # 1000 * 2 / 1M + 100 * 8 / 1M
    assert (record["request_id"], record["input_cost"], record["output_cost"]) == ("c1", 0.002, 0.0008)


def test_a_call_whose_answer_cannot_be_read_is_recorded_without_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug in reading or pricing an answer: the call is still recorded, its usage unknown (costs null,
    # never 0), and the log says why, once.
    def broken(body: bytes, api: str) -> None:
        raise RuntimeError("a bug in reading usage")

    monkeypatch.setattr(calls, "facts_from_body", broken)
    writer, ledger, call = RecordWriter(tmp_path / "r.jsonl"), Ledger(enabled=True), answered("m")
    with caplog.at_level(logging.ERROR, logger="meterproxy"):
        ledger.account(writer, call)

    (record,) = lines(writer.path)
    assert (record["status_code"], record["error"], record["usage_source"]) == (200, None, "none")
    assert (record["input_tokens"], record["total_cost"], record["priced"]) == (0, None, True)
    (entry,) = caplog.records
    assert entry.getMessage() == (
        "the answer of id could not be read for its usage: it is recorded without usage"
    )
    assert entry.exc_info is not None and str(entry.exc_info[1]) == "a bug in reading usage"


def test_without_cost_tracking_nothing_is_written(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "r.jsonl")
    Ledger(enabled=False).account(writer, answered("m"))
    assert not writer.path.exists()


def test_an_unpriced_model_is_warned_of_once_by_a_bounded_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer, ledger = RecordWriter(tmp_path / "r.jsonl"), Ledger(enabled=True)
    long_name = "x" * (NAME_SHOWN + 50)
    with caplog.at_level(logging.WARNING, logger="meterproxy"):
        for model in ("other", "other", long_name):
            ledger.account(writer, answered(model))

    warnings = [entry.getMessage() for entry in caplog.records if "no price" in entry.getMessage()]
    assert len(warnings) == 2
    assert "'other'" in warnings[0] and "x" * NAME_SHOWN + "..." in warnings[1]
    assert long_name not in warnings[1]
    assert [record["model"] for record in lines(writer.path)] == ["other", "other", long_name]


def test_the_models_warned_of_are_forgotten_past_a_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer, ledger = RecordWriter(tmp_path / "r.jsonl"), Ledger(enabled=True)
    with caplog.at_level(logging.WARNING, logger="meterproxy"):
        for number in range(UNPRICED_KEPT + 1):
            ledger.account(writer, answered(f"model-{number}"))
        ledger.account(writer, answered("model-0"))  # forgotten when the bound was reached: warned again

    warned = [entry.getMessage() for entry in caplog.records if "no price" in entry.getMessage()]
    assert len(warned) == UNPRICED_KEPT + 2
