"""`meterproxy reprice --file F --config C [--output OUT]`: a copy of a record file priced with config C.

Every record is re-priced from its own provider, model, response_model and token fields; costs, priced,
price and currency are replaced and nothing else changes; lines that are not records are copied as they are;
F is left untouched.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import MakeConfig, ProxyLauncher, only, pick, price_of, proxy_env, read_records
from test_providers import all_providers, costs, fixture
from upstream_stub import Reply, Stream, UpstreamStub

REPRICED_FIELDS = ("input_cost", "output_cost", "total_cost", "priced", "price", "currency")
TORN_LINE = b'{"timestamp": "2026-11-23T09:14:07.118204Z", "request_id": "chatcmpl-to'
NOT_JSON = b"meterproxy restarted here"

CONFIG: dict[str, Any] = {
    "currency": "USD",
    "providers": {
        "openai": {
            "base_url": "https://api.openai.com/v1",
            "models": {
                "gpt-4o": {"pricing": {"input": 2.50, "output": 10.00, "cached_input": 1.25}},
                "gpt-4o-mini": {"pricing": {"input": 0.15, "output": 0.60}},
            },
        },
        "anthropic": {
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com/v1",
            "models": {
                "claude-sonnet-4-6": {
                    "pricing": {
                        "input": 3.00,
                        "output": 15.00,
                        "cached_input": 0.30,
                        "cache_write": 3.75,
                        "cache_write_1h": 6.00,
                    }
                }
            },
        },
        "gemini": {
            "kind": "gemini",
            "base_url": "https://generativelanguage.googleapis.com/v1beta/openai",
            "models": {
                "gemini-2.5-pro": {
                    "pricing": {
                        "input": 1.25,
                        "output": 10.0,
                        "cached_input": 0.3125,
                        "tiers": [
                            {
                                "above_input_tokens": 200000,
                                "input": 2.50,
                                "output": 15.0,
                                "cached_input": 0.625,
                            }
                        ],
                    }
                }
            },
        },
        "dashscope": {
            "base_url": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "models": {"qwen-plus": {"pricing": {"input": 0.40, "output": 1.20, "cached_input": 0.08}}},
        },
        "dashscope-cn": {
            "base_url": "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "currency": "CNY",
            "models": {"qwen-plus": {"pricing": {"input": 0.80, "output": 2.00, "cached_input": 0.16}}},
        },
    },
}


def record(**fields: Any) -> dict[str, Any]:
    """A record as the proxy writes it; `fields` replace the defaults (a priced gpt-4o call)."""
    base: dict[str, Any] = {
        "timestamp": "2026-11-23T09:14:07.118204Z",
        "request_id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "user_id": "key:1b4f0e9851971998",
        "ip_address": "127.0.0.1",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "is_streaming": False,
        "input_tokens": 1000,
        "output_tokens": 500,
        "total_tokens": 1500,
        "input_cost": 0.0045,
        "output_cost": 0.0075,
        "total_cost": 0.012,
        "finish_reason": "stop",
        "v": 1,
        "response_model": "gpt-4o-2024-08-06",
        "cached_input_tokens": 200,
        "cache_write_tokens": 0,
        "reasoning_tokens": 64,
        "currency": "USD",
        "priced": True,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
        "duration_ms": 812.417,
        "ttfb_ms": 640.022,
        "proxy_request_id": "5f0c1e2d3b4a596877a6b5c4",
        "session_id": "sess-42",
        "task_type": "summarise",
        "provider_reported_cost": None,
        "price": {"input": 4.5, "output": 15.0, "cached_input": 4.5, "cache_write": 4.5, "tier": None},
        "cache_write_1h_tokens": 0,
    }
    return {**base, **fields}


def applied(
    input: float, output: float, cached_input: float, cache_write: float, **more: float | None
) -> dict[str, Any]:
    """A record's `price`: its 1-hour cache-write price is cache_write unless `more` says otherwise."""
    return {
        "input": input,
        "output": output,
        "cached_input": cached_input,
        "cache_write": cache_write,
        "tier": None,
        "cache_write_1h": cache_write,
        **more,
    }


