"""legato/logs.py: access records, JSON lines, request metrics, quiet client errors."""

from __future__ import annotations

import io
import json
import logging

import pytest
from aiohttp.http_exceptions import LineTooLong

from legato import logs
from legato.logs import AccessRecord


def record(**changes: object) -> AccessRecord:
    fields: dict[str, object] = {"time": 1_795_320_000.25, "peer": "127.0.0.1", "method": "GET",
                                 "path": "/tracks/t/master.m3u8", "status": 200, "bytes": 420, "duration_ms": 0.5,
                                 "user_agent": "ua", "range": None, "kind": "master"}
    fields.update(changes)
    return AccessRecord(**fields)  # type: ignore[arg-type]


def test_iso_time() -> None:
    assert logs.iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert logs.iso_time(1_795_320_000.25) == "2026-11-22T04:00:00.250Z"


@pytest.mark.parametrize(("target", "path"), [
    ("/a/b?token=secret", "/a/b"), ("/a?x#y", "/a"), ("/a#frag?x", "/a"), ("/plain", "/plain"), ("/?", "/"),
])
def test_path_without_query(target: str, path: str) -> None:
    assert logs.path_without_query(target) == path


def test_json_line_has_the_documented_fields() -> None:
    stream = io.StringIO()
    logs.JsonAccessLog(stream)(record(range="bytes=0-1"))
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert doc == {"time": "2026-11-22T04:00:00.250Z", "peer": "127.0.0.1", "method": "GET",
                   "path": "/tracks/t/master.m3u8", "status": 200, "bytes": 420, "duration_ms": 0.5,
                   "user_agent": "ua", "range": "bytes=0-1"}


def test_json_line_escapes_control_characters() -> None:
    line = logs.format_record(record(path="/a\nb", user_agent="x\"\x00"))
    assert "\n" not in line and json.loads(line)["path"] == "/a\nb"


def value(metrics: logs.RequestMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_request_metrics_count_by_kind_and_status() -> None:
    metrics = logs.RequestMetrics("origin")
    metrics(record())
    metrics(record())
    metrics(record(status=304, bytes=100, duration_ms=2.0))
    metrics(record(kind="segment", bytes=1000))
    assert value(metrics, "legato_http_requests_total", node="origin", kind="master", status="200") == 2
    assert value(metrics, "legato_http_requests_total", node="origin", kind="master", status="304") == 1
    assert value(metrics, "legato_http_response_bytes_total", node="origin", kind="master") == 940
    assert value(metrics, "legato_http_request_duration_seconds_count", node="origin", kind="master") == 3
    assert value(metrics, "legato_http_request_duration_seconds_bucket", node="origin", kind="master", le="0.001") == 2
    assert value(metrics, "legato_http_requests_total", node="origin", kind="segment", status="200") == 1
    text = logs.render_metrics(metrics.registry).decode()
    assert 'legato_http_requests_total{kind="master",node="origin",status="200"} 2.0' in text


def test_two_metrics_instances_do_not_collide() -> None:
    a, b = logs.RequestMetrics("origin"), logs.RequestMetrics("origin")
    a(record())
    assert value(a, "legato_http_requests_total", node="origin", kind="master", status="200") == 1
    assert value(b, "legato_http_requests_total", node="origin", kind="master", status="200") == 0


def test_client_protocol_errors_are_logged_without_traceback() -> None:
    logs.configure_logging()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    server_log = logging.getLogger("aiohttp.server")
    server_log.addHandler(handler)
    try:
        try:
            raise LineTooLong("header line", "8190")
        except LineTooLong:
            server_log.exception("Error handling request from %s", "127.0.0.1")
        try:
            raise RuntimeError("a real bug")
        except RuntimeError:
            server_log.exception("Error handling request from %s", "127.0.0.1")
    finally:
        server_log.removeHandler(handler)
    out = stream.getvalue()
    client_error, bug = out.split("Error handling request from 127.0.0.1")[1:]
    assert "LineTooLong" in client_error and "Traceback" not in client_error
    assert "Traceback" in bug and "a real bug" in bug  # our own bugs keep their traceback
