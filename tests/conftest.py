"""Integration fixtures: the upstream stub, a config.yml writer, and the real proxy as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import pytest
from openai import OpenAI
from upstream_stub import UpstreamStub

from proxy.records import CostRecord, PriceApplied
from proxy.upstream import Headers, Upstream, UpstreamError, UpstreamResponse

REPO_ROOT = Path(__file__).resolve().parent.parent
START_DEADLINE_SECONDS = 30.0
WAIT_SECONDS = 10.0
CLIENT_KEY = "sk-test"
MISSING = "<missing>"  # what `pick` shows for a field the record lacks

# Prices per 1M tokens that tests compute expected costs from.
GPT_4O = {"input": 2.50, "output": 10.00, "cached_input": 1.25}
GPT_4O_MINI = {"input": 0.15, "output": 0.60}

MakeConfig = Callable[..., Path]
C = TypeVar("C", bound=Upstream)
T = TypeVar("T")


def free_port() -> int:
    """A loopback port that nothing listens on (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, mapping into mapping; any other value replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def base_config(stub: UpstreamStub) -> dict[str, Any]:
    """One provider, `openai`, served by the stub, with gpt-4o and gpt-4o-mini priced."""
    return {
        "server": {"host": "127.0.0.1", "port": 9002},
        "currency": "USD",
        "features": {"cost_tracking": {"enabled": True}},
        "providers": {
            "openai": {
                "base_url": stub.base_url,
                "models": {"gpt-4o": {"pricing": GPT_4O}, "gpt-4o-mini": {"pricing": GPT_4O_MINI}},
            }
        },
    }


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


def read_records(path: Path) -> list[CostRecord]:
    """Every whole line of a cost-tracking file as a record; a line that is not JSON fails the test.

    A last line without its newline is still being written (one write() per record), so it is left out.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line]


def only(items: list[T]) -> T:
    """The one item of a list (a file's records, the requests the stub saw); fails the test if not one."""
    assert len(items) == 1, items
    return items[0]


def pick(record: Mapping[str, object], expected: Mapping[str, object]) -> dict[str, object]:
    """The record's values for the keys of `expected`, so one comparison shows every difference."""
    return {key: record.get(key, MISSING) for key in expected}


def price_of(record: CostRecord) -> PriceApplied:
    """The prices a record was computed at; fails the test for a record without them."""
    assert record["price"] is not None, record
    return record["price"]


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.02)


class ProcessProbe:
    """What Linux says about a running process (/proc): its open sockets, resident memory, bytes read."""

    def __init__(self, pid: int) -> None:
        self.root = Path(f"/proc/{pid}")
        if not (self.root / "io").exists():
            pytest.skip("needs Linux /proc/<pid>/io to look into the proxy process")

    def sockets(self) -> int:
        count = 0
        for fd in (self.root / "fd").iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except OSError:
                continue  # closed while we looked
        return count

    def rss_kib(self) -> int:
        for line in (self.root / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line in /proc/<pid>/status")

    def bytes_read(self) -> int:
        """Bytes the process has read with read() (sockets included): `rchar` of /proc/<pid>/io."""
        for line in (self.root / "io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar line in /proc/<pid>/io")


def settled(count: Callable[[], int]) -> int:
    """A count (of sockets, say) once it holds still for three looks: closing sockets take a moment to go."""
    counts = [count()]
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        time.sleep(0.1)
        counts.append(count())
        assert len(counts) < 100, f"the count never settled: {counts}"
    return counts[-1]


def recount(records: list[CostRecord]) -> dict[str, Any]:
    """The /health totals that a file of USD records must give (all of it within the last 24 hours)."""
    costs = [Decimal(repr(r["total_cost"])) for r in records if r["total_cost"] is not None]
    return {
        "requests": len(records),
        "errors": sum(1 for r in records if r["error"] is not None or r["status_code"] >= 400),
        "input_tokens": sum(r["input_tokens"] for r in records),
        "output_tokens": sum(r["output_tokens"] for r in records),
        "total_tokens": sum(r["total_tokens"] for r in records),
        "total_cost": float(sum(costs, Decimal(0))),
    }


def health_totals(health: dict[str, Any]) -> dict[str, Any]:
    """The part of /health that `recount` gives."""
    stats: dict[str, Any] = health["cost_stats_24h"]
    counts = ("requests", "errors", "input_tokens", "output_tokens", "total_tokens")
    return {key: stats[key] for key in counts} | {"total_cost": pytest.approx(stats["total_cost"], rel=1e-9)}


class RunningProxy:
    """The proxy as a subprocess: `python -m proxy serve` on a loopback port."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        records_path: Path,
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        self.process = process
        self.port = port
        self.records_path = records_path
        self.log_path = log_path
        self._log_file = log_file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = CLIENT_KEY, path: str = "/v1") -> OpenAI:
        """The official SDK pointed at the proxy (close it, or use it as a context manager)."""
        return OpenAI(base_url=f"{self.url}{path}", api_key=api_key, max_retries=0, timeout=30.0)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> RawResponse:
        """One raw HTTP call, its response body read whole (dechunked), bytes exactly as sent."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return RawResponse(response.status, response.getheaders(), response.read())
        finally:
            connection.close()

    def post_json(
        self,
        path: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        all_headers = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
        return self.request("POST", path, json.dumps(payload).encode(), {**all_headers, **(headers or {})})

    def health(self) -> dict[str, Any]:
        response = self.request("GET", "/health")
        assert response.status == 200, response.body
        health: dict[str, Any] = response.json()
        return health

    def records(self) -> list[CostRecord]:
        return read_records(self.records_path)

    def wait_records(self, count: int, timeout: float = WAIT_SECONDS) -> list[CostRecord]:
        """The records once at least `count` are in the file."""
        wait_until(
            lambda: len(self.records()) >= count, f"{count} records in {self.records_path.name}", timeout
        )
        return self.records()

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = WAIT_SECONDS) -> str:
        """The server log once `text` appears in it."""
        wait_until(lambda: text in self.log(), f"{text!r} in the server log", timeout)
        return self.log()

    def probe(self) -> ProcessProbe:
        return ProcessProbe(self.process.pid)

    def signal_group(self, sig: int) -> None:
        """Send `sig` to every process of the proxy (its workers too), as Ctrl-C in a terminal does."""
        os.killpg(self.process.pid, sig)

    def stop(self) -> int:
        """Stop the server as an operator would (SIGTERM) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log_file.close()
        return self.process.returncode


def _answers_health(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class ProxyLauncher:
    """Starts proxies for one test, all writing records to the same file; stops them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.records_path = tmp_path / "records.jsonl"
        self.started: list[RunningProxy] = []

    def __call__(
        self, config: Path | None, *, env: Mapping[str, str] | None = None, workers: int | None = None
    ) -> RunningProxy:
        """Start `proxy serve` and wait for /health; with config None, no --config is passed."""
        port = free_port()
        command = [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port)]
        if config is not None:
            command += ["--config", str(config)]
        if workers is not None:
            command += ["--workers", str(workers)]
        log_path = self.tmp_path / f"proxy-{len(self.started) + 1}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=proxy_env(self.records_path, env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as a terminal's Ctrl-C reaches it
        )
        running = RunningProxy(process, port, self.records_path, log_path, log_file)
        self.started.append(running)
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while not _answers_health(port):
            if process.poll() is not None:
                pytest.fail(f"the proxy exited with {process.returncode} at start-up:\n{running.log()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the proxy did not answer /health within {START_DEADLINE_SECONDS} s:\n{running.log()}"
                )
            time.sleep(0.1)
        return running

    def stop_all(self) -> None:
        for running in self.started:
            running.stop()


