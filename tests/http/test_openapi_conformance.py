"""The OpenAPI schema says what the send endpoint refuses: whatever it describes as valid is accepted.

Schemathesis generates request bodies from the served schema (positive data only: valid by the
schema) for each of the three media types, and sends them to a uvicorn server running the app on
the in-memory backends with small limits (so that the limits in the schema are the app's own). Every
one must be answered 200. The rules a JSON Schema cannot state are applied to the generated bodies
before they are sent: a names field (``receiver_name``, ``cc_name``, ``reply_to_name``) has as many
names as its address field has addresses and is given only with it; receiver, cc and bcc hold at most
``max_recipients`` addresses together; a form's ``In-Reply-To`` and ``References`` come once each.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings

from mailqueue import APISettings, Settings
from mailqueue.contrib.litestar_app import create_app

SEND = "/api/email/send"
MEDIA_TYPES = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
LIMITS = APISettings(max_attachments=3, max_attachment_bytes=2048, max_recipients=5)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The app on the in-memory backends, served by uvicorn in a thread (schemathesis calls are blocking)."""
    app = create_app(Settings(store="memory://", queue="memory://", attachments="memory://", api=LIMITS))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def _items(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else value.split(",")


def _like(value: str | list[str], items: list[str]) -> str | list[str]:
    return items if isinstance(value, list) else ",".join(items)


def _cross_field_rules(case: Any) -> Any:
    """Apply the rules the schema cannot state (see the module docstring) to a generated body."""
    body = case.body
    if not isinstance(body, dict):
        return case
    room = LIMITS.max_recipients - len(_items(body["receiver"]))
    for field in ("cc", "bcc"):
        if field in body:
            kept = _items(body[field])[:room]
            room -= len(kept)
            if kept:
                body[field] = _like(body[field], kept)
            else:
                del body[field]
    for field in ("receiver", "cc", "reply_to"):
        names_field = "receiver_name" if field == "receiver" else f"{field}_name"
        if names_field not in body:
            continue
        if field not in body:
            del body[names_field]
            continue
        count = len(_items(body[field]))
        names = _items(body[names_field])
        body[names_field] = _like(body[names_field], (names * count)[:count])
    headers = body.get("headers")
    if isinstance(headers, list):
        seen: set[str] = set()
        kept_headers = []
        for line in headers:
            name = line.partition(":")[0]
            if name in ("In-Reply-To", "References"):
                if name in seen:
                    continue
                seen.add(name)
            kept_headers.append(line)
        body["headers"] = kept_headers
    return case


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_every_body_valid_by_the_schema_is_accepted(base_url: str, media_type: str) -> None:
    raw = httpx.get(f"{base_url}/schema/openapi.json").json()
    content = raw["paths"][SEND]["post"]["requestBody"]["content"]
    assert set(content) == set(MEDIA_TYPES)
    # one media type per run (schemathesis draws among those the operation lists)
    raw["paths"][SEND]["post"]["requestBody"]["content"] = {media_type: content[media_type]}
    operation = schemathesis.openapi.from_dict(raw)[SEND]["POST"]
    cases = operation.as_strategy(schemathesis.GenerationMode.POSITIVE).map(_cross_field_rules)
    refused: list[tuple[int, str, Any]] = []

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=cases)
    def send(case: Any) -> None:
        assert case.media_type == media_type
        response = case.call(base_url=base_url)
        if response.status_code != 200:
            refused.append((response.status_code, response.text, case.body))

    send()
    assert refused == []