def without_usage(request_id: str, status_code: int, cost: float | None, **fields: Any) -> dict[str, Any]:
    """A gpt-4o call recorded without usage (refused, or never sent), its costs written as `cost`."""
    return record(
        request_id=request_id,
        proxy_request_id=request_id,
        response_model=None,
        input_tokens=0,
        output_tokens=0,
        total_tokens=0,
        cached_input_tokens=0,
        reasoning_tokens=0,
        input_cost=cost,
        output_cost=cost,
        total_cost=cost,
        finish_reason=None,
        usage_source="none",
        status_code=status_code,
        **({"price": None} if cost is None else {}),
        **fields,
    )


def legacy(line: dict[str, Any]) -> dict[str, Any]:
    """The same record as written before price provenance: no `price`, `provider_reported_cost` or
    `cache_write_1h_tokens`."""
    dropped = ("price", "provider_reported_cost", "cache_write_1h_tokens")
    return {key: value for key, value in line.items() if key not in dropped}


ANTHROPIC = {
    "request_id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "provider": "anthropic",
    "model": "claude-sonnet-4-6",
    "endpoint": "/anthropic/v1/messages",
    "response_model": "claude-sonnet-4-6",
    "input_tokens": 10000,
    "output_tokens": 742,
    "total_tokens": 10742,
    "cached_input_tokens": 6000,
    "cache_write_tokens": 3000,
    "reasoning_tokens": 0,
    "finish_reason": "end_turn",
}


# What config C makes of a gpt-4o call without usage: costs 0 at its prices.
COSTS_NOTHING = (
    {"input_cost": 0.0, "output_cost": 0.0, "total_cost": 0.0},
    applied(2.5, 10.0, 1.25, 2.5),
    "USD",
)

