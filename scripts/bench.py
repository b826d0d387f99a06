"""Side-by-side benchmark: the mock directly, nginx (the ceiling), meterproxy and, with --peers, LiteLLM.

Run from the checkout: `python scripts/bench.py [--peers] [--quick] [--duration SECONDS]`.
See docs/performance.md for what it measures and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bench_nginx
import bench_results
from bench_load import (
    Endpoint,
    TreeSampler,
    busy_share,
    core_busy_seconds,
    count_successes,
    run_wrk,
    time_streams,
    wait_quiet,
)
from bench_results import Kind, Row, TargetResult
from bench_targets import (
    MODEL,
    Server,
    ensure_litellm,
    ensure_tools,
    free_port,
    start_litellm,
    start_meterproxy,
    start_nginx,
)

REPO = Path(__file__).resolve().parent.parent
MODES = ("json", "stream")
TURNS = 6  # wrk runs of each side in the interleaved metering on / off measurement
CONNECTIONS = (1, 32, 128)
_CALL = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
BODY = json.dumps(_CALL, separators=(",", ":"))
STREAM_BODY = json.dumps({**_CALL, "stream": True}, separators=(",", ":"))
SOAK_LIMIT_S = 600.0
QUIET = 0.10  # a machine this busy (share of all cores) with nothing of ours running is quiet enough


@dataclass(frozen=True)
class Cpus:
    target: str  # the core each single-worker target is pinned to
    load: str  # the core shared by the mock and wrk
    all: str


@dataclass(frozen=True)
class Plan:
    """One target to measure: its row label, what it is and how it runs."""

    name: str
    kind: Kind
    workers: int | None
    cpus: str
    metering: bool | None = None
    client: str | None = None  # meterproxy's server.upstream_client, when not its default


@dataclass(frozen=True)
class Load:
    """How hard and how long each target is driven."""

    duration: float
    connections: tuple[int, ...]
    slow_calls: int  # sequential calls of the slow stream, for TTFB
    exact_calls: int  # calls per mode of the fixed-count records check
    quiet_wait: float  # seconds to wait, before each run, for other work on the machine to stop
    soak_calls: int  # calls one meterproxy worker serves in all, for the RSS growth figure


@dataclass(frozen=True)
class Bench:
    """What every target is started with."""

    workdir: Path
    mock: bench_nginx.MockPorts
    cpus: Cpus
    litellm: Path | None
    cores: list[int]


@dataclass(frozen=True)
class Launched:
    server: Server | None  # None: the mock itself is the target
    calls: dict[str, Endpoint]  # mode -> endpoint
    slow: Endpoint
    record_file: Path | None = None  # set when the target writes records


class RecordFile:
    """Counts the lines of a record file as it grows, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def settle(self, quiet_s: float = 0.5, limit_s: float = 15.0) -> int:
        """Wait until no record has arrived for `quiet_s` (calls in flight finish), then return the count."""
        deadline = time.monotonic() + limit_s
        last = -1
        while self._read() != last and time.monotonic() < deadline:
            last = self.lines
            time.sleep(quiet_s)
        return self.lines

    def records_from(self, offset: int) -> list[dict[str, object]]:
        """The records from `offset`; a line that is not one (blank, torn) is left out, so that the
        counts of lines and of records differ and the check that compares them fails, not the run."""
        with self.path.open("rb") as f:
            f.seek(offset)
            lines = f.read(self.offset - offset).splitlines()
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def _read(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            self.lines += data.count(b"\n", 0, end)
        return self.lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per run, 32 connections only")
    parser.add_argument(
        "--peers", action="store_true", help="also measure LiteLLM's proxy (installs it once)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="multi-worker rows (default: cores)"
    )
    parser.add_argument(
        "--results", type=Path, default=REPO / "bench" / "results", help="folder for the JSON"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other work on the machine to stop",
    )
    parser.add_argument("--litellm-venv", type=Path, default=REPO / "bench" / "scratch" / "litellm-venv")
    args = parser.parse_args(argv)
    if args.quick:
        load = Load(2.0, (32,), slow_calls=3, exact_calls=100, quiet_wait=args.quiet_wait, soak_calls=0)
    else:
        load = Load(args.duration, CONNECTIONS, 20, 1000, quiet_wait=args.quiet_wait, soak_calls=100_000)

    # Servers run in their own sessions: on SIGTERM unwind (and stop them) as on Ctrl-C.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    ensure_tools()
    cores = os.cpu_count() or 1
    cpus = Cpus("0", "1", f"0-{cores - 1}") if cores >= 2 else Cpus("0", "0", "0")
    # The orchestrator (and so wrk, the mock and the probes) stays off the target's core.
    os.sched_setaffinity(0, {int(cpus.load)})
    litellm = ensure_litellm(args.litellm_venv) if args.peers else None
    idle_busy = busy_share(list(range(cores)), 2.0)
    if idle_busy > 0.05:
        print(
            f"warning: the machine is {idle_busy:.0%} busy before the benchmark starts; expect noisy figures"
        )

    results: list[TargetResult] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="meterproxy-bench-") as tmp:
        workdir = Path(tmp)
        mock = bench_nginx.MockPorts(free_port(), free_port(), free_port())
        mock_server = start_nginx("mock", bench_nginx.mock_config(workdir, mock), workdir, cpus.load)
        try:
            mock_server.wait_ready(f"http://127.0.0.1:{mock.json}/v1/chat/completions", timeout_s=10)
            bench = Bench(workdir, mock, cpus, litellm, list(range(cores)))
            plans = _plans(args.workers, cpus, litellm is not None)
            for plan in plans:
                print(f"measuring {plan.name} ...", flush=True)
                result = TargetResult(
                    plan.name, plan.kind, plan.workers, plan.cpus, plan.metering, client=plan.client
                )
                try:
                    with _launch(plan, bench) as launched:
                        soak = plan.kind == "meterproxy" and plan.workers == 1 and bool(plan.metering)
                        soak = soak and plan.client is None
                        _measure(result, launched, bench, load, soak)
                except RuntimeError as exc:  # a target that will not start: report it, measure the rest
                    print(f"  skipped: {exc}", flush=True)
                    skipped[plan.name] = str(exc).splitlines()[0]
                    continue
                results.append(result)
            on, off = (_single_worker(plans, metering) for metering in (True, False))
            interleaved = _metering_cost(bench, load, on, off)
        finally:
            mock_server.stop()

    machine = bench_results.describe_machine(REPO, args.litellm_venv if args.peers else None)
    settings = {
        "duration_s": load.duration,
        "connections": list(load.connections),
        "workers": args.workers,
        "quick": args.quick,
        "cpus": asdict(cpus),
        "stream_events": bench_nginx.STREAM_EVENTS,
        "skipped": skipped,
        "busy_before_start": round(idle_busy, 3),
    }
    report = bench_results.build(results, machine, settings, interleaved)
    print(bench_results.render(report))
    stem = f"{datetime.date.today()}-{machine['slug']}{'-quick' if args.quick else ''}"
    out = args.results / f"{stem}.json"
    for again in itertools.count(2):  # a second run the same day does not overwrite the first
        if not out.exists():
            break
        out = args.results / f"{stem}-{again}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _plans(many: int, cpus: Cpus, peers: bool) -> list[Plan]:
    """The targets, in the order they are measured."""
    plans = [
        Plan("direct (mock)", "direct", None, cpus.load),
        Plan("nginx proxy_pass", "nginx", 1, cpus.target),
        Plan("meterproxy 1w", "meterproxy", 1, cpus.target, metering=True),
        Plan("meterproxy 1w, no metering", "meterproxy", 1, cpus.target, metering=False),
        # The upstream client sits behind a seam (issue 4): the row shows what the other one costs.
        Plan("meterproxy 1w, aiohttp", "meterproxy", 1, cpus.target, metering=True, client="aiohttp"),
    ]
    if many > 1:
        plans.append(Plan(f"meterproxy {many}w", "meterproxy", many, cpus.all, metering=True))
    if peers:
        plans.append(Plan("litellm 1w", "litellm", 1, cpus.target))
        if many > 1:
            plans.append(Plan(f"litellm {many}w", "litellm", many, cpus.all))
    return plans


