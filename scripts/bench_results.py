"""The benchmark's results: rows per run, derived figures (added latency, ratios, targets), the table."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench_load import WrkResult
from bench_targets import package_version

Kind = Literal["direct", "nginx", "meterproxy", "litellm"]
MOCK_BOUND = 0.85  # a proxied run at this share of the direct run's req/s was limited by the mock's core
_RATIO_CONNECTIONS = 32


@dataclass
class Row:
    mode: str
    connections: int
    wrk: WrkResult
    records: int | None = None  # records written during the run, for a target that writes them
    cpu_pct: float | None = None  # CPU time of the target's processes per second of the run
    other_pct: float | None = None  # the rest of its core's busy time: network softirq, other processes
    cpu_us_per_call: float | None = None  # the target's CPU time per completed call


@dataclass
class TargetResult:
    name: str
    kind: Kind
    workers: int | None
    cpus: str
    metering: bool | None
    client: str | None = None  # meterproxy's upstream client, when not its default
    rows: list[Row] = field(default_factory=list)
    peak_rss_mb: float | None = None
    peak_process_rss_mb: float | None = None
    rss_checkpoints: list[tuple[int, float]] = field(default_factory=list)  # (requests so far, tree MB)
    ttfb: dict[str, float] = field(default_factory=dict)
    exact_count: dict[str, int] | None = None
    problems: list[str] = field(default_factory=list)


def build(
    results: list[TargetResult],
    machine: dict[str, Any],
    settings: dict[str, Any],
    interleaved: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything the JSON file holds; render() prints it. `interleaved`: req/s of meterproxy with
    metering on and off, measured in turns, per mode; its ratio is the one the target is checked on."""
    direct = next(r for r in results if r.kind == "direct")
    base = {(row.mode, row.connections): row.wrk for row in direct.rows}
    targets = []
    for result in results:
        rows = []
        for row in result.rows:
            ref = base[(row.mode, row.connections)]
            proxied = result.kind != "direct"
            rows.append(
                {
                    "mode": row.mode,
                    "connections": row.connections,
                    "rps": round(row.wrk.rps, 1),
                    "p50_ms": _round(row.wrk.p50_ms),
                    "p99_ms": _round(row.wrk.p99_ms),
                    "added_p50_ms": _difference(row.wrk.p50_ms, ref.p50_ms) if proxied else None,
                    "added_p99_ms": _difference(row.wrk.p99_ms, ref.p99_ms) if proxied else None,
                    "requests": row.wrk.requests,
                    "ok": row.wrk.ok,
                    "non_2xx": row.wrk.non_2xx,
                    "socket_errors": row.wrk.socket_errors,
                    "records": row.records,
                    "cpu_pct": row.cpu_pct,
                    "other_pct": row.other_pct,
                    "cpu_us_per_call": row.cpu_us_per_call,
                    "mock_bound": proxied and row.wrk.rps >= MOCK_BOUND * ref.rps,
                }
            )
        targets.append(
            {
                "name": result.name,
                "kind": result.kind,
                "workers": result.workers,
                "cpus": result.cpus,
                "metering": result.metering,
                "upstream_client": result.client,
                "peak_rss_mb": result.peak_rss_mb,
                "peak_process_rss_mb": result.peak_process_rss_mb,
                "rss_checkpoints": [list(c) for c in result.rss_checkpoints],
                "slow_stream": result.ttfb,
                "problems": result.problems,
                "exact_count": result.exact_count,
                "rows": rows,
            }
        )
    report = {"machine": machine, "settings": settings, "targets": targets}
    if interleaved:
        report["metering_interleaved"] = interleaved
    report["ratios"] = _ratios(report, per_cpu=False)
    report["ratios_per_cpu"] = _ratios(report, per_cpu=True)
    report["checks"] = _checks(report)
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else round(value - reference, 3)


def _find(
    report: dict[str, Any],
    kind: Kind,
    workers: int | None = 1,
    metering: bool | None = None,
    client: str | None = None,
) -> Any:
    """The target of this kind and worker count (and metering, and upstream client: None is the default)."""
    for target in report["targets"]:
        if (
            target["kind"] == kind
            and target["workers"] == workers
            and (metering is None or target["metering"] == metering)
            and target.get("upstream_client") == client
        ):
            return target
    return None


def _rps(target: Any, mode: str, key: str = "rps") -> float | None:
    """One figure of a target's run at 32 connections (None if not measured)."""
    if target is None:
        return None
    rows = target["rows"]
    return next((r[key] for r in rows if r["mode"] == mode and r["connections"] == _RATIO_CONNECTIONS), None)


