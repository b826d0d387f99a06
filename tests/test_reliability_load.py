"""Issue 6, load: counter parity at 1,000 concurrent calls (1), a soak with client disconnects (17),
overload against a capped upstream pool (18). The real proxy under uvicorn, a scripted stub behind it.

The soak is marked heavy: by default it runs in a short form; METERPROXY_SOAK_CALLS=200000 runs it in
full (docs/reliability.md). Counts and bytes are asserted exactly; times only with a margin.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    CLIENT_KEY,
    MakeConfig,
    ProxyLauncher,
    RunningProxy,
    health_totals,
    recount,
    settled,
    wait_until,
)
from upstream_stub import SSE_DONE, Reply, Script, SeenRequest, Stream, UpstreamStub, sse

from proxy.records import CostRecord

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
HELLO = [{"role": "user", "content": "Say hello"}]
SLACK = 4.0  # seconds added to a time bound of the issue before a test fails on it


def chunk(content: str, finish: str | None = None) -> bytes:
    return sse(
        {
            "id": "chatcmpl-l",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    )


def usage(prompt: int, output: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def streamed(prompt: int, output: int, **options: Any) -> Stream:
    """A chat stream whose usage comes in its own chunk at the end, as OpenAI sends it when asked."""
    usage_only = sse(
        {"id": "chatcmpl-l", "model": "gpt-4o-mini-2024-07-18", "choices": [], "usage": usage(prompt, output)}
    )
    return Stream([chunk("Hel"), chunk("lo"), chunk("", "stop"), usage_only, SSE_DONE], **options)


def whole(prompt: int, output: int) -> Reply:
    body = {
        "id": "chatcmpl-w",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": usage(prompt, output),
    }
    return Reply(body=json.dumps(body).encode())


def file_lines(path: Path) -> tuple[list[CostRecord], int, bytes]:
    """The records of a file, how many of its whole lines are not records, and its unfinished tail."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    records: list[CostRecord] = []
    unparsable = 0
    for line in data[:cut].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            unparsable += 1
    return records, unparsable, data[cut:]


# --- 1. Counter parity -------------------------------------------------------------------------------