def _single_worker(plans: list[Plan], metering: bool) -> Plan:
    """The plan of one meterproxy worker on the default upstream client, with metering or without."""
    wanted = ("meterproxy", 1, None, metering)
    return next(plan for plan in plans if (plan.kind, plan.workers, plan.client, plan.metering) == wanted)


@contextlib.contextmanager
def _launch(plan: Plan, bench: Bench) -> Iterator[Launched]:
    """Start the plan's server (none for the mock itself), yield its endpoints, stop it."""
    mock, workdir, workers = bench.mock, bench.workdir, plan.workers or 1
    slug = plan.name.replace(" ", "").replace(",", "-")
    if plan.kind == "direct":
        calls = {"json": _endpoint(mock.json, "", BODY), "stream": _endpoint(mock.stream, "", STREAM_BODY)}
        yield Launched(None, calls, _endpoint(mock.slow, "", STREAM_BODY))
        return
    records = None
    if plan.kind == "litellm":
        assert bench.litellm is not None
        server, port = start_litellm(slug, bench.litellm, workdir, mock, workers, plan.cpus)
        # LiteLLM routes by model name only: each mock upstream is its own alias of the model.
        calls = {
            "json": _endpoint(port, "", BODY),
            "stream": _endpoint(port, "", _alias(STREAM_BODY, "stream")),
        }
        slow = _endpoint(port, "", _alias(STREAM_BODY, "slow"))
    else:
        if plan.kind == "nginx":
            port = free_port()
            server = start_nginx(slug, bench_nginx.ceiling_config(workdir, port, mock), workdir, plan.cpus)
            server.wait_ready(f"http://127.0.0.1:{port}/mock/v1/chat/completions", timeout_s=10)
        else:
            metering = bool(plan.metering)
            server, port, record_file = start_meterproxy(
                slug, REPO, workdir, mock, workers, plan.cpus, metering, plan.client
            )
            records = record_file if metering else None
        calls = {
            "json": _endpoint(port, "/mock", BODY),
            "stream": _endpoint(port, "/mockstream", STREAM_BODY),
        }
        slow = _endpoint(port, "/mockslow", STREAM_BODY)
    try:
        yield Launched(server, calls, slow, records)
    finally:
        server.stop()


