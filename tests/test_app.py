"""/health and /v1/models on the real proxy: totals that equal the record file, before and after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    GPT_4O_MINI,
    REPO_ROOT,
    MakeConfig,
    ProxyLauncher,
    RunningProxy,
    read_records,
    wait_until,
)
from upstream_stub import Reply, UpstreamStub

CNY_PER_USD = "0.14"
STATS_KEYS = {
    "total_cost",
    "currency",
    "requests",
    "errors",
    "unpriced_requests",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "provider_costs",
    "model_costs",
    "unconverted",
}


def per_million(*terms: tuple[int, str]) -> Decimal:
    return sum((Decimal(tokens) * Decimal(price) for tokens, price in terms), Decimal(0)) / Decimal(1_000_000)


def completion(model: str, prompt: int, completion: int, cached: int = 0) -> bytes:
    return json.dumps(
        {
            "id": f"chatcmpl-{model}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
    ).encode()


@pytest.fixture
def config(make_config: MakeConfig, stub: UpstreamStub) -> Path:
    """openai in USD, qwen in CNY (with a rate), mistral in EUR (with no rate)."""
    return make_config(
        exchange_rates={"CNY": float(CNY_PER_USD)},
        providers={
            "qwen": {
                "base_url": f"http://127.0.0.1:{stub.port}/qwen",
                "currency": "CNY",
                "models": {"qwen-plus": {"pricing": {"input": 0.8, "output": 2}}},
            },
            "mistral": {
                "base_url": f"http://127.0.0.1:{stub.port}/mistral",
                "currency": "EUR",
                "models": {"mistral-small": {"pricing": {"input": 0.1, "output": 0.3}}},
            },
        },
    )


# (path, model, upstream reply) of the calls `make_calls` makes; the expected totals below follow from them.
CALLS: list[tuple[str, str, Reply]] = [
    ("/v1/chat/completions", "gpt-4o", Reply(body=completion("gpt-4o", 1000, 500, cached=200))),
    ("/v1/chat/completions", "gpt-4o-mini", Reply(body=completion("gpt-4o-mini", 100, 50))),
    ("/v1/chat/completions", "qwen-plus", Reply(body=completion("qwen-plus", 1000, 1000))),
    ("/v1/chat/completions", "mistral-small", Reply(body=completion("mistral-small", 1000, 1000))),
    ("/openai/v1/chat/completions", "unpriced-model", Reply(body=completion("unpriced-model", 7, 3))),
    ("/v1/chat/completions", "gpt-4o-mini", Reply(status=500, body=b'{"error": {"message": "boom"}}')),
]
GPT_4O_COST = per_million((800, "2.50"), (200, "1.25"), (500, "10.00"))
GPT_4O_MINI_COST = per_million((100, "0.15"), (50, "0.60"))
QWEN_COST_USD = per_million((1000, "0.8"), (1000, "2")) * Decimal(CNY_PER_USD)
MISTRAL_COST_EUR = per_million((1000, "0.1"), (1000, "0.3"))


def make_calls(proxy: RunningProxy, stub: UpstreamStub) -> None:
    for path, model, reply in CALLS:
        stub.push(reply)
        proxy.post_json(path, {"model": model, "messages": [{"role": "user", "content": "hi"}]})
    proxy.wait_records(len(CALLS))


def expected_stats() -> dict[str, Any]:
    return {
        "total_cost": float(GPT_4O_COST + GPT_4O_MINI_COST + QWEN_COST_USD),
        "currency": "USD",
        "requests": 6,
        "errors": 1,
        "unpriced_requests": 1,  # unpriced-model's call
        "input_tokens": 1000 + 100 + 1000 + 1000 + 7,
        "output_tokens": 500 + 50 + 1000 + 1000 + 3,
        "total_tokens": 1500 + 150 + 2000 + 2000 + 10,
        "provider_costs": {"openai": float(GPT_4O_COST + GPT_4O_MINI_COST), "qwen": float(QWEN_COST_USD)},
        "model_costs": {
            "openai/gpt-4o": float(GPT_4O_COST),
            "openai/gpt-4o-mini": float(GPT_4O_MINI_COST),
            "qwen/qwen-plus": float(QWEN_COST_USD),
        },
        "unconverted": {"EUR": float(MISTRAL_COST_EUR)},
    }


def stats_from_file(path: Path) -> dict[str, Any]:
    """What /health must say, recounted from the record file (all of it is within 24 h here)."""
    rates = {"USD": Decimal(1), "CNY": Decimal(CNY_PER_USD)}
    records = read_records(path)
    total = Decimal(0)
    unconverted: dict[str, Decimal] = {}
    for record in records:
        if record["total_cost"] is None:
            continue
        cost = Decimal(repr(record["total_cost"]))
        if record["currency"] in rates:
            total += cost * rates[record["currency"]]
        else:
            unconverted[record["currency"]] = unconverted.get(record["currency"], Decimal(0)) + cost
    return {
        "total_cost": float(total),
        "requests": len(records),
        "errors": sum(1 for r in records if r["error"] is not None or r["status_code"] >= 400),
        "unpriced_requests": sum(1 for r in records if not r["priced"]),  # every call here is metered
        "input_tokens": sum(r["input_tokens"] for r in records),
        "output_tokens": sum(r["output_tokens"] for r in records),
        "total_tokens": sum(r["total_tokens"] for r in records),
        "unconverted": {code: float(cost) for code, cost in unconverted.items()},
    }


def assert_stats(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal, with costs compared to a relative 1e-9 (they are floats of exact decimal sums)."""
    for key, value in expected.items():
        if isinstance(value, dict):
            assert set(actual[key]) == set(value), (key, actual[key])
            assert actual[key] == pytest.approx(value, rel=1e-9), key
        elif isinstance(value, float):
            assert actual[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert actual[key] == value, key


def test_health_starts_empty(proxy: RunningProxy) -> None:
    health = proxy.health()

    assert {"status", "version", "features", "cost_stats_24h"} <= set(health)
    assert (health["status"], health["version"], health["features"]) == (
        "healthy",
        "0.1.0",
        {"cost_tracking": True},
    )
    assert "problems" not in health
    assert health["cost_stats_24h"] == {
        "total_cost": 0,
        "currency": "USD",
        "requests": 0,
        "errors": 0,
        "unpriced_requests": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "provider_costs": {},
        "model_costs": {},
        "unconverted": {},
    }


def test_health_totals_equal_the_record_file_and_survive_a_restart(
    launch: ProxyLauncher, config: Path, stub: UpstreamStub
) -> None:
    proxy = launch(config)
    make_calls(proxy, stub)

    stats = proxy.health()["cost_stats_24h"]
    assert set(stats) == STATS_KEYS
    assert_stats(stats, expected_stats())
    assert_stats(stats, stats_from_file(proxy.records_path))

    # uvicorn ends a clean shutdown by re-raising the SIGTERM it was stopped with.
    assert proxy.stop() in (0, -signal.SIGTERM)
    restarted = launch(config)
    assert_stats(restarted.health()["cost_stats_24h"], expected_stats())


def record_at(moment: datetime, cost: float, tokens: int) -> dict[str, Any]:
    """A whole v1 record stamped `moment`, as an earlier run of the proxy wrote it."""
    return {
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "request_id": "chatcmpl-old",
        "user_id": "anonymous",
        "ip_address": "127.0.0.1",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "is_streaming": False,
        "input_tokens": tokens,
        "output_tokens": tokens,
        "total_tokens": 2 * tokens,
        "input_cost": cost / 2,
        "output_cost": cost / 2,
        "total_cost": cost,
        "finish_reason": "stop",
        "v": 1,
        "response_model": "gpt-4o",
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "currency": "USD",
        "priced": True,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
        "duration_ms": 12.5,
        "ttfb_ms": 10.0,
        "proxy_request_id": f"old-{tokens}",
        "session_id": None,
        "task_type": None,
    }


def test_health_counts_only_the_last_24_hours_of_the_file(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    lines = [record_at(now - timedelta(hours=25), 1.0, 1000), record_at(now - timedelta(hours=23), 2.0, 10)]
    launch.records_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proxy = launch(make_config())
    stub.push(Reply(body=completion("gpt-4o-mini", 100, 50)))
    proxy.post_json("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    proxy.wait_records(3)

    assert_stats(
        proxy.health()["cost_stats_24h"],
        {
            "total_cost": float(Decimal("2.0") + GPT_4O_MINI_COST),
            "requests": 2,
            "errors": 0,
            "input_tokens": 10 + 100,
            "output_tokens": 10 + 50,
            "total_tokens": 20 + 150,
            "provider_costs": {"openai": float(Decimal("2.0") + GPT_4O_MINI_COST)},
            "model_costs": {"openai/gpt-4o": 2.0, "openai/gpt-4o-mini": float(GPT_4O_MINI_COST)},
        },
    )


def test_health_and_the_report_leave_out_a_record_whose_timestamp_is_not_a_time(
    launch: ProxyLauncher, make_config: MakeConfig
) -> None:
    now = datetime.now(UTC)
    good = [record_at(now - timedelta(hours=2), 2.0, 10), record_at(now - timedelta(hours=1), 0.5, 100)]
    # Whole records but for the stamp: "yesterday" sorts after every time, so /health never let it go.
    stamps = ("yesterday", "2026-13-45T99:99:99Z")
    bad = [record_at(now, 5.0, 1000) | {"timestamp": stamp} for stamp in stamps]
    launch.records_path.write_text("".join(json.dumps(line) + "\n" for line in [good[0], *bad, good[1]]))
    config = make_config()
    proxy = launch(config)

    health = proxy.health()["cost_stats_24h"]
    report = subprocess.run(
        [sys.executable, "scripts/analyze_costs.py", "--config", str(config)]
        + ["--file", str(launch.records_path), "--all", "--format", "json"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    )
    document = json.loads(report.stdout)
    totals = document["totals"]

    assert document["skipped_lines"] == 2
    assert (health["requests"], totals["requests"]) == (2, 2)
    for key in ("errors", "input_tokens", "output_tokens", "total_tokens"):
        assert health[key] == totals[key], key
    assert health["total_tokens"] == 20 + 200
    assert health["total_cost"] == totals["cost"] == 2.5
    assert health["model_costs"] == {"openai/gpt-4o": 2.5}


def test_every_worker_reports_the_totals_of_all_workers(
    launch: ProxyLauncher, config: Path, stub: UpstreamStub
) -> None:
    proxy = launch(config, workers=2)
    wait_until(lambda: proxy.log().count("Application startup complete.") == 2, "both workers to start")
    stub.always(Reply(body=completion("gpt-4o-mini", 100, 50)))
    # Concurrent calls and questions, each on its own connection, so that both workers take some.
    with ThreadPoolExecutor(max_workers=6) as pool:
        calls = list(
            pool.map(lambda _: proxy.post_json("/v1/chat/completions", {"model": "gpt-4o-mini"}), range(12))
        )
        assert [call.status for call in calls] == [200] * 12
        proxy.wait_records(12)
        answers = list(pool.map(lambda _: proxy.health()["cost_stats_24h"], range(24)))

    for stats in answers:
        assert_stats(
            stats,
            {
                "total_cost": float(12 * GPT_4O_MINI_COST),
                "requests": 12,
                "errors": 0,
                "input_tokens": 1200,
                "output_tokens": 600,
                "total_tokens": 1800,
                "model_costs": {"openai/gpt-4o-mini": float(12 * GPT_4O_MINI_COST)},
            },
        )


@pytest.fixture
def models_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    return launch(
        make_config(
            providers={
                "openai": {"models": {"shared-model": {"pricing": GPT_4O_MINI}}},
                "azure": {
                    "base_url": f"http://127.0.0.1:{stub.port}/azure",
                    "models": {
                        "shared-model": {"pricing": GPT_4O_MINI},
                        "azure-only": {"pricing": GPT_4O_MINI},
                    },
                },
            }
        )
    )


def listed(response_body: dict[str, Any]) -> set[tuple[str, str]]:
    assert response_body["object"] == "list"
    assert all(entry["object"] == "model" for entry in response_body["data"])
    return {(entry["id"], entry["owned_by"]) for entry in response_body["data"]}


def test_v1_models_lists_every_provider_with_shared_names_prefixed(models_proxy: RunningProxy) -> None:
    response = models_proxy.request("GET", "/v1/models")

    assert response.status == 200
    assert listed(response.json()) == {
        ("gpt-4o", "openai"),
        ("gpt-4o-mini", "openai"),
        ("openai/shared-model", "openai"),
        ("azure/shared-model", "azure"),
        ("azure-only", "azure"),
    }
    assert len(response.json()["data"]) == 5
    with models_proxy.client() as client:
        assert {model.id for model in client.models.list()} == {
            "gpt-4o",
            "gpt-4o-mini",
            "openai/shared-model",
            "azure/shared-model",
            "azure-only",
        }


def test_provider_models_lists_its_models_as_configured(models_proxy: RunningProxy) -> None:
    openai = models_proxy.request("GET", "/openai/v1/models")
    azure = models_proxy.request("GET", "/azure/v1/models")

    assert (openai.status, azure.status) == (200, 200)
    assert listed(openai.json()) == {
        ("gpt-4o", "openai"),
        ("gpt-4o-mini", "openai"),
        ("shared-model", "openai"),
    }
    assert listed(azure.json()) == {("shared-model", "azure"), ("azure-only", "azure")}
    assert models_proxy.request("GET", "/nope/v1/models").status == 404


def test_health_answers_another_method_with_an_openai_shaped_405(proxy: RunningProxy) -> None:
    response = proxy.request("POST", "/health", b"{}", {"content-type": "application/json"})

    assert (response.status, set((response.header("allow") or "").split(", "))) == (405, {"GET", "HEAD"})
    assert response.json()["error"]["code"] == "method_not_allowed"
    missing = proxy.request("GET", "/nope/v1/models").json()["error"]
    assert (missing["code"], missing["message"]) == ("not_found", "no provider 'nope' is configured")
