"""The OpenAPI schema says what the send endpoint refuses: whatever it describes as valid is accepted.

Schemathesis generates request bodies from the served schema (positive data only: valid by the
schema) for each of the three media types, and sends them to a uvicorn server running the app on
the in-memory backends with small limits (so that the limits in the schema are the app's own). Every
one must be answered 200. The one rule a JSON Schema cannot state, that ``receiver_name`` has as
many names as ``receiver`` has addresses, is applied to the generated bodies before they are sent.
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


def _names_for_each_address(case: Any) -> Any:
    """Give ``receiver_name``, when generated, as many names as there are addresses."""
    body = case.body
    if isinstance(body, dict) and "receiver_name" in body:
        receiver = body["receiver"]
        count = len(receiver) if isinstance(receiver, list) else len(receiver.split(","))
        names = body["receiver_name"]
        if isinstance(names, list):
            body["receiver_name"] = (names * count)[:count]
        else:
            parts = names.split(",")
            body["receiver_name"] = ",".join((parts * count)[:count])
    return case


@pytest.mark.parametrize("media_type", MEDIA_TYPES)
def test_every_body_valid_by_the_schema_is_accepted(base_url: str, media_type: str) -> None:
    raw = httpx.get(f"{base_url}/schema/openapi.json").json()
    content = raw["paths"][SEND]["post"]["requestBody"]["content"]
    assert set(content) == set(MEDIA_TYPES)
    # one media type per run (schemathesis draws among those the operation lists)
    raw["paths"][SEND]["post"]["requestBody"]["content"] = {media_type: content[media_type]}
    operation = schemathesis.openapi.from_dict(raw)[SEND]["POST"]
    cases = operation.as_strategy(schemathesis.GenerationMode.POSITIVE).map(_names_for_each_address)
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