def _metering_cost(bench: Bench, load: Load, on: Plan, off: Plan) -> dict[str, dict[str, Any]]:
    """req/s at 32 connections of meterproxy with metering (`on`) and without (`off`), both up at once
    and measured in turns (on, off, off, on, ...), so that a machine whose speed drifts by the minute
    weighs on both alike; the rows above measure them minutes apart."""
    seconds = max(1.0, load.duration / 2)
    rps: dict[str, dict[str, list[float]]] = {mode: {"on": [], "off": []} for mode in MODES}
    print("measuring metering on / off in turns ...", flush=True)
    with _launch(on, bench) as metered, _launch(off, bench) as plain:
        sides = {"on": metered, "off": plain}
        for mode in MODES:
            for side in sides.values():
                run_wrk(side.calls[mode], 32, 1.0, bench.workdir, bench.cpus.load)  # warm-up
            for turn in range(TURNS):
                for name in ("on", "off") if turn % 2 == 0 else ("off", "on"):
                    wrk = run_wrk(sides[name].calls[mode], 32, seconds, bench.workdir, bench.cpus.load)
                    rps[mode][name].append(round(wrk.rps, 1))
    return {
        mode: {**runs, "ratio": round(statistics.median(runs["on"]) / statistics.median(runs["off"]), 3)}
        for mode, runs in rps.items()
    }


def _endpoint(port: int, prefix: str, body: str) -> Endpoint:
    return Endpoint(f"http://127.0.0.1:{port}{prefix}/v1/chat/completions", body)


def _alias(body: str, suffix: str) -> str:
    return body.replace(f'"model":"{MODEL}"', f'"model":"{MODEL}-{suffix}"')