def proxy_env(records_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment, less anything that would steer the proxy, plus the records file."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("METERPROXY_CONFIG", "OPENAI_API_KEY") and not key.lower().endswith("_proxy")
    }
    env["COST_TRACKING_FILE"] = str(records_path)
    env.update(extra or {})
    return env


async def read_until(response: aiohttp.ClientResponse, expected: bytes, timeout: float) -> bytes:
    """Read a streamed body until it is `expected` long (each read within `timeout`); fail if it differs."""
    received = b""
    while len(received) < len(expected):
        data = await asyncio.wait_for(response.content.readany(), timeout)
        assert data, f"the stream ended after {received!r}"
        received += data
    assert received == expected
    return received


@pytest.fixture
def stub() -> Iterator[UpstreamStub]:
    with UpstreamStub() as server:
        yield server


@pytest.fixture
def make_config(tmp_path: Path, stub: UpstreamStub) -> MakeConfig:
    """Writes a config.yml: the base config (see `base_config`) with keyword overrides merged in."""
    written: list[Path] = []

    def write(**overrides: Any) -> Path:
        path = tmp_path / f"config-{len(written) + 1}.yml"
        # JSON is YAML: the file is exactly the data, with no emitter quirks in between.
        path.write_text(json.dumps(merge(base_config(stub), overrides), indent=2), encoding="utf-8")
        written.append(path)
        return path

    return write


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[ProxyLauncher]:
    launcher = ProxyLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def proxy(launch: ProxyLauncher, make_config: MakeConfig) -> RunningProxy:
    """The proxy on the base config."""
    return launch(make_config())


class Reads:
    """An upstream response read in exactly the pieces given (the `UpstreamResponse` protocol); reads that
    found the body over are counted. With `ends_known`, the read that brings the last piece ends the body
    (`ended()`), as the HTTP/1.1 client's does when the body's end comes with its last bytes; else only a
    read of b"" does. With `reset`, that read raises the provider's reset instead."""

    def __init__(
        self,
        pieces: list[bytes],
        status: int = 200,
        headers: Headers | None = None,
        ends_known: bool = False,
        reset: bool = False,
    ) -> None:
        self.status = status
        self.headers: Headers = headers or []
        self._pieces = iter(pieces)
        self._left = len(pieces)
        self._ends_known = ends_known
        self._reset = reset
        self.ends_read = 0
        self.released = False

    async def read(self) -> bytes:
        piece = next(self._pieces, b"")
        self._left -= bool(piece)
        self.ends_read += not piece
        if not piece and self._reset:
            raise UpstreamError("upstream_reset", 502, "the upstream closed the connection mid-stream")
        return piece

    def ended(self) -> bool:
        return self._ends_known and not self._left

    def close(self) -> None:
        pass

    def release(self) -> None:
        self.released = True


def run_client(make: Callable[[], C], work: Callable[[C], Awaitable[T]]) -> T:
    """`work` done with a new upstream client on an event loop of its own; the client closed after."""

    async def main() -> T:
        client = make()
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


async def read_all(response: UpstreamResponse) -> bytes:
    """An upstream response's body, read to its end."""
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


@contextlib.contextmanager
def answering(head: bytes, *later: bytes) -> Iterator[int]:
    """A loopback server that answers every request with `head`, then each of `later` in a write of its
    own a moment after the one before (so each arrives in a read of its own), and closes; its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(head)
                for data in later:
                    time.sleep(0.05)
                    connection.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way (Linux)
        server.close()
        thread.join(5)


@pytest.fixture
def bad_http_port() -> Iterator[int]:
    """A loopback server that answers every request with a head that is not HTTP, and closes."""
    with answering(b"HTTP/1.1 200 OK\r\nthis is not a header\r\ncontent-length: 2\r\n\r\n{}") as port:
        yield port
