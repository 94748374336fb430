"""The queue payload: a versioned JSON envelope around the Mail.

``{"v": 1, "mail": {...}}`` with attachments by storage key, never by content.
The whole mail travels so that a worker can render it even when the record
was adopted from elsewhere; the Store stays the source of truth for status.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict

from mailqueue.message import Mail

__all__ = ["ENVELOPE_VERSION", "decode_envelope", "encode_envelope"]

ENVELOPE_VERSION = 1


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: Literal[1]
    mail: Mail


def encode_envelope(mail: Mail) -> bytes:
    """The bytes to publish for ``mail``."""
    return b'{"v":1,"mail":' + mail.model_dump_json().encode() + b"}"


def decode_envelope(body: bytes) -> Mail:
    """The mail inside a published envelope.

    Raises:
        ValueError: the body is not an envelope this version understands
            (not JSON, unknown version, invalid mail).
    """
    try:
        return _Envelope.model_validate_json(body).mail
    except pydantic.ValidationError as exc:
        raise ValueError(
            f"not a mailqueue envelope: {exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
        ) from None