def _measure(result: TargetResult, launched: Launched, bench: Bench, load: Load, soak: bool) -> None:
    records = RecordFile(launched.record_file) if launched.record_file else None
    sampler = TreeSampler(launched.server.pid) if launched.server else None
    served = 0
    with sampler or contextlib.nullcontext():
        for mode in MODES:
            endpoint = launched.calls[mode]
            run_wrk(endpoint, 32, 1.0, bench.workdir, bench.cpus.load)  # warm-up: connection pools, caches
            for conns in load.connections:
                row = _measure_run(result, endpoint, mode, conns, bench, load, sampler, records)
                result.rows.append(row)
                served += row.wrk.requests
                if sampler:
                    result.rss_checkpoints.append((served, round(sampler.sample() / 1024, 1)))
        if soak and sampler:
            # A leak shows as growth between the 50,000th and the 100,000th call (issue 4's RSS target).
            deadline = time.monotonic() + SOAK_LIMIT_S
            while served < load.soak_calls and time.monotonic() < deadline:
                for mode in MODES:
                    wrk = run_wrk(launched.calls[mode], 32, 10.0, bench.workdir, bench.cpus.load)
                    served += wrk.requests
                    result.rss_checkpoints.append((served, round(sampler.sample() / 1024, 1)))
        if sampler:
            sampler.wait_idle()
        wait_quiet(bench.cores, QUIET, load.quiet_wait)
        _probe(result, launched, records, bench, load)
    if sampler:
        result.peak_rss_mb = round(sampler.peak_tree_kb / 1024, 1)
        result.peak_process_rss_mb = round(sampler.peak_process_kb / 1024, 1)


def _measure_run(
    result: TargetResult,
    endpoint: Endpoint,
    mode: str,
    connections: int,
    bench: Bench,
    load: Load,
    sampler: TreeSampler | None,
    records: RecordFile | None,
) -> Row:
    """One measured wrk run, started once the target and the machine are quiet."""
    # Calls wrk abandoned at the previous run's deadline may still be in flight: let them finish.
    before = records.settle() if records else 0
    if sampler:
        sampler.wait_idle()
    wait_quiet(bench.cores, QUIET, load.quiet_wait)
    # On the target's own core, busy time outside its processes is network softirq plus other work.
    core = int(result.cpus) if result.cpus.isdigit() else None
    cpu = sampler.cpu_seconds() if sampler else 0.0
    busy = core_busy_seconds(core) if core is not None else 0.0
    start = time.monotonic()
    wrk = run_wrk(endpoint, connections, load.duration, bench.workdir, bench.cpus.load)
    wall = time.monotonic() - start
    row = Row(mode, connections, wrk)
    if sampler:
        cpu = sampler.cpu_seconds() - cpu
        row.cpu_pct = round(100 * cpu / wall, 1)
        row.cpu_us_per_call = round(1e6 * cpu / wrk.requests, 1) if wrk.requests else None
        if core is not None:
            row.other_pct = round(100 * (core_busy_seconds(core) - busy) / wall - row.cpu_pct, 1)
    if records:
        row.records = records.settle() - before
    return row


def _probe(
    result: TargetResult, launched: Launched, records: RecordFile | None, bench: Bench, load: Load
) -> None:
    """TTFB of the slow stream, paired with the upstream's; for a metered target, the fixed-count records
    check. Failures are noted, not raised: the other targets still get measured."""
    direct = _endpoint(bench.mock.slow, "", STREAM_BODY)
    try:
        if launched.server is None:
            (timings,) = asyncio.run(time_streams([launched.slow], load.slow_calls))
        else:
            timings, upstream = asyncio.run(time_streams([launched.slow, direct], load.slow_calls))
            result.ttfb["direct_ttfb_ms"] = _median(t.ttfb_ms for t in upstream)
            result.ttfb["added_ttfb_ms"] = _median(
                a.ttfb_ms - b.ttfb_ms for a, b in zip(timings, upstream, strict=True)
            )
        result.ttfb["ttfb_ms"] = _median(t.ttfb_ms for t in timings)
        result.ttfb["total_ms"] = _median(t.total_ms for t in timings)
        if records:
            result.exact_count = _exact_count(launched, records, load.exact_calls)
    except (aiohttp.ClientError, OSError) as exc:
        result.problems.append(f"probe failed: {exc!r}")


def _median(values: Iterable[float]) -> float:
    return round(statistics.median(values), 3)


def _exact_count(launched: Launched, records: RecordFile, calls_each: int) -> dict[str, int]:
    """A fixed number of calls (no run cut off mid-call): records must equal successes exactly."""
    before, offset = records.settle(), records.offset
    endpoints = [launched.calls[mode] for mode in MODES]
    ok = asyncio.run(count_successes(endpoints, calls_each, concurrency=16))
    after = records.settle()
    new = records.records_from(offset)
    metered = sum(1 for r in new if r.get("status_code") == 200 and r.get("total_tokens") == 36)
    return {"calls": calls_each * len(endpoints), "ok": ok, "records": after - before, "metered_ok": metered}


if __name__ == "__main__":
    sys.exit(main())
