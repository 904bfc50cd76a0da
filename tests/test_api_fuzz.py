"""The HTTP API fuzzed from its own OpenAPI spec with schemathesis (property-based: Hypothesis
generates each operation's parameters and bodies from the spec, valid and, where the spec
allows, invalid).

A real `narra serve` (its app from :func:`narra_dagster.app.api.create_app`, a fresh NARRA_HOME,
its own Dagster instance, the real text embedder) is seeded with two real uploads, a PNG and a
17-page PDF, so the item routes meet real items, not only unknown ids: every operation that
takes a ``media_id`` is run with random ids and once more with each seeded id. DELETE runs with
random ids only (deleting the seeds would leave the other operations nothing to read).

Checks on every answer: ``not_a_server_error`` (no 5xx), ``response_schema_conformance`` (the
body matches the schema the spec declares for that status: the items, the errors'
``{"error": {"code", "message"}}``) and ``content_type_conformance``, except on the three routes
whose spec still declares JSON for what is a file, a stream or Prometheus text
(:data:`UNDECLARED_TYPES`). After the run the server's log must hold no traceback.

The event stream never ends: schemathesis reads an ``text/event-stream`` answer until its
request timeout, so ``GET /api/v1/events`` gets :data:`EVENT_EXAMPLES` cases with a
:data:`STREAM_TIMEOUT_S` timeout instead of the usual number.

A second server with a token: every ``/api/v1`` operation (and ``/metrics``) answers 401
without it, whatever the parameters; ``/api/v1/session`` is how a browser signs in and is
open by design.

``NARRA_FUZZ_EXAMPLES`` (default 25) sets the examples per operation and mode; the
generation is derandomized (the same cases each run, as CI wants) unless
``NARRA_FUZZ_RANDOM=1``.
"""

from __future__ import annotations

import collections
import os
import time

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance)

from .support.server import CSRF, SAMPLE_PDF, narra_serve, png_bytes, upload

EXAMPLES = int(os.environ.get("NARRA_FUZZ_EXAMPLES", "25"))
EVENT_EXAMPLES = 4
STREAM_TIMEOUT_S = 1.0
TOKEN = "fuzz-suite-token"
UNDECLARED_TYPES = {"/api/v1/media/{media_id}/source", "/api/v1/events", "/metrics"}
"""Routes whose spec declares ``application/json`` for a stored file, an event stream and
Prometheus text (FastAPI's default for a route returning a Response): their content type is
not checked here (reported; the routes belong to other modules)."""
OPEN_BY_DESIGN = {"/api/v1/session"}


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, database=None,
                    derandomize=os.environ.get("NARRA_FUZZ_RANDOM") != "1",
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate])


def _operations(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/api/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _label(operation) -> str:
    return f"{operation.method.upper()} {operation.path}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A token-less server and the ids of its two items (a PNG, a PDF; queued: no daemon)."""
    with narra_serve(tmp_path_factory.mktemp("fuzz-open") / "narra") as server:
        ids = []
        for name, data in (("blue.png", png_bytes()), ("spec.pdf", SAMPLE_PDF.read_bytes())):
            answer = upload(server, name, data)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["media_id"])
        yield server, ids


def test_every_operation_holds_up_to_generated_requests(seeded, capsys):
    server, ids = seeded
    operations = _operations(server.url)
    cases: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    started = time.monotonic()
    for operation in operations:
        label = _label(operation)
        streaming = operation.path == "/api/v1/events"
        checks = [not_a_server_error, response_schema_conformance]
        if operation.path not in UNDECLARED_TYPES:
            checks.append(content_type_conformance)
        variants = [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if "{media_id}" in operation.path and operation.method != "delete":
            variants += [(GenerationMode.POSITIVE, {"media_id": key}) for key in ids]
        for mode, path_parameters in variants:
            strategy = operation.as_strategy(generation_mode=mode,
                                             path_parameters=path_parameters)

            @_settings(EVENT_EXAMPLES if streaming else EXAMPLES)
            @given(case=strategy)
            def run(case):
                cases[label] += 1
                response = case.call(base_url=server.url, headers=CSRF,
                                     timeout=STREAM_TIMEOUT_S if streaming else 30)
                case.validate_response(response, checks=checks, headers=CSRF)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # no invalid value exists for these parameters (a free string, none)
            except Exception as exc:  # noqa: BLE001 - collected: one report of every failure
                failures.append(f"{label} ({mode.name}, {path_parameters}):\n{exc}")
            except BaseExceptionGroup as exc:  # schemathesis' FailureGroup
                failures.append(f"{label} ({mode.name}, {path_parameters}):\n{exc}")
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nfuzz: {len(operations)} operations, {sum(cases.values())} cases in "
              f"{elapsed:.1f} s, {len(failures)} failing; per operation: "
              + ", ".join(f"{k} {v}" for k, v in cases.items()))
    assert not failures, "\n\n".join(failures)
    assert len(operations) >= 19 and all(cases[_label(op)] for op in operations), cases
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-6000:]


def test_a_token_server_answers_401_to_every_api_operation_without_it(tmp_path_factory):
    with narra_serve(tmp_path_factory.mktemp("fuzz-token") / "narra", token=TOKEN) as server:
        operations = [op for op in _operations(server.url)
                      if (op.path.startswith("/api/v1/") or op.path == "/metrics")
                      and not any(op.path.startswith(p) for p in OPEN_BY_DESIGN)]
        answers: collections.Counter[tuple[str, int]] = collections.Counter()
        for operation in operations:
            @_settings(3)
            @given(case=operation.as_strategy())
            def run(case):
                response = case.call(base_url=server.url, headers=CSRF,
                                     timeout=STREAM_TIMEOUT_S)
                answers[(_label(operation), response.status_code)] += 1
                assert response.status_code == 401, (case.as_curl_command(), response.text)
                assert response.json()["error"]["code"] == "unauthorized"

            run()
        assert len(operations) >= 14 and {label for label, _ in answers} == {
            _label(op) for op in operations}
        # the same server answers with the token: the 401s above are the token's doing
        with_token = httpx.get(f"{server.api}/media",
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert with_token.status_code == 200, with_token.text
        assert "Traceback" not in server.log()
