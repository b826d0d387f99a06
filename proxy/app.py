"""create_app(config) -> Starlette: mounts the meter, serves /health and /v1/models; the lifespan
owns the long-lived things (the upstream client, the record writer, the rolling totals)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy import __version__
from proxy.aiohttpclient import AiohttpUpstream
from proxy.config import Config
from proxy.configfile import load_config
from proxy.errors import error_body
from proxy.http1 import HTTP1Upstream
from proxy.meter import Meter
from proxy.records import RecordWriter
from proxy.routing import Routes
from proxy.stats import RollingTotals
from proxy.stopsignals import StopSignals
from proxy.upstream import Upstream

CONFIG_ENV = "METERPROXY_CONFIG"
_CODES = {404: "not_found", 405: "method_not_allowed"}


class State(TypedDict):
    upstream: Upstream
    writer: RecordWriter
    totals: RollingTotals


class MeterProxy(Starlette):
    """Starlette for /health, /v1/models, errors and lifespan; metered calls go straight to the meter.

    Starlette's middleware and router cost a good share of a proxied call (docs/performance.md), and
    the meter needs none of them: it answers its own errors in OpenAI's shape.
    """

    def __init__(self, meter: Meter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meter = meter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _served_by_starlette(scope):
            await self.meter(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _served_by_starlette(scope: Scope) -> bool:
    path: str = scope["path"]
    # /health whatever the method (Starlette answers all but GET and HEAD with 405); a POST to
    # .../v1/models is a provider's call, and goes to the meter.
    return path == "/health" or (scope["method"] in ("GET", "HEAD") and path.endswith("/v1/models"))


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def create_app(config: Config, upstream: Upstream | None = None) -> Starlette:
    routes = Routes(config.providers)
    meter = Meter(config, routes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = upstream if upstream is not None else _upstream_client(config)
        stops = StopSignals(meter.cut)
        stops.install()
        writer = RecordWriter(config.record_file)
        totals = RollingTotals(config.record_file, config.currency, config.exchange_rates)
        if config.cost_tracking:
            writer.open()
            totals.load()
        try:
            yield {"upstream": client, "writer": writer, "totals": totals}
        finally:
            stops.uninstall()
            writer.close()
            if upstream is None:
                await client.close()

    async def health(request: Request) -> Response:
        writer: RecordWriter = request.state.writer
        totals: RollingTotals = request.state.totals
        # The writer looks first: a file moved away is followed by a new one before the totals are read.
        writing = writer.check() if config.cost_tracking else None
        body: dict[str, Any] = {
            "status": "healthy",
            "version": __version__,
            "features": {"cost_tracking": config.cost_tracking},
            "cost_stats_24h": totals.snapshot() if config.cost_tracking else None,
        }
        if config.cost_tracking:
            problems = [problem for problem in (writing, totals.problem) if problem is not None]
            body["dropped_records"] = writer.dropped
            if problems:
                body["status"] = "degraded"
                body["problems"] = problems
        return JSONResponse(body)

    async def list_models(request: Request) -> Response:
        name = request.path_params.get("provider")
        provider = config.providers.get(name) if name is not None else None
        if name is not None and provider is None:
            raise HTTPException(404, f"no provider {name!r} is configured")
        owners = [provider] if provider is not None else list(config.providers.values())
        data = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": owner.name}
            for owner in owners
            for model_id in routes.models(owner, shared_prefix=provider is None)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            return Response(error_body(500, "error", "internal error"), 500, media_type="application/json")
        return Response(
            error_body(exc.status_code, _CODES.get(exc.status_code, "error"), exc.detail),
            exc.status_code,
            headers=exc.headers,  # a 405's Allow
            media_type="application/json",
        )

    return MeterProxy(
        meter,
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/{provider}/v1/models", list_models, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def _upstream_client(config: Config) -> Upstream:
    if config.upstream_client == "aiohttp":
        return AiohttpUpstream(config.upstream_pool_size)
    return HTTP1Upstream(config.upstream_pool_size)


def create_app_from_environ() -> Starlette:
    """The factory uvicorn runs in each worker: the CLI has validated the config and named it here."""
    return create_app(load_config(os.environ[CONFIG_ENV], os.environ))
