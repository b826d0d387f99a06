"""The processes the benchmark runs: tools it needs, the servers under test, and their configs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import bench_nginx

_APT_PACKAGES = ("nginx", "libnginx-mod-http-echo", "wrk")
MODEL = "gpt-4o-mini"


def ensure_tools() -> None:
    """Install nginx, its echo module and wrk with apt-get when any is missing (and say so)."""
    missing = [name for name in ("nginx", "wrk", "taskset") if shutil.which(name) is None]
    try:
        bench_nginx.echo_module()
    except FileNotFoundError:
        missing.append("nginx echo module")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"missing {', '.join(missing)}: install {' '.join(_APT_PACKAGES)} (Debian/Ubuntu)")
    print(f"missing {', '.join(missing)}: installing {' '.join(_APT_PACKAGES)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *_APT_PACKAGES]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A server started as a child in its own process group, its output in a log file; stopped by its id."""

    def __init__(
        self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, url: str, timeout_s: float) -> None:
        """Poll `url` until it answers 200; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout_s:g}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group we created: workers go too
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_nginx(name: str, config: str, workdir: Path, cpus: str) -> Server:
    path = workdir / f"{name}.conf"
    path.write_text(config)
    cmd = ["taskset", "-c", cpus, "nginx", "-p", str(workdir), "-c", str(path)]
    return Server(name, cmd, workdir / f"{name}.log")


def meterproxy_config(
    mock: bench_nginx.MockPorts, record_file: Path, metering: bool, client: str | None = None
) -> str:
    """A config with one provider per mock upstream, all pricing the benchmark's model; `client` picks
    the upstream HTTP client (server.upstream_client) instead of meterproxy's default. Without
    `metering`, neither records nor costs in answers: the proxy forwards without reading usage."""
    providers = "".join(
        f"""  {name}:
    base_url: http://127.0.0.1:{port}/v1
    models:
      {MODEL}:
        pricing: {{input: 0.15, output: 0.60}}
"""
        for name, port in (("mock", mock.json), ("mockstream", mock.stream), ("mockslow", mock.slow))
    )
    server = f"server:\n  upstream_client: {client}\n" if client else ""
    return f"""{server}currency: USD
features:
  cost_tracking:
    enabled: {"true" if metering else "false"}
    file: {record_file}
  cost_in_response: {{enabled: {"true" if metering else "false"}}}
providers:
{providers}"""


def start_meterproxy(
    name: str,
    repo: Path,
    workdir: Path,
    mock: bench_nginx.MockPorts,
    workers: int,
    cpus: str,
    metering: bool,
    client: str | None = None,
) -> tuple[Server, int, Path]:
    """`python -m proxy serve` from the checkout; returns the server, its port and its record file."""
    port = free_port()
    record_file = workdir / f"{name}-records.jsonl"
    config = workdir / f"{name}-config.yml"
    config.write_text(meterproxy_config(mock, record_file, metering, client))
    serve = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    cmd = [
        "taskset",
        "-c",
        cpus,
        *serve,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "COST_TRACKING_FILE": str(record_file), "PYTHONPATH": str(repo)}
    # From the checkout's root, `python -m proxy` runs this checkout's package, not an installed one.
    server = Server(name, cmd, workdir / f"{name}.log", env, cwd=repo)
    server.wait_ready(f"http://127.0.0.1:{port}/health", timeout_s=60)
    return server, port, record_file


def litellm_config(mock: bench_nginx.MockPorts) -> str:
    """LiteLLM routes by model name only, so each mock upstream gets its own alias of the same model."""
    entries = "".join(
        f"""  - model_name: {alias}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{port}/v1
      api_key: sk-bench
"""
        for alias, port in (
            (MODEL, mock.json),
            (f"{MODEL}-stream", mock.stream),
            (f"{MODEL}-slow", mock.slow),
        )
    )
    # LiteLLM refuses to start without a master key; the benchmark's clients send this one.
    return f"model_list:\n{entries}general_settings:\n  master_key: sk-bench\n"


def ensure_litellm(venv: Path) -> Path:
    """LiteLLM's proxy in its own venv (created and installed once, then reused); returns its `litellm`."""
    litellm = venv / "bin" / "litellm"
    if litellm.exists():
        return litellm
    print(f"installing LiteLLM's proxy into a throwaway venv ({venv.name}); this takes a minute", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "litellm[proxy]"]
    subprocess.run(pip, check=True)
    return litellm


def start_litellm(
    name: str, litellm: Path, workdir: Path, mock: bench_nginx.MockPorts, workers: int, cpus: str
) -> tuple[Server, int]:
    """LiteLLM's own CLI (`litellm --config X --port P --num_workers N`), offline."""
    port = free_port()
    config = workdir / f"{name}-config.yml"
    config.write_text(litellm_config(mock))
    serve = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd = ["taskset", "-c", cpus, *serve, "--num_workers", str(workers)]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    server = Server(name, cmd, workdir / f"{name}.log", env)
    server.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", timeout_s=180)
    return server, port


def package_version(python: Path | str, package: str) -> str | None:
    probe = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None
