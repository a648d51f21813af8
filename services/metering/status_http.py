"""Metering's HTTP port: Prometheus metrics on /metrics (and any other path, as before), and /health, a
JSON standing of the deliveries (rows waiting, dead letters and the last reason) for probes and people."""

from __future__ import annotations

import threading
from collections.abc import Callable
from wsgiref.simple_server import make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler


def start_status_server(host: str, port: int, registry: CollectorRegistry, health: Callable[[], dict]) -> None:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") == "/health":
            body = orjson.dumps(health())
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metering-status", daemon=True).start()
