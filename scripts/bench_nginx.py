"""nginx configs for the benchmark: the mock upstream (JSON; SSE via the echo module) and the ceiling."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

PROMPT_TOKENS = 12
COMPLETION_TOKENS = 24
STREAM_EVENTS = 24  # data events per stream, the last one carrying usage; then [DONE]
SLOW_EVENTS = 6  # events of the slow stream: the first at once, then one every 100 ms
SLOW_PAUSE_S = 0.1

_USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}
_MODEL = "gpt-4o-mini-2024-07-18"
_ECHO_MODULE_GLOBS = ("/usr/lib/nginx/modules/ngx_http_echo_module.so", "/usr/*/nginx/modules/*echo*.so")


@dataclass(frozen=True)
class MockPorts:
    json: int
    stream: int
    slow: int


def completion_body() -> str:
    """The fixed non-streamed chat completion the mock returns."""
    message = {"role": "assistant", "content": "Hello from the mock upstream."}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return _compact({**_head("chat.completion"), "choices": [choice], "usage": _USAGE})


def stream_events(count: int) -> list[str]:
    """`count` SSE data events: a role delta, content deltas, a finish, the usage-only chunk; then [DONE]."""
    chunk = _head("chat.completion.chunk")

    def choice(delta: dict[str, str], finish: str | None) -> dict[str, object]:
        return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    payloads = [choice({"role": "assistant", "content": ""}, None)]
    payloads += [choice({"content": f"tok{i} "}, None) for i in range(count - 3)]
    payloads += [choice({}, "stop"), {**chunk, "choices": [], "usage": _USAGE}]
    return [f"data: {_compact(p)}\n\n" for p in payloads] + ["data: [DONE]\n\n"]


def mock_config(workdir: Path, ports: MockPorts) -> str:
    """One nginx (one worker) serving the three mock upstreams, each on its own port."""
    body = completion_body()
    fast = _echo_lines(stream_events(STREAM_EVENTS), pause=None)
    slow = _echo_lines(stream_events(SLOW_EVENTS), pause=SLOW_PAUSE_S)
    return f"""load_module {echo_module()};
{_main(workdir, "mock")}
http {{
    {_http_common(workdir, "mock")}
    server {{
        listen 127.0.0.1:{ports.json} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {_quote(body)};
        }}
    }}
    server {{
        listen 127.0.0.1:{ports.stream} backlog=4096;
        location = /v1/chat/completions {{
            default_type text/event-stream;
{fast}
        }}
    }}
    server {{
        listen 127.0.0.1:{ports.slow} backlog=4096;
        location = /v1/chat/completions {{
            default_type text/event-stream;
{slow}
        }}
    }}
}}
"""


def ceiling_config(workdir: Path, port: int, mock: MockPorts) -> str:
    """nginx as a plain reverse proxy in front of the mock, on the same paths meterproxy serves."""
    locations = []
    for name, upstream_port in (("mock", mock.json), ("mockstream", mock.stream), ("mockslow", mock.slow)):
        locations.append(f"""
    upstream {name} {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}""")
    routes = "".join(
        f"""
        location /{name}/v1/ {{
            proxy_pass http://{name}/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}"""
        for name in ("mock", "mockstream", "mockslow")
    )
    return f"""{_main(workdir, "ceiling")}
http {{
    {_http_common(workdir, "ceiling")}
{"".join(locations)}
    server {{
        listen 127.0.0.1:{port} backlog=4096;{routes}
    }}
}}
"""


def echo_module() -> str:
    for pattern in _ECHO_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError("nginx echo module not found; install libnginx-mod-http-echo")


def _main(workdir: Path, name: str) -> str:
    return f"""daemon off;
worker_processes 1;
pid {workdir / f"{name}.pid"};
error_log {workdir / f"{name}-error.log"} warn;
events {{ worker_connections 8192; }}"""


def _http_common(workdir: Path, name: str) -> str:
    temp = "\n    ".join(
        f"{kind}_temp_path {workdir / f'{name}-{kind}'};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    {temp}"""


def _echo_lines(events: list[str], pause: float | None) -> str:
    """echo directives writing and flushing each event on its own, with `pause` seconds between them.

    The first event goes at once: a proxy that forwards it at once shows the upstream's time to first
    byte plus its own cost, one that waits for more shows the pause. (A pause before the first event
    would add the jitter of nginx's timer, milliseconds, to what is measured.)
    """
    lines = []
    for i, event in enumerate(events):
        if pause is not None and i:
            lines.append(f"echo_sleep {pause};")
        lines += [f"echo -n {_quote(event)};", "echo_flush;"]
    return "\n".join(f"            {line}" for line in lines)


def _quote(text: str) -> str:
    """An nginx single-quoted string; nginx turns the backslash escapes back into bytes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _head(kind: str) -> dict[str, object]:
    """The fields every completion or chunk starts with, in OpenAI's order."""
    return {"id": "chatcmpl-bench", "object": kind, "created": 1700000000, "model": _MODEL}


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