# Each record and what config C makes of it: (costs, price, currency), or None when it stays unpriced.
CASES: list[tuple[dict[str, Any], tuple[dict[str, float], dict[str, Any], str] | None]] = [
    (
        # Priced before at wrong prices: (1000 - 200) * 2.50 + 200 * 1.25 + 500 * 10.00 per 1M.
        record(),
        (
            costs([(800, "2.50"), (200, "1.25")], [(500, "10.00")]),
            applied(2.5, 10.0, 1.25, 2.5),
            "USD",
        ),
    ),
    (
        # A line written before this issue, with Anthropic's cache parts inside input_tokens, and before
        # 1-hour cache writes were counted apart: its writes are priced at cache_write, as they were.
        # (10000 - 6000 - 3000) * 3.00 + 6000 * 0.30 + 3000 * 3.75 + 742 * 15.00 per 1M.
        legacy(record(**ANTHROPIC)),
        (
            costs([(1000, "3.00"), (6000, "0.30"), (3000, "3.75")], [(742, "15.00")]),
            applied(3.0, 15.0, 0.3, 3.75, cache_write_1h=6.0),
            "USD",
        ),
    ),
    (
        # 2000 of its 3000 cache writes with a 1-hour TTL, at their own price:
        # 1000 * 3.00 + 6000 * 0.30 + 1000 * 3.75 + 2000 * 6.00 + 742 * 15.00 per 1M.
        record(**ANTHROPIC, cache_write_1h_tokens=2000),
        (
            costs([(1000, "3.00"), (6000, "0.30"), (1000, "3.75"), (2000, "6.00")], [(742, "15.00")]),
            applied(3.0, 15.0, 0.3, 3.75, cache_write_1h=6.0),
            "USD",
        ),
    ),
    (
        # Unpriced before; now priced by its response model without the date: 200 * 0.15 + 100 * 0.60 per 1M.
        record(
            model="latest-small",
            response_model="gpt-4o-mini-2024-07-18",
            input_tokens=200,
            output_tokens=100,
            total_tokens=300,
            cached_input_tokens=0,
            reasoning_tokens=0,
            input_cost=None,
            output_cost=None,
            total_cost=None,
            priced=False,
            price=None,
        ),
        (
            costs([(200, "0.15")], [(100, "0.60")]),
            applied(0.15, 0.6, 0.15, 0.15),
            "USD",
        ),
    ),
    (
        # Over 200K input, the whole call at the tier: (250000 - 50000) * 2.50 + 50000 * 0.625 + 1000 * 15.0.
        record(
            provider="gemini",
            model="gemini-2.5-pro",
            endpoint="/gemini/v1beta/models/gemini-2.5-pro:generateContent",
            response_model="gemini-2.5-pro",
            input_tokens=250000,
            output_tokens=1000,
            total_tokens=251000,
            cached_input_tokens=50000,
            reasoning_tokens=700,
        ),
        (
            costs([(200000, "2.50"), (50000, "0.625")], [(1000, "15.0")]),
            applied(2.5, 15.0, 0.625, 2.5, tier=200000),
            "USD",
        ),
    ),
    (
        # The same model name under two providers: each record at its own provider's price.
        # (3019 - 2048) * 0.40 + 2048 * 0.08 + 104 * 1.20 per 1M, in USD.
        record(
            provider="dashscope",
            model="qwen-plus",
            response_model="qwen-plus",
            input_tokens=3019,
            output_tokens=104,
            total_tokens=3123,
            cached_input_tokens=2048,
            reasoning_tokens=0,
        ),
        (
            costs([(971, "0.40"), (2048, "0.08")], [(104, "1.20")]),
            applied(0.4, 1.2, 0.08, 0.4),
            "USD",
        ),
    ),
    (
        # (3019 - 2048) * 0.80 + 2048 * 0.16 + 104 * 2.00 per 1M, in CNY (recorded as USD before).
        record(
            provider="dashscope-cn",
            model="qwen-plus",
            response_model="qwen-plus",
            input_tokens=3019,
            output_tokens=104,
            total_tokens=3123,
            cached_input_tokens=2048,
            reasoning_tokens=0,
        ),
        (
            costs([(971, "0.80"), (2048, "0.16")], [(104, "2.00")]),
            applied(0.8, 2.0, 0.16, 0.8),
            "CNY",
        ),
    ),
    # Refused by the provider: no tokens, so nothing is billed at the new prices either.
    (without_usage("5f0c1e2d3b4a596877a6b5c5", 429, 0.0), COSTS_NOTHING),
    # No upstream slot came free, or no connection could be made: it never reached the provider, so it
    # costs 0 (recorded as unknown before that was known).
    (without_usage("6a1d2f3e4c5b6a7988b7c6d6", 503, None, error="pool_timeout"), COSTS_NOTHING),
    (without_usage("7b2e3f4d5c6b7a8998c8d7e7", 502, None, error="upstream_unreachable"), COSTS_NOTHING),
    # Its client left before it was sent (waiting for an upstream slot): the writer knew it cost
    # nothing, and its 0 stays (a 499 that reached the provider is written with costs null).
    (without_usage("8c3f4a5e6d7c8b9aa9d9e8f8", 499, 0.0, error="client_disconnected"), COSTS_NOTHING),
    # A model config C does not price, and a provider config C does not have: both stay unpriced.
    (record(model="mystery-model", response_model="mystery-model"), None),
    (record(provider="hunyuan", model="hunyuan-turbos-latest", response_model="hunyuan-turbos-latest"), None),
]
REPRICED_COUNT = sum(1 for _, outcome in CASES if outcome is not None)
UNPRICED_COUNT = len(CASES) - REPRICED_COUNT


def write_lines(path: Path, lines: list[bytes]) -> bytes:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(data)
    return data


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
    return path