def _ratios(report: dict[str, Any], per_cpu: bool) -> dict[str, dict[str, float | None]]:
    """Ratios at 32 connections, per mode: of req/s, or (per_cpu) of calls served per CPU second.

    Calls per CPU second hardly move when other work shares the machine, so they still compare the
    proxies' own costs when req/s is spoiled by a noisy neighbour.
    """
    workers = report["settings"]["workers"]
    pairs = {
        "meterproxy / nginx": (_find(report, "meterproxy", 1, True), _find(report, "nginx")),
        "meterproxy / litellm, 1 worker": (_find(report, "meterproxy", 1, True), _find(report, "litellm")),
        f"meterproxy / litellm, {workers} workers": (
            _find(report, "meterproxy", workers, True),
            _find(report, "litellm", workers),
        ),
        "metering on / off": (_find(report, "meterproxy", 1, True), _find(report, "meterproxy", 1, False)),
        "upstream client default / aiohttp": (
            _find(report, "meterproxy", 1, True),
            _find(report, "meterproxy", 1, True, "aiohttp"),
        ),
    }
    ratios: dict[str, dict[str, float | None]] = {}
    for label, (ours, theirs) in pairs.items():
        if ours is None or theirs is None or ours is theirs:
            continue
        ratios[label] = {}
        for mode in ("json", "stream"):
            if per_cpu:  # the inverse ratio of CPU time per call
                a, b = _rps(theirs, mode, "cpu_us_per_call"), _rps(ours, mode, "cpu_us_per_call")
            else:
                a, b = _rps(ours, mode), _rps(theirs, mode)
            ratios[label][mode] = round(a / b, 3) if a and b else None
    interleaved = report.get("metering_interleaved")
    if interleaved and not per_cpu:  # measured in turns: the fairer figure of the two
        ratios["metering on / off"] = {mode: runs["ratio"] for mode, runs in interleaved.items()}
    return ratios