def test_counter_parity_at_a_thousand_concurrent_calls_half_of_them_streamed(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    calls = 1000
    sent: list[tuple[int, int]] = []
    lock = threading.Lock()

    def respond(seen: SeenRequest) -> Script:
        number = int(seen.header("x-call") or 0)
        prompt, output = 10 + number % 97, 1 + number % 13
        with lock:
            sent.append((prompt, output))
        return streamed(prompt, output) if seen.json().get("stream") else whole(prompt, output)

    stub.always(respond)

    async def call(session: aiohttp.ClientSession, number: int) -> tuple[int, str, bytes]:
        payload = {"model": "gpt-4o-mini", "messages": HELLO, "stream": number % 2 == 0}
        headers = {**AUTH, "x-call": str(number)}
        async with session.post(
            f"{proxy.url}/v1/chat/completions", json=payload, headers=headers
        ) as response:
            return response.status, response.headers["x-meterproxy-request-id"], await response.read()

    async def all_at_once() -> list[tuple[int, str, bytes]]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            return await asyncio.gather(*(call(session, number) for number in range(calls)))

    answers = asyncio.run(all_at_once())

    assert [status for status, _, _ in answers] == [200] * calls
    assert all(body.endswith(SSE_DONE) for _, _, body in answers[::2]), "a stream did not end"
    proxy.wait_records(calls, timeout=60)
    records, unparsable, tail = file_lines(proxy.records_path)
    assert (len(records), unparsable, tail) == (calls, 0, b"")
    ids = {record["proxy_request_id"] for record in records}
    assert ids == {request_id for _, request_id, _ in answers} and len(ids) == calls
    assert sum(record["input_tokens"] for record in records) == sum(prompt for prompt, _ in sent)
    assert sum(record["output_tokens"] for record in records) == sum(output for _, output in sent)
    assert sum(record["is_streaming"] for record in records) == calls // 2
    health = proxy.health()
    assert health["dropped_records"] == 0
    assert health_totals(health) == recount(records)


# --- 17. Soak ----------------------------------------------------------------------------------------


@pytest.mark.heavy
def test_soak_with_one_call_in_ten_abandoned_leaks_no_memory_socket_or_record(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    calls = int(os.environ.get("METERPROXY_SOAK_CALLS", "2000"))
    warm_up = max(calls // 10, 200)
    workers = 32
    stub.keep_requests = False

    def respond(seen: SeenRequest) -> Script:
        if seen.header("x-leave"):
            return streamed(12, 3, hold_after=2)  # held open until the client leaves
        return streamed(12, 3) if seen.json().get("stream") else whole(12, 3)

    stub.always(respond)
    probe = proxy.probe()

    def open_to_clients() -> int:
        """The proxy's sockets that are not its upstream connections: its listener and its clients."""
        return probe.sockets() - stub.open_connections

    async def call(session: aiohttp.ClientSession, number: int) -> bool:
        leave = number % 10 == 5
        payload = {"model": "gpt-4o-mini", "messages": HELLO, "stream": leave or number % 2 == 0}
        headers = {**AUTH, "x-leave": "1"} if leave else AUTH
        async with session.post(
            f"{proxy.url}/v1/chat/completions", json=payload, headers=headers
        ) as response:
            assert response.status == 200
            if leave:
                await response.content.readuntil(b"\n\n")  # the first event: the call is under way
                response.close()  # and the client goes
                return False
            await response.read()
            return True

    async def run(first: int, last: int) -> int:
        numbers = iter(range(first, last))
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

            async def worker() -> int:
                return sum([await call(session, number) for number in numbers])

            return sum(await asyncio.gather(*(worker() for _ in range(workers))))

    started = time.monotonic()
    asyncio.run(run(0, warm_up))
    proxy.wait_records(warm_up, timeout=60)
    rss_warm = probe.rss_kib()
    clients_warm = settled(open_to_clients)
    asyncio.run(run(warm_up, calls))
    records = proxy.wait_records(calls, timeout=120)
    took = time.monotonic() - started
    rss_end = probe.rss_kib()
    print(
        f"\n[case 17] {calls} calls in {took:.0f} s: RSS {rss_warm} KiB after warm-up, "
        f"{rss_end} KiB at the end ({(rss_end - rss_warm) / rss_warm:+.1%})"
    )

    assert len(records) == calls
    left = sum(1 for number in range(calls) if number % 10 == 5)
    assert Counter(record["error"] for record in records) == {"client_disconnected": left, None: calls - left}
    assert rss_end < rss_warm * 1.10
    wait_until(
        lambda: open_to_clients() <= clients_warm, "the client sockets to be back to their baseline", 30
    )
    assert stub.open_connections <= workers  # upstream connections kept for reuse, no more


# --- 18. Overload -------------------------------------------------------------------------------------


def test_overload_gets_the_excess_over_the_upstream_pool_a_quick_503_and_records_every_call(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    pool, pool_timeout, calls = 100, 2, 2000
    proxy = launch(make_config(server={"upstream_pool_size": pool, "pool_timeout_seconds": pool_timeout}))
    gate = threading.Event()
    stub.always(streamed(10, 2, hold_after=2, gate=gate))

    async def call(session: aiohttp.ClientSession) -> tuple[int, float, bytes]:
        payload = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
        started = time.monotonic()
        async with session.post(f"{proxy.url}/v1/chat/completions", json=payload, headers=AUTH) as response:
            answered = time.monotonic() - started
            if response.status != 200:
                return response.status, answered, await response.read()
            await response.content.readuntil(b"\n\n")
            await asyncio.to_thread(gate.wait, 120)  # held until every other call has its answer
            return response.status, answered, await response.read()

    async def overload() -> list[tuple[int, float, bytes]]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            tasks = [asyncio.ensure_future(call(session)) for _ in range(calls)]
            while sum(task.done() for task in tasks) < calls - pool:
                await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    answers = asyncio.run(overload())
    refused = [(answered, body) for status, answered, body in answers if status == 503]
    slowest = max(answered for answered, _ in refused)
    print(
        f"\n[case 18] {calls} streams, pool {pool}, pool timeout {pool_timeout} s: "
        f"slowest 503 after {slowest:.2f} s"
    )

    assert sorted({status for status, _, _ in answers}) == [200, 503]
    assert len(refused) == calls - pool
    assert all(json.loads(body)["error"]["code"] == "pool_timeout" for _, body in refused)
    assert slowest < pool_timeout + SLACK
    assert all(body.endswith(SSE_DONE) for status, _, body in answers if status == 200)
    assert stub.request_count == pool
    records = proxy.wait_records(calls, timeout=60)
    assert len(records) == calls
    assert sorted((record["status_code"], record["error"]) for record in records) == sorted(
        [(200, None)] * pool + [(503, "pool_timeout")] * (calls - pool)
    )
    assert {record["total_cost"] for record in records if record["error"] == "pool_timeout"} == {0.0}
