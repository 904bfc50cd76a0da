"""`narra health` and the probe server on real instances: degraded without a daemon, unhealthy
when storage cannot be written, healthy with a running daemon; the same over HTTP."""

import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import dagster as dg
import pytest

from narra_dagster.definitions import build_defs
from narra_dagster.app.health_server import HealthService, make_server

from .conftest import REPO, subprocess_env
from .services import daemon, free_port, wait_for


def _narra_health(home, *args):
    done = subprocess.run(["narra", "health", "--json", *args], env=subprocess_env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def _checks(report):
    return {c["name"]: c["ok"] for c in report["checks"]}


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_cli_degraded_without_daemon_then_unhealthy_without_storage(home):
    code, report = _narra_health(home)
    assert (code, report["status"]) == (1, "degraded")
    assert _checks(report) == {"instance": True, "storage": True, "models": True,
                               "daemon": False, "sensors": True}
    assert "no heartbeat" in next(c for c in report["checks"] if c["name"] == "daemon")["detail"]
    # A media store root that is a file cannot be written: unhealthy, exit code 2.
    shutil.rmtree(home / "media", ignore_errors=True)
    (home / "media").write_text("not a folder")
    code, report = _narra_health(home, "--no-models")
    assert (code, report["status"]) == (2, "unhealthy")
    assert _checks(report)["storage"] is False and "models" not in _checks(report)


def test_http_endpoints_follow_the_status(home, resources):
    with dg.instance_for_test() as instance:
        service = HealthService(instance, build_defs(resources), cache_s=0.0, models=True)
        server = make_server(service, port=0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            status, body = _get(base + "/health")
            assert status == 200 and json.loads(body)["status"] == "degraded"
            status, body = _get(base + "/readiness")
            assert status == 503 and json.loads(body)["status"] == "degraded"
            status, text = _get(base + "/metrics")
            assert status == 200
            assert "narra_health_status 1.0" in text
            assert 'narra_health_check_ok{check="daemon"} 0.0' in text
            assert 'narra_health_check_ok{check="models"} 1.0' in text
            assert 'narra_runs{status="success"} 0.0' in text
            assert _get(base + "/nothing")[0] == 404
            shutil.rmtree(home / "media", ignore_errors=True)
            (home / "media").write_text("not a folder")
            status, body = _get(base + "/health")
            assert status == 503 and json.loads(body)["status"] == "unhealthy"
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.daemon
def test_healthy_with_a_running_daemon_cli_and_http(home, tmp_path):
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    with daemon(subprocess_env(home), tmp_path / "daemon.log") as proc:
        def ticked():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            code, report = _narra_health(home, "--no-models")
            return code == 0 and report

        report = wait_for(ticked, 180, "a healthy report", interval_s=5,
                          on_timeout=lambda: json.dumps(_narra_health(home, "--no-models")[1])[:3000])
        assert report["status"] == "healthy" and all(_checks(report).values())
        port = free_port()
        server = subprocess.Popen(["narra", "serve-health", "--port", str(port)], env=subprocess_env(home),
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            status, body = wait_for(lambda: _try_get(base + "/readiness"), 120, "the probe server",
                                    interval_s=1)
            assert status == 200 and json.loads(body)["status"] == "healthy"
            assert _get(base + "/health")[0] == 200
            status, text = _get(base + "/metrics")
            assert status == 200 and "narra_health_status 0.0" in text
            assert 'narra_daemon_heartbeat_age_seconds{daemon="SENSOR"}' in text
        finally:
            server.terminate()
            server.wait(30)


def _try_get(url):
    try:
        return _get(url)
    except (urllib.error.URLError, ConnectionError):
        return None


def test_cli_unhealthy_when_the_instance_database_is_unreachable(home, tmp_path):
    from .services import production_dagster_home

    production_dagster_home(home / "dagster")
    env = {**subprocess_env(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(free_port()),
           "DAGSTER_PG_USER": "nobody", "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "nothing"}
    done = subprocess.run(["narra", "health", "--json", "--no-models"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert (done.returncode, report["status"]) == (2, "unhealthy")
    assert report["checks"][0]["name"] == "instance" and not report["checks"][0]["ok"]
    assert "connection" in report["checks"][0]["detail"].lower()
