"""A third-party sender: appends each envelope as a JSON line to a file.

URL: ``demo:///path/to/log.jsonl?from=noreply@example.com``
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

from mailqueue.protocols import (
    BackendContext,
    OutgoingMessage,
    RecipientReply,
    ResourceMixin,
    Sender,
    SendResult,
)
from mailqueue.sending.step import SendingStep
from mailqueue.settings import Settings


class DemoSender(ResourceMixin):
    def __init__(self, *, path: Path, from_address: str) -> None:
        self.path = path
        self.from_address = from_address

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        return cls(path=Path(parts.path), from_address=query.get("from", ["demo@example.com"])[0])

    async def send(self, message: OutgoingMessage) -> SendResult:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": message.mail_id, "to": list(message.recipients)}) + "\n")
        return SendResult({rcpt: RecipientReply(250, "queued by demo") for rcpt in message.recipients})


class TagStep(SendingStep):
    """A third-party link of the sending chain: adds ``X-Demo-Tag`` (from the settings'
    ``message_id_domain``, to show that it sees the settings) before the wire."""

    def __init__(self, inner: Sender, settings: Settings) -> None:
        super().__init__(inner)
        self.tag = settings.message_id_domain or "none"

    async def send(self, message: OutgoingMessage) -> SendResult:
        tagged = replace(message, data=f"X-Demo-Tag: {self.tag}\r\n".encode() + message.data)
        return await self.inner.send(tagged)