def reprice(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "reprice", *args],
        cwd=tmp_path,
        env=proxy_env(tmp_path / "not-used.jsonl"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def numbers_in(text: str, *paths: Path) -> list[int]:
    """The whole numbers a message states, once the file paths in it are taken out."""
    for path in paths:
        text = text.replace(str(path), "")
    return [int(number) for number in re.findall(r"(?<![\w.])\d+(?![\w.])", text)]


def test_reprice_writes_a_repriced_copy_and_leaves_the_file_untouched(tmp_path: Path) -> None:
    records_path = tmp_path / "cost.jsonl"
    lines = [json.dumps(line).encode() for line, _ in CASES]
    original = write_lines(records_path, [lines[0], TORN_LINE, *lines[1:4], NOT_JSON, *lines[4:]])
    config = write_config(tmp_path / "corrected.yml", CONFIG)

    result = reprice(tmp_path, "--file", str(records_path), "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert records_path.read_bytes() == original
    output = tmp_path / "cost.repriced.jsonl"
    written = output.read_bytes().split(b"\n")
    assert written[-1] == b""
    # Lines that are not records are copied as they are, in their places.
    assert (written[1], written[5]) == (TORN_LINE, NOT_JSON)
    repriced = [json.loads(line) for index, line in enumerate(written[:-1]) if index not in (1, 5)]
    assert len(repriced) == len(CASES)
    for (before, outcome), after in zip(CASES, repriced, strict=True):
        unchanged = {key: value for key, value in before.items() if key not in REPRICED_FIELDS}
        assert {key: value for key, value in after.items() if key not in REPRICED_FIELDS} == unchanged
        if outcome is None:
            expected: dict[str, Any] = {
                "input_cost": None,
                "output_cost": None,
                "total_cost": None,
                "priced": False,
                "price": None,
            }
        else:
            cost, price, currency = outcome
            expected = {**cost, "priced": True, "price": price, "currency": currency}
        assert {key: after.get(key, "<missing>") for key in expected} == expected, before["provider"]
    assert sorted(numbers_in(result.stdout, records_path, output, config)) == sorted(
        [REPRICED_COUNT, UNPRICED_COUNT]
    ), result.stdout


def test_reprice_output_option_names_the_copy(tmp_path: Path) -> None:
    records_path = tmp_path / "cost.jsonl"
    write_lines(records_path, [json.dumps(record()).encode()])
    config = write_config(tmp_path / "corrected.yml", CONFIG)
    output = tmp_path / "out" / "fixed.jsonl"
    output.parent.mkdir()

    result = reprice(tmp_path, "--file", str(records_path), "--config", str(config), "--output", str(output))

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cost.repriced.jsonl").exists()
    # (1000 - 200) * 2.50 + 200 * 1.25 + 500 * 10.00 per 1M
    assert only(read_records(output))["total_cost"] == 0.00725
    assert result.stdout == f"1 record repriced, 0 unpriced, written to {output}\n"


def test_reprice_of_a_rotated_gz_file_writes_a_repriced_gz_copy(tmp_path: Path) -> None:
    # The rotated logs the reports read (cost.jsonl.1.gz) were copied with their old prices, as lines that
    # were not records, and reprice said "0 records repriced, 0 unpriced" and exited 0.
    records_path = tmp_path / "cost.jsonl.1.gz"
    original = gzip.compress(json.dumps(record()).encode() + b"\n" + NOT_JSON + b"\n")
    records_path.write_bytes(original)
    config = write_config(tmp_path / "corrected.yml", CONFIG)
    plain = tmp_path / "plain.jsonl"

    for args, output in (([], tmp_path / "cost.jsonl.1.repriced.gz"), (["--output", str(plain)], plain)):
        result = reprice(tmp_path, "--file", str(records_path), "--config", str(config), *args)

        assert (result.returncode, result.stderr) == (0, ""), output
        assert result.stdout == f"1 record repriced, 0 unpriced, written to {output}\n"
        written = output.read_bytes()
        lines = (gzip.decompress(written) if output.suffix == ".gz" else written).split(b"\n")
        assert json.loads(lines[0])["total_cost"] == 0.00725
        assert lines[1:] == [NOT_JSON, b""]
    assert records_path.read_bytes() == original


def test_reprice_of_a_truncated_gz_file_exits_2_with_one_line(tmp_path: Path) -> None:
    records_path = tmp_path / "cost.jsonl.1.gz"
    records_path.write_bytes(gzip.compress(json.dumps(record()).encode() + b"\n" * 1000)[:-12])
    config = write_config(tmp_path / "corrected.yml", CONFIG)

    result = reprice(tmp_path, "--file", str(records_path), "--config", str(config))

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cost.jsonl.1.gz" in result.stderr, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corrected.yml", "cost.jsonl.1.gz"]


def test_reprice_that_cannot_write_its_copy_names_it_and_leaves_no_part_of_it(tmp_path: Path) -> None:
    records_path = tmp_path / "cost.jsonl"
    write_lines(records_path, [json.dumps(record()).encode()] * 2000)
    config = write_config(tmp_path / "corrected.yml", CONFIG)

    # `python -m proxy reprice` whose files stop at 64 KiB: a write past that fails (EFBIG).
    limited = (
        "import resource, runpy; resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
        "runpy.run_module('proxy', run_name='__main__', alter_sys=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", limited, "reprice", "--file", str(records_path), "--config", str(config)],
        cwd=tmp_path,
        env=proxy_env(tmp_path / "not-used.jsonl"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    copy = tmp_path / "cost.repriced.jsonl"
    assert result.stderr == f"meterproxy reprice: {copy}: file too large\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corrected.yml", "cost.jsonl"]


def test_reprice_of_a_record_of_the_first_writer_prices_its_usage(tmp_path: Path) -> None:
    # The first records had 15 fields and no usage_source: their tokens came from the provider.
    first = {key: value for key, value in record().items() if key in list(record())[:15]}
    records_path = tmp_path / "cost.jsonl"
    write_lines(records_path, [json.dumps(first).encode()])
    config = write_config(tmp_path / "corrected.yml", CONFIG)

    result = reprice(tmp_path, "--file", str(records_path), "--config", str(config))

    assert (result.returncode, result.stderr) == (0, "")
    after = only(read_records(tmp_path / "cost.repriced.jsonl"))
    # 1000 * 2.50 + 500 * 10.00 per 1M
    assert (after["input_cost"], after["output_cost"], after["total_cost"]) == (0.0025, 0.005, 0.0075)
    assert (after["priced"], price_of(after)["input"], price_of(after)["output"]) == (True, 2.5, 10.0)


def test_reprice_with_a_config_naming_an_unset_key_variable_reprices(tmp_path: Path) -> None:
    # The proxy's own config may take its keys from variables only the server sets; prices need none.
    openai = {**CONFIG["providers"]["openai"], "api_key": "${REPRICE_TEST_UNSET_KEY}"}
    config = write_config(tmp_path / "proxy.yml", {**CONFIG, "providers": {"openai": openai}})
    records_path = tmp_path / "cost.jsonl"
    write_lines(records_path, [json.dumps(record()).encode()])

    result = reprice(tmp_path, "--file", str(records_path), "--config", str(config))

    assert (result.returncode, result.stderr) == (0, "")
    assert only(read_records(tmp_path / "cost.repriced.jsonl"))["total_cost"] == 0.00725


def test_reprice_of_a_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "corrected.yml", CONFIG)
    missing = tmp_path / "nope.jsonl"

    result = reprice(tmp_path, "--file", str(missing), "--config", str(config))

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nope.jsonl" in result.stderr
    assert list(tmp_path.iterdir()) == [config]


