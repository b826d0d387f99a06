"""The server log of the real proxy: every line in uvicorn's shape, with one worker or several, and an
answer cut short on purpose told in one line, not as uvicorn's error."""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import re
import signal
import socket

import pytest
from conftest import WAIT_SECONDS, MakeConfig, ProxyLauncher, RunningProxy, read_records, wait_until
from upstream_stub import Reply, Stream, UpstreamStub
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from proxy import __version__
from proxy.serverlog import INCOMPLETE, CutAnswers, mark_cut

HELLO = [{"role": "user", "content": "hello"}]
# uvicorn's shape: the level and a colon, padded to 9 characters, a space, then the message.
LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):(?P<pad> +)(?P<message>\S.*)")


def shape(log: str) -> list[str]:
    """The log's lines that are not in uvicorn's shape (a dropped record's JSON line is in its own)."""
    wrong = []
    for line in log.splitlines():
        if line.startswith('{"dropped_record": '):
            continue
        found = LINE.fullmatch(line)
        if found is None or len(found[1]) + 1 + len(found["pad"]) != 10:
            wrong.append(line)
    return wrong


@pytest.mark.parametrize("workers", [1, 2])
def test_every_line_has_its_level_once_with_any_number_of_workers(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, workers: int
) -> None:
    # Logged "WARNING:     WARNING: ..." at start-up; with --workers 2 a worker's warning had no level.
    proxy = launch(make_config(providers={"openai": {"currency": "CNY"}}), workers=workers)
    wait_until(lambda: proxy.log().count("Application startup complete.") == workers, "every worker to start")
    stub.push(Reply(body=b'{"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}'))
    answer = proxy.post_json("/openai/v1/chat/completions", {"model": "mystery", "messages": HELLO})
    assert answer.status == 200

    log = proxy.wait_log("no price for model 'mystery'")
    assert shape(log) == []
    log = "\n" + log  # a newline before every line
    assert "\nWARNING:  providers.openai.currency is CNY, which exchange_rates has no rate for: " in log
    assert "\nWARNING:  no price for model 'mystery' of provider 'openai'" in log
    assert f"\nINFO:     meterproxy {__version__} on http://127.0.0.1:" in log


CHUNK = b'data: {"choices": []}\n\n'
CUT_LINE = (
    "POST /openai/v1/chat/completions -> openai: {why}; its answer is cut short (error {error}, call {call})"
)


def open_stream(proxy: RunningProxy) -> socket.socket:
    """A streamed call on a connection of its own, once its answer's head has arrived."""
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True}).encode()
    connection = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT_SECONDS)
    connection.sendall(
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
    return connection


def naming(log: str, call: str) -> list[str]:
    return [line for line in log.splitlines() if call in line]


def test_a_stream_its_provider_breaks_off_is_one_line_naming_the_call_not_an_error(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # uvicorn logged "ERROR:    ASGI callable returned without completing response." after it.
    stub.push(Stream([CHUNK] * 3, cut_after=1))
    with open_stream(proxy) as connection:
        while connection.recv(65536):  # until the proxy closes it, having logged all it logs of the call
            pass

    call = proxy.wait_records(1)[0]["proxy_request_id"]
    log = proxy.log()
    why = "the provider closed the connection mid-response"
    assert naming(log, call) == ["WARNING:  " + CUT_LINE.format(why=why, error="upstream_reset", call=call)]
    assert INCOMPLETE not in log


def test_a_stream_a_stop_cuts_is_one_line_naming_the_call_not_an_error(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(make_config(server={"drain_seconds": 1}))
    stub.push(Stream([CHUNK] * 3, hold_after=1))
    with open_stream(proxy):
        assert proxy.stop() in (0, -signal.SIGTERM)

    call = read_records(proxy.records_path)[0]["proxy_request_id"]
    log = proxy.log_path.read_text(encoding="utf-8")
    why = "the proxy is stopping"
    assert naming(log, call) == ["WARNING:  " + CUT_LINE.format(why=why, error="shutdown", call=call)]
    assert INCOMPLETE not in log


def test_a_stream_its_client_leaves_is_one_line_naming_the_call(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream([CHUNK] * 3, hold_after=1))
    open_stream(proxy).close()

    call = proxy.wait_records(1)[0]["proxy_request_id"]
    log = proxy.wait_log(f"call {call})")
    why = "the client went away"
    assert naming(log, call) == [
        "INFO:     " + CUT_LINE.format(why=why, error="client_disconnected", call=call)
    ]


def test_an_incomplete_response_the_meter_did_not_cut_is_still_uvicorns_error() -> None:
    assert INCOMPLETE in inspect.getsource(RequestResponseCycle.run_asgi)  # the line it would drop
    cuts = CutAnswers()
    incomplete = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 0, INCOMPLETE, None, None)
    crash = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 0, "Exception in ASGI application\n", None, None
    )

    def after_a_cut() -> list[bool]:
        mark_cut()
        return [cuts.filter(incomplete), cuts.filter(crash)]

    assert cuts.filter(incomplete)
    assert contextvars.copy_context().run(after_a_cut) == [False, True]
    assert cuts.filter(incomplete)  # a cut is its own call's, not the next one's
