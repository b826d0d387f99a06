"""The server log of the real proxy: every line in uvicorn's shape, with one worker or several."""

from __future__ import annotations

import re

import pytest
from conftest import MakeConfig, ProxyLauncher, wait_until
from upstream_stub import Reply, UpstreamStub

from proxy import __version__

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