def test_reprice_names_the_option_whose_path_is_wrong_and_writes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "corrected.yml", CONFIG)
    records_path = tmp_path / "cost.jsonl"
    write_lines(records_path, [json.dumps(record()).encode()])
    missing = tmp_path / "nope"

    for args, line in (
        (
            ["--file", str(records_path), "--config", str(missing / "new.yml")],
            f"--config {missing / 'new.yml'}: no such file; give the config with the prices to apply",
        ),
        (
            ["--file", str(missing / "cost.jsonl"), "--config", str(config)],
            f"--file {missing / 'cost.jsonl'}: no such file; give the record file to re-price",
        ),
        (
            ["--file", str(records_path), "--config", str(config), "--output", str(missing / "out.jsonl")],
            f"--output {missing / 'out.jsonl'}: there is no folder {missing}; "
            "create it or choose another --output",
        ),
    ):
        result = reprice(tmp_path, *args)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.splitlines() == [f"meterproxy reprice: {line}"]
    assert sorted(tmp_path.iterdir()) == sorted([config, records_path])


def test_reprice_without_its_options_exits_2_with_one_line_naming_them(tmp_path: Path) -> None:
    result = reprice(tmp_path, "--file", str(tmp_path / "cost.jsonl"))

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "meterproxy reprice: the following arguments are required: --config (see --help)"
    ]


