"""Reports benchmark (issue 3, Speed): `report --all --format json` on 1M records, beside jq and DuckDB.

Generates a record file of the proxy's shape in a temporary folder, then times, on the same group-by
(requests, tokens and cost per provider/model over every record):
- `python scripts/analyze_costs.py --all --format json` (wall time, and peak memory of its process tree),
- a plain orjson loop doing only that group-by (what a straightforward Python reader does),
- jq (installed with apt-get if missing), and DuckDB (installed by pip into a throwaway venv).
Prints best and median of --repeat runs and the ratios to the report. Not a test: run it by hand.

    python scripts/bench_reports.py [--records 1000000] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
# (provider, model, input and output price per 1M tokens or None if unpriced, currency, share of calls)
MODELS = [
    ("openai", "gpt-4o", "2.50", "10.00", "USD", 20),
    ("openai", "gpt-4o-mini", "0.15", "0.60", "USD", 30),
    ("anthropic", "claude-sonnet-4-5", "3.00", "15.00", "USD", 15),
    ("gemini", "gemini-2.5-flash", "0.30", "2.50", "USD", 10),
    ("deepseek", "deepseek-chat", "0.27", "1.10", "USD", 8),
    ("dashscope", "qwen-plus", "0.80", "2.00", "CNY", 7),
    ("moonshot", "kimi-k2", "4.00", "16.00", "CNY", 5),
    ("openrouter", "some/new-model", None, None, "USD", 5),
]
USERS = ["team-search", "team-support", "batch-jobs", "team-research", "team-ml", "ci"] + [
    f"key:{index:012x}" for index in range(1, 30)
]
TASKS = [None, None, "chat", "summarise", "code", "eval"]
GROUP_BY_SQL = """
SELECT provider || '/' || coalesce(model, '(none)') AS model, count(*) AS requests,
       sum(total_tokens) AS tokens, sum(total_cost) AS cost
FROM read_json('{path}', format = 'newline_delimited', columns = {{
    provider: 'VARCHAR', model: 'VARCHAR', total_tokens: 'BIGINT', total_cost: 'DOUBLE'}})
GROUP BY 1 ORDER BY 1
"""
JQ_PROGRAM = (
    'reduce inputs as $r ({}; ($r.provider + "/" + ($r.model // "(none)")) as $k'
    " | .[$k].requests += 1 | .[$k].tokens += $r.total_tokens | .[$k].cost += ($r.total_cost // 0))"
)
DUCKDB_QUERY = """
import duckdb, json
connection = duckdb.connect()
connection.execute("SET enable_progress_bar = false")
print(json.dumps(connection.sql({sql!r}).fetchall()))
"""
ONE_PROCESS = "from proxy.analysis import summarise; summarise([{path!r}], workers=1)"
ORJSON_LOOP = """
import sys, orjson
groups = {}
with open(sys.argv[1], "rb") as file:
    for line in file:
        r = orjson.loads(line)
        key = (r["provider"], r["model"])
        g = groups.get(key)
        if g is None:
            g = groups[key] = [0, 0, 0.0]
        g[0] += 1
        g[1] += r["total_tokens"]
        if r["total_cost"] is not None:
            g[2] += r["total_cost"]