def _checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value; `ok` is None when this run did not measure it."""
    ours = _find(report, "meterproxy", 1, True)
    checks: list[dict[str, Any]] = []

    def check(target: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        shown = (
            None if value is None else f"{value:,.3g}{unit}" if abs(value) < 100 else f"{value:,.0f}{unit}"
        )
        checks.append({"target": target, "value": shown, "ok": None if value is None else ok})

    if ours is None:
        return checks
    for mode, floor in (("json", 8000.0), ("stream", 4500.0)):
        rps = _rps(ours, mode)
        check(
            f"{mode}: >= {floor:,.0f} req/s at 32 connections, 1 worker",
            rps,
            rps is not None and rps >= floor,
        )
    for mode in ("json", "stream"):
        row = next((r for r in ours["rows"] if r["mode"] == mode and r["connections"] == 1), None)
        p50, p99 = (row["added_p50_ms"], row["added_p99_ms"]) if row else (None, None)
        check(f"{mode}: added p50 at 1 connection <= 0.5 ms", p50, p50 is not None and p50 <= 0.5, " ms")
        check(f"{mode}: added p99 at 1 connection <= 2 ms", p99, p99 is not None and p99 <= 2, " ms")
    for label, floor in (("litellm", 30.0), ("nginx", 0.15), ("metering on / off", 0.85)):
        for name, by_mode in report["ratios"].items():
            if label in name:
                for mode, ratio in by_mode.items():
                    check(f"{mode}: {name} >= {floor:g}", ratio, ratio is not None and ratio >= floor, "x")
    peak = ours["peak_process_rss_mb"]
    served = ours["rss_checkpoints"][-1][0] if ours["rss_checkpoints"] else 0
    check(
        f"peak RSS of the worker <= 100 MB (after {served:,} requests)",
        peak,
        peak is not None and peak <= 100,
        " MB",
    )
    growth = _rss_growth(ours["rss_checkpoints"])
    check(
        "RSS flat: growth from the 50,000th request to the last <= 5 MB",
        growth,
        growth is not None and growth <= 5,
        " MB",
    )
    added = ours["slow_stream"].get("added_ttfb_ms")
    check(
        "slow stream: TTFB through the proxy within 1 ms of the upstream's",
        added,
        added is not None and abs(added) <= 1,
        " ms",
    )
    exact = ours["exact_count"]
    if exact:
        equal = exact["records"] == exact["ok"] == exact["calls"] == exact["metered_ok"]
        check(f"records = successful calls ({exact['calls']:,} fixed calls)", exact["records"], equal)
    return checks


def _rss_growth(checkpoints: list[list[float]]) -> float | None:
    """Tree RSS at the last checkpoint minus at the first one past 50,000 requests (None if never past it)."""
    start = next((mb for served, mb in checkpoints if served >= 50_000), None)
    return None if start is None or checkpoints[-1][0] < 100_000 else round(checkpoints[-1][1] - start, 1)


_COLUMNS: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]]] = [
    ("mode", lambda t, r: r["mode"]),
    ("target", lambda t, r: t["name"]),
    ("conns", lambda t, r: str(r["connections"])),
    ("req/s", lambda t, r: f"{r['rps']:,.0f}{'*' if r['mock_bound'] else ''}"),
    ("p50 ms", lambda t, r: _num(r["p50_ms"], ".2f")),
    ("p99 ms", lambda t, r: _num(r["p99_ms"], ".2f")),
    ("+p50 ms", lambda t, r: _num(r["added_p50_ms"], "+.2f")),
    ("+p99 ms", lambda t, r: _num(r["added_p99_ms"], "+.2f")),
    ("errors", lambda t, r: str(r["non_2xx"] + r["socket_errors"])),
    ("cpu%", lambda t, r: _num(r["cpu_pct"], ".0f")),
    ("other%", lambda t, r: _num(r["other_pct"], ".0f")),
    ("cpu us/call", lambda t, r: _num(r["cpu_us_per_call"], ",.0f")),
    ("RSS MB", lambda t, r: _num(t["peak_rss_mb"], ".0f")),
    (
        "records",
        lambda t, r: "" if r["records"] is None else f"{r['records']:,} ({r['records'] - r['ok']:+d})",
    ),
]


def render(report: dict[str, Any]) -> str:
    lines = [[name for name, _ in _COLUMNS]]
    for mode in ("json", "stream"):
        for target in report["targets"]:
            for row in (r for r in target["rows"] if r["mode"] == mode):
                lines.append([cell(target, row) for _, cell in _COLUMNS])
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    out = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
        for x in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("* at 85%+ of the mock's own req/s: the mock's core, not the target, was the limit")
    out.append(
        "records: lines written during the run (records - successful calls; calls cut off when wrk stops)"
    )
    out.append("\nslow stream (one event per 100 ms), median over sequential calls:")
    for target in report["targets"]:
        slow = target["slow_stream"]
        if not slow:
            out.append(f"  {target['name']:<28} not measured: {'; '.join(target['problems'])}")
            continue
        added = f"({slow['added_ttfb_ms']:+.3f} ms)" if "added_ttfb_ms" in slow else ""
        ttfb, total = f"{slow['ttfb_ms']:.3f} ms", f"{slow['total_ms']:.1f} ms"
        out.append(f"  {target['name']:<28} TTFB {ttfb:>11} {added:<14} whole stream {total}")
    for key, title in (("ratios", "req/s"), ("ratios_per_cpu", "calls per CPU second")):
        out.append(f"\nratios of {title} at 32 connections:")
        for label, by_mode in report[key].items():
            shown = ", ".join(f"{mode} {'n/a' if r is None else f'{r:.3g}x'}" for mode, r in by_mode.items())
            out.append(f"  {label:<34} {shown}")
    interleaved = report.get("metering_interleaved", {})
    if interleaved:
        out.append("\nmetering on / off measured in turns (req/s at 32 connections, each run):")
    for mode, runs in interleaved.items():
        for side in ("on", "off"):
            out.append(f"  {mode:<6} {side:<4} {', '.join(f'{rps:,.0f}' for rps in runs[side])}")
    out.append("\nthe issue's targets:")
    for check in report["checks"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[check["ok"]]
        out.append(f"  {mark}  {check['target']}: {check['value'] or 'not measured'}")
    return "\n".join(out)


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def describe_machine(repo: Path, litellm_venv: Path | None) -> dict[str, object]:
    """CPU, cores, memory, kernel, versions: what a reader needs to compare a result with theirs."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")), 0)
    cores = os.cpu_count() or 1
    ours = ("aiohttp", "uvicorn", "uvloop", "httptools", "starlette", "orjson", "msgspec")
    packages = {name: package_version(sys.executable, name) for name in ours}
    packages["nginx"] = _output(["nginx", "-v"]).rsplit("/", 1)[-1] or None
    packages["wrk"] = " ".join(_output(["wrk", "-v"]).split()[1:2]) or None
    if litellm_venv is not None:
        packages["litellm"] = package_version(litellm_venv / "bin" / "python", "litellm")
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or platform.machine()
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_mb": mem_kb // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "meterproxy_commit": _output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or None,
        "slug": f"{slug}-{cores}c",
    }


def _output(cmd: list[str]) -> str:
    """A command's output (stdout, else stderr: nginx -v writes there), stripped; empty if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    return (done.stdout or done.stderr).strip()