def test_reprice_of_a_folder_or_to_a_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "corrected.yml", CONFIG)
    records_path = tmp_path / "cost.jsonl"
    write_lines(records_path, [json.dumps(record()).encode()])
    folder = tmp_path / "logs"
    folder.mkdir()

    for args, message in (
        (["--file", str(folder)], f"--file {folder} is a folder; give the record file to re-price"),
        (["--file", str(records_path), "--output", str(folder)], f"--output {folder} is a folder"),
    ):
        result = reprice(tmp_path, *args, "--config", str(config))
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.startswith(f"meterproxy reprice: {message}")
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert sorted(tmp_path.iterdir()) == sorted([config, records_path, folder])
    assert list(folder.iterdir()) == []


def test_reprice_with_the_proxys_own_config_changes_no_record_it_wrote(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, tmp_path: Path
) -> None:
    providers = all_providers(stub)
    config = make_config(providers=providers)
    proxy = launch(config)
    # 2000 of the Anthropic call's 3000 cache writes are 1-hour ones, priced apart from the others.
    anthropic_body = fixture("anthropic_messages.json").replace(
        b'"ephemeral_5m_input_tokens":3000,"ephemeral_1h_input_tokens":0',
        b'"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000',
    )
    stub.push(
        Reply(body=anthropic_body),
        Stream([fixture("responses_stream.sse")]),
        Reply(body=fixture("gemini_generate_content.json")),
        Reply(body=fixture("hunyuan_chat.json")),
    )
    proxy.post_json(
        "/anthropic/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": []}
    )
    proxy.post_json("/v1/responses", {"model": "gpt-5", "input": "hi", "stream": True})
    proxy.post_json("/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []})
    proxy.post_json("/hunyuan/v1/chat/completions", {"model": "hunyuan-turbos-latest", "messages": []})
    written = proxy.wait_records(4)
    proxy.stop()

    result = reprice(tmp_path, "--file", str(proxy.records_path), "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert read_records(tmp_path / "records.repriced.jsonl") == written
    # Then with Anthropic's price corrected: only that record changes, by the hand-computed amount.
    # A copy: the pricing is test_providers' own, shared with the tests that run after this one.
    model = providers["anthropic"]["models"]["claude-sonnet-4-6"]
    model["pricing"] = {**model["pricing"], "cached_input": 0.15}
    corrected = make_config(providers=providers)
    result = reprice(
        tmp_path, "--file", str(proxy.records_path), "--config", str(corrected), "--output", "b.jsonl"
    )

    assert result.returncode == 0, result.stderr
    anthropic, *others = read_records(tmp_path / "b.jsonl")
    assert others == written[1:]
    # (10000 - 6000 - 3000) * 3.00 + 6000 * 0.15 + 1000 * 3.75 + 2000 * 6.00 + 742 * 15.00 per 1M
    expected = costs([(1000, "3.00"), (6000, "0.15"), (1000, "3.75"), (2000, "6.00")], [(742, "15.00")])
    assert pick(anthropic, expected) == expected
    assert price_of(anthropic)["cached_input"] == 0.15
