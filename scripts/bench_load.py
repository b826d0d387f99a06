"""Load and probes for the benchmark: wrk runs, process-tree RSS and CPU, TTFB and exact-count clients."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

_TICKS = os.sysconf("SC_CLK_TCK")

# wrk's done() hook prints one JSON line; parsing it beats scraping wrk's human-readable summary.
_LUA = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d,"p50_us":%%.1f,"p99_us":%%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Endpoint:
    """Where a target takes one kind of call: full URL and the JSON body posted to it."""

    url: str
    body: str


@dataclass(frozen=True)
class WrkResult:
    requests: int
    ok: int  # responses with a 2xx/3xx status
    non_2xx: int
    socket_errors: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None


def run_wrk(endpoint: Endpoint, connections: int, duration_s: float, workdir: Path, cpus: str) -> WrkResult:
    """One wrk run (one thread, pinned to `cpus`); raises if wrk fails or prints no summary."""
    script = workdir / "wrk-call.lua"
    script.write_text(_LUA % endpoint.body)
    wrk = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "30s", "-s", str(script)]
    cmd = ["taskset", "-c", cpus, *wrk, endpoint.url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary for {endpoint.url}: {done.stdout}{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH "))
    requests = int(raw["requests"])
    latency = requests > 0  # with no response at all, wrk's percentiles are zeros, not latencies
    return WrkResult(
        requests=requests,
        ok=requests - int(raw["status"]),
        non_2xx=int(raw["status"]),
        socket_errors=sum(int(raw[k]) for k in ("connect", "read", "write", "timeout")),
        rps=requests / (int(raw["duration_us"]) / 1e6),
        p50_ms=float(raw["p50_us"]) / 1000 if latency else None,
        p99_ms=float(raw["p99_us"]) / 1000 if latency else None,
    )


class TreeSampler:
    """Samples the summed RSS of a process tree in a background thread, and reads its CPU time (/proc)."""

    def __init__(self, root_pid: int, interval_s: float = 0.2) -> None:
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak_tree_kb = 0
        self.peak_process_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        """The tree's RSS now, in kB; also updates the peaks."""
        sizes = [_rss_kb(pid) for pid in _tree(self.root_pid)]
        tree = sum(sizes)
        self.peak_tree_kb = max(self.peak_tree_kb, tree)
        self.peak_process_kb = max([self.peak_process_kb, *sizes])
        return tree

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the processes in the tree now."""
        return sum(_cpu_ticks(pid) for pid in _tree(self.root_pid)) / _TICKS

    def wait_idle(self, share: float = 0.05, limit_s: float = 60.0) -> None:
        """Wait until the tree uses less than `share` of a core (the calls in flight are done)."""
        deadline = time.monotonic() + limit_s
        used = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            used, before = self.cpu_seconds(), used
            if used - before < share * 0.25:
                return

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def core_busy_seconds(core: int) -> float:
    """CPU time one core has spent on anything but idling, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in line.split()[1:8])
            return (user + nice + system + irq + softirq) / _TICKS
    raise ValueError(f"no cpu{core} in /proc/stat")


def busy_share(cores: list[int], seconds: float) -> float:
    """How busy these cores are over `seconds`, from 0 to 1: is the machine quiet enough to measure?"""
    before = sum(core_busy_seconds(c) for c in cores)
    time.sleep(seconds)
    return (sum(core_busy_seconds(c) for c in cores) - before) / (seconds * len(cores))


def wait_quiet(cores: list[int], share: float, limit_s: float) -> float:
    """Wait (up to `limit_s`) until the cores are less than `share` busy; return the last share seen.

    On a shared machine other work comes and goes; starting each run in a quiet moment keeps it out
    of most runs, and the run's other% column shows what still got in."""
    deadline = time.monotonic() + limit_s
    seen = busy_share(cores, 0.5)
    while seen >= share and time.monotonic() < deadline:
        seen = busy_share(cores, 0.5)
    return seen


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass  # the process ended between listing and reading
    return 0


@dataclass(frozen=True)
class StreamTiming:
    ttfb_ms: float  # request sent -> first body byte
    total_ms: float  # request sent -> end of stream


async def time_streams(endpoints: list[Endpoint], rounds: int) -> list[list[StreamTiming]]:
    """Sequential streamed calls taking turns between the endpoints, one kept-alive connection each.

    Taking turns pairs each call with its neighbours in time, so load from elsewhere on the machine
    shifts both sides alike. One unmeasured warm-up call per endpoint comes first.
    """
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    timings: list[list[StreamTiming]] = [[] for _ in endpoints]
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), headers=headers) for _ in endpoints
    ]
    try:
        for i in range(rounds + 1):
            for session, endpoint, found in zip(sessions, endpoints, timings, strict=True):
                start = time.perf_counter()
                async with session.post(endpoint.url, data=endpoint.body) as response:
                    response.raise_for_status()
                    await response.content.readany()
                    first = time.perf_counter()
                    await response.read()
                    end = time.perf_counter()
                if i:
                    found.append(StreamTiming((first - start) * 1000, (end - start) * 1000))
    finally:
        for session in sessions:
            await session.close()
    return timings


async def count_successes(endpoints: list[Endpoint], calls_each: int, concurrency: int) -> int:
    """Make exactly `calls_each` calls to each endpoint, `concurrency` at a time; return how many got 200."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    gate = asyncio.Semaphore(concurrency)

    async def call(session: aiohttp.ClientSession, endpoint: Endpoint) -> bool:
        async with gate, session.post(endpoint.url, data=endpoint.body) as response:
            await response.read()
            return response.status == 200

    async with aiohttp.ClientSession(headers=headers) as session:
        calls = [call(session, e) for e in endpoints for _ in range(calls_each)]
        return sum(await asyncio.gather(*calls))
