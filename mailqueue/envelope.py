"""The queue payload: a versioned JSON envelope around the Mail.

``{"v": 1, "mail": {...}}`` with attachments by storage key, never by content.
The whole mail travels so that a worker can render it even when the record
was adopted from elsewhere; the Store stays the source of truth for status.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict

from mailqueue.message import Mail

__all__ = ["ENVELOPE_VERSION", "decode_envelope", "encode_envelope", "envelope_mail_id"]

ENVELOPE_VERSION = 1

# The pattern of Mail.id.
_ID_RE = re.compile(r"[0-9a-z][0-9a-z_-]{0,63}")


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: Literal[1]
    mail: Mail


def encode_envelope(mail: Mail) -> bytes:
    """The bytes to publish for ``mail``."""
    return b'{"v":1,"mail":' + mail.dump_json().encode() + b"}"


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


def envelope_mail_id(body: bytes) -> str:
    """The id of the mail inside a published envelope, without validating the rest.

    Much cheaper than :func:`decode_envelope`: for a worker that sends the
    Store's copy of the mail, the id is all it needs from the envelope.

    Raises:
        ValueError: the body is not JSON, not an envelope of this version, or
            holds no valid mail id.
    """
    try:
        envelope: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("not a mailqueue envelope: not JSON") from None
    version = envelope.get("v") if isinstance(envelope, dict) else None
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise ValueError("not a mailqueue envelope: no version 1")
    mail = envelope.get("mail")
    mail_id = mail.get("id") if isinstance(mail, dict) else None
    if not isinstance(mail_id, str) or not _ID_RE.fullmatch(mail_id):
        raise ValueError("not a mailqueue envelope: no valid mail id")
    return mail_id
