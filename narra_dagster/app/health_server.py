"""A small HTTP server for probes and Prometheus: ``narra serve-health --port 8077``.

- ``GET /health``    liveness: the full report as JSON; 200 when healthy or degraded, 503 when
  unhealthy.
- ``GET /readiness`` readiness: the same JSON; 200 only when healthy, else 503.
- ``GET /metrics``   Prometheus text (``narra_health_status``, ``narra_health_check_ok``,
  ``narra_health_check_seconds``, ``narra_daemon_heartbeat_age_seconds``, ``narra_runs``).

Checks run at most once per ``cache_s`` seconds (probes from several sources share one report),
under a lock, on the standard library's threading HTTP server: no extra dependency.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg

from narra_dagster.app.health import HEALTHY, UNHEALTHY, HealthReport, check_health, prometheus_text, run_metrics


class HealthService:
    """Runs the checks for the server, caching the report for ``cache_s`` seconds."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions, *, cache_s: float = 10.0,
                 models: bool = True, heartbeat_tolerance_s: float = 90.0):
        self.instance, self.defs, self.cache_s = instance, defs, cache_s
        self.models, self.heartbeat_tolerance_s = models, heartbeat_tolerance_s
        self._lock = threading.Lock()
        self._report: HealthReport | None = None

    def report(self) -> HealthReport:
        with self._lock:
            if self._report is None or time.time() - self._report.checked_at > self.cache_s:
                self._report = check_health(self.instance, self.defs, models=self.models,
                                            heartbeat_tolerance_s=self.heartbeat_tolerance_s)
            return self._report


def make_server(service: HealthService, host: str = "127.0.0.1", port: int = 8077) -> ThreadingHTTPServer:
    """An HTTP server bound to (host, port) answering the three paths; ``port=0`` picks one."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/readiness", "/metrics"):
                self._send(404, b'{"error": "not found"}', "application/json")
                return
            report = service.report()
            if path == "/metrics":
                try:
                    runs = run_metrics(service.instance)
                except Exception:  # noqa: BLE001 - the instance check already says why
                    runs = None
                self._send(200, prometheus_text(report, runs), "text/plain; version=0.0.4; charset=utf-8")
                return
            ok = report.status != UNHEALTHY if path == "/health" else report.status == HEALTHY
            self._send(200 if ok else 503, json.dumps(report.to_json()).encode(), "application/json")

        def log_message(self, format, *args):  # noqa: A002 - quiet: probes hit this every few s
            return

    class Server(ThreadingHTTPServer):
        # Stop at once when told to, even while a probe's checks (a model load) still run.
        daemon_threads = True
        block_on_close = False

    return Server((host, port), Handler)