print(len(groups))
"""


def generate(path: Path, count: int, now: datetime) -> None:
    """Records as the proxy writes them, spread over the 30 days before now, in roughly time order."""
    rng = random.Random(3)
    weights = [share for *_, share in MODELS]
    start = now - timedelta(days=30)
    step = timedelta(days=30) / count
    with open(path, "wb") as file:
        for index in range(count):
            provider, model, input_price, output_price, currency, _ = rng.choices(MODELS, weights)[0]
            arrived = start + step * index - timedelta(seconds=rng.random() * 20)
            input_tokens, output_tokens = (
                int(rng.lognormvariate(7, 1)) + 1,
                int(rng.lognormvariate(5.5, 1)) + 1,
            )
            cached = rng.choice((0, 0, 0, input_tokens // 2))
            status, error = 200, None
            if rng.random() < 0.02:
                status, error = rng.choice(
                    ((429, None), (500, None), (499, "client_disconnected"), (504, "upstream_timeout"))
                )
            costs: list[float | None] = [None, None, None]
            if input_price is not None and output_price is not None:
                input_cost = (
                    Decimal(input_tokens - cached) * Decimal(input_price)
                    + Decimal(cached) * Decimal(input_price) / 2
                ) / 1_000_000
                output_cost = Decimal(output_tokens) * Decimal(output_price) / 1_000_000
                costs = [float(input_cost), float(output_cost), float(input_cost + output_cost)]
            streaming = rng.random() < 0.6
            record = {
                "timestamp": arrived.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "request_id": f"chatcmpl-{rng.getrandbits(96):024x}",
                "user_id": USERS[min(int(rng.expovariate(0.35)), len(USERS) - 1)],
                "ip_address": f"10.0.{rng.randrange(4)}.{rng.randrange(1, 255)}",
                "provider": provider,
                "model": model,
                "endpoint": "/v1/chat/completions",
                "is_streaming": streaming,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "input_cost": costs[0],
                "output_cost": costs[1],
                "total_cost": costs[2],
                "finish_reason": "stop" if error is None else None,
                "v": 1,
                "response_model": f"{model}-2025-06-01",
                "cached_input_tokens": cached,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
                "currency": currency,
                "priced": input_price is not None,
                "usage_source": "provider",
                "status_code": status,
                "error": error,
                "duration_ms": round(rng.lognormvariate(7.5, 0.8), 3),
                "ttfb_ms": round(rng.lognormvariate(6, 0.5), 3) if streaming else None,
                "proxy_request_id": f"{rng.getrandbits(128):032x}",
                "session_id": f"sess-{rng.getrandbits(32):08x}" if rng.random() < 0.3 else None,
                "task_type": rng.choice(TASKS),
            }
            file.write(orjson.dumps(record) + b"\n")


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)
    peak_tree_mb: float = 0.0
    peak_process_mb: float = 0.0
    output: str = ""


def tree_rss_kb(root: int) -> tuple[int, int]:
    """The summed and the largest resident memory (kB) of a process and its descendants."""
    total = largest = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/status") as status:
                rss = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def measure(timing: Timing, command: Sequence[str], folder: Path) -> None:
    """Run the command in folder (no config.yml there: USD, no rates), timing it and its peak memory."""
    environ = {k: v for k, v in os.environ.items() if k not in ("METERPROXY_CONFIG", "COST_TRACKING_FILE")}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=environ
    )
    peaks = [0, 0]

    def sample() -> None:
        while process.poll() is None:
            total, largest = tree_rss_kb(process.pid)
            peaks[0], peaks[1] = max(peaks[0], total), max(peaks[1], largest)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output, errors = process.communicate()
    elapsed = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({process.returncode}): {errors.strip()}")
    timing.seconds.append(elapsed)
    timing.peak_tree_mb = max(timing.peak_tree_mb, peaks[0] / 1024)
    timing.peak_process_mb = max(timing.peak_process_mb, peaks[1] / 1024)
    timing.output = output


def ensure_jq() -> str | None:
    for step in (
        ["apt-get", "install", "-y", "-q", "jq"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "jq"],
    ):
        if shutil.which("jq") is not None or shutil.which("apt-get") is None:
            break
        subprocess.run(step, capture_output=True, check=False)
    return shutil.which("jq")


def ensure_duckdb(folder: Path) -> Path:
    venv = folder / "duckdb-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "duckdb"], capture_output=True, text=True
        )
        if installed.returncode != 0:
            raise SystemExit(f"pip could not install duckdb into {venv}:\n{installed.stderr}")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (file and venv)")
    parser.add_argument("--file", type=Path, help="time this record file instead of generating one")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="meterproxy-bench-reports-"))
    try:
        return run(folder, args.records, args.repeat, args.file)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def run(folder: Path, count: int, repeat: int, existing: Path | None) -> int:
    path = existing.resolve() if existing else folder / "cost-tracking.jsonl"
    started = time.perf_counter()
    if existing is None:
        generate(path, count, datetime.now(UTC))
    else:
        with open(path, "rb") as file:
            count = sum(1 for _ in file)
    size_mb = path.stat().st_size / 1e6
    made = "generated" if existing is None else "read"
    print(f"{made} {count:,} records, {size_mb:,.0f} MB, in {time.perf_counter() - started:.0f} s")
    duckdb = ensure_duckdb(folder)
    jq = ensure_jq()
    report = Timing("report --format json")
    loop = Timing("plain orjson loop")
    duck = Timing("DuckDB")
    jq_timing = Timing("jq")
    script = str(ROOT / "scripts" / "analyze_costs.py")
    one_process = Timing("summarise(), 1 process")
    query = DUCKDB_QUERY.format(sql=GROUP_BY_SQL.format(path=str(path)))
    library = f"import sys; sys.path.insert(0, {str(ROOT)!r}); " + ONE_PROCESS.format(path=str(path))
    for _ in range(repeat):
        measure(report, [sys.executable, script, "--file", str(path), "--all", "--format", "json"], folder)
        measure(one_process, [sys.executable, "-c", library], folder)
        measure(loop, [sys.executable, "-c", ORJSON_LOOP, str(path)], folder)
        measure(duck, [str(duckdb), "-c", query], folder)
    if jq is not None:
        measure(jq_timing, [jq, "-cn", JQ_PROGRAM, str(path)], folder)  # once: it takes many seconds
    cpus = len(os.sched_getaffinity(0))
    print(f"\n{count:,} records ({size_mb:,.0f} MB), {cpus} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(
        f"{'':24} {'best s':>8} {'median s':>9} {'peak MB tree':>13} {'largest proc':>13} {'vs report':>10}"
    )
    best = min(report.seconds)
    for timing in (report, one_process, loop, duck, jq_timing):
        if not timing.seconds:
            print(f"{timing.name:24} not run (jq could not be installed)")
            continue
        ratio = min(timing.seconds) / best
        print(
            f"{timing.name:24} {min(timing.seconds):8.2f} {statistics.median(timing.seconds):9.2f}"
            f" {timing.peak_tree_mb:13.0f} {timing.peak_process_mb:13.0f} {ratio:9.2f}x"
        )
    if count == 1_000_000:
        target = best <= 2.5 and report.peak_tree_mb <= 150
        print(f"\ntarget (<= 2.5 s, <= 150 MB): {'met' if target else 'NOT met'}")
    check(report.output, duck.output)
    return 0


def check(report_json: str, duckdb_rows: str) -> None:
    """The report's per-model requests, tokens and costs (each in its own currency) equal DuckDB's."""
    by_model = orjson.loads(report_json)["by_model"]
    rows = orjson.loads(duckdb_rows)
    for model, requests, tokens, cost in rows:
        mine = by_model[model]
        native = mine["cost"] + sum(mine["unconverted"].values())  # no rates: CNY stays unconverted
        assert (mine["requests"], mine["total_tokens"]) == (requests, tokens), model
        assert abs(native - (cost or 0)) <= 1e-9 * max(1.0, native), (model, native, cost)
    print(f"checked: the report's {len(rows)} models agree with DuckDB's group-by")


if __name__ == "__main__":
    raise SystemExit(main())
