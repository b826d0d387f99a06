"""`meterproxy serve` and `python -m proxy serve`: help, where the config comes from, refusing a bad one."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, MakeConfig, ProxyLauncher, free_port, proxy_env

from proxy.cli import startup_warnings
from proxy.configfile import load_config

GOOD = """\
server:
  host: 127.0.0.1
providers:
  openai:
    base_url: http://127.0.0.1:9/v1
    models:
      gpt-4o:
        pricing:
          input: 2.50
          output: 10.00
"""

# name: (config text, patterns its one-line error message must contain)
BAD_CONFIGS = {
    "bad yaml": (
        GOOD.replace("base_url: http://127.0.0.1:9/v1", 'base_url: "http://127.0.0.1:9/v1'),
        [r"line \d+"],
    ),
    "unknown key": (
        GOOD.replace("    models:", "    modles:"),
        [r"providers\.openai\.modles\b", r"line 6\b"],
    ),
    "negative price": (
        GOOD.replace("input: 2.50", "input: -2.50"),
        [r"providers\.openai\.models\.gpt-4o\.pricing\.input\b", r"line 9\b"],
    ),
    "price not a number": (
        GOOD.replace("input: 2.50", "input: cheap"),
        [r"providers\.openai\.models\.gpt-4o\.pricing\.input\b", r"line 9\b"],
    ),
    "missing base_url": (
        GOOD.replace("    base_url: http://127.0.0.1:9/v1\n", ""),
        [r"providers\.openai\.base_url\b"],
    ),
    "unset variable": (
        GOOD.replace("    models:", "    api_key: ${METERPROXY_TEST_UNSET}\n    models:"),
        [r"providers\.openai\.api_key\b", r"line 6\b", r"METERPROXY_TEST_UNSET"],
    ),
}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_config_stops_start_up_with_one_line_naming_the_key(tmp_path: Path, case: str) -> None:
    text, patterns = BAD_CONFIGS[case]
    config = tmp_path / "config.yml"
    config.write_text(text)

    result = run_cli(
        "serve",
        "--config",
        str(config),
        "--port",
        str(free_port()),
        env=proxy_env(tmp_path / "records.jsonl"),
    )

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for pattern in [r"config\.yml", *patterns]:
        assert re.search(pattern, lines[0]), (pattern, lines[0])


BAD_COMMAND_LINES = {
    "no command": ([], "meterproxy: the following arguments are required: {serve,report,reprice}"),
    "unknown command": (["serv"], "meterproxy: argument {serve,report,reprice}: invalid choice: 'serv'"),
    "unknown option": (["serve", "--prot", "1"], "meterproxy: unrecognized arguments: --prot 1"),
    "port not a number": (["serve", "--port", "abc"], "meterproxy serve: argument --port: 'abc'"),
    # uvicorn would listen on 70000 % 65536 = 4464, and on any free port for 0.
    "port over 65535": (["serve", "--port", "70000"], "meterproxy serve: argument --port: '70000'"),
    "port 0": (["serve", "--port", "0"], "meterproxy serve: argument --port: '0'"),
}


@pytest.mark.parametrize("case", BAD_COMMAND_LINES, ids=list(BAD_COMMAND_LINES))
def test_a_bad_command_line_exits_2_with_one_line_naming_the_option(tmp_path: Path, case: str) -> None:
    args, start = BAD_COMMAND_LINES[case]
    # Should a line start the proxy after all, it listens on a free port, never the shipped 9002.
    config = tmp_path / "config.yml"
    config.write_text(GOOD.replace("  host: 127.0.0.1\n", f"  host: 127.0.0.1\n  port: {free_port()}\n"))

    result = run_cli(*args, env=proxy_env(tmp_path / "records.jsonl", {"METERPROXY_CONFIG": str(config)}))

    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(start), result.stderr
    assert result.stderr.endswith("(see --help)\n")


def test_help_describes_serve() -> None:
    top = run_cli("--help")
    serve = run_cli("serve", "--help")

    assert (top.returncode, serve.returncode) == (0, 0)
    assert "serve" in top.stdout
    for option in ("--config", "--host", "--port", "--workers"):
        assert option in serve.stdout


def test_console_script_runs() -> None:
    script = Path(sys.executable).parent / "meterproxy"
    assert script.exists(), "the meterproxy console script is not installed: pip install -e '.[test]'"

    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_meterproxy_config_names_the_config_file(launch: ProxyLauncher, make_config: MakeConfig) -> None:
    config = make_config(
        providers={
            "named-by-env": {
                "base_url": "http://127.0.0.1:9/v1",
                "models": {"env-model": {"pricing": {"input": 1, "output": 2}}},
            }
        }
    )
    proxy = launch(None, env={"METERPROXY_CONFIG": str(config)})

    models = proxy.request("GET", "/named-by-env/v1/models").json()
    assert [entry["id"] for entry in models["data"]] == ["env-model"]


def test_config_flag_wins_over_meterproxy_config(
    launch: ProxyLauncher, make_config: MakeConfig, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("providers: [")
    proxy = launch(make_config(), env={"METERPROXY_CONFIG": str(broken)})

    assert proxy.health()["status"] == "healthy"


def test_meterproxy_config_naming_a_bad_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yml"
    env = {**proxy_env(tmp_path / "records.jsonl"), "METERPROXY_CONFIG": str(missing)}

    result = run_cli("serve", "--port", str(free_port()), env=env)

    assert result.returncode != 0
    assert "nowhere.yml" in result.stderr


@pytest.mark.parametrize(
    ("edit", "host", "expected"),
    [
        ("", "127.0.0.1", []),
        ("    api_key: sk-test\n", "127.0.0.1", []),
        (
            "    api_key: sk-test\n",
            "0.0.0.0",
            [
                "providers.openai.api_key is set, auth.keys is not, and the proxy listens on 0.0.0.0: "
                "anyone who can reach the port spends that key. Add auth.keys or listen on 127.0.0.1."
            ],
        ),
        (
            "    currency: CNY\n",
            "127.0.0.1",
            [
                "providers.openai.currency is CNY, which exchange_rates has no rate for: its costs stay "
                "out of the USD totals. Add exchange_rates.CNY."
            ],
        ),
    ],
    ids=["none", "provider key on loopback", "provider key on all addresses", "currency without a rate"],
)
def test_start_up_warns_of_set_ups_that_work_but_are_probably_not_meant(
    tmp_path: Path, edit: str, host: str, expected: list[str]
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(GOOD.replace("    models:", edit + "    models:"))
    assert startup_warnings(load_config(path, {}), host) == expected


def test_start_up_warns_when_auth_keys_leave_a_provider_without_a_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(GOOD + "auth:\n  keys:\n    - {name: team-a, key: k-1}\n")
    assert startup_warnings(load_config(path, {}), "127.0.0.1") == [
        "auth.keys is set but providers.openai.api_key is not: clients' keys are not forwarded, so its "
        "calls go upstream without a key."
    ]


def test_a_currency_with_a_rate_is_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        GOOD.replace("    models:", "    currency: CNY\n    models:") + "exchange_rates: {CNY: 0.14}\n"
    )
    assert startup_warnings(load_config(path, {}), "127.0.0.1") == []


def test_a_port_in_use_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yml"
        config.write_text(GOOD)

        result = run_cli(
            "serve", "--config", str(config), "--port", str(port), env=proxy_env(tmp_path / "r.jsonl")
        )

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"meterproxy: cannot listen on 127.0.0.1:{port}: address already in use; stop what listens there, "
        "or choose another port (--port, server.port)\n"
    )
