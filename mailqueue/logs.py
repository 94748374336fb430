"""Structured logs: ``key=value`` (default) or JSON lines, with the mail id and without secrets.

:func:`configure_logging` installs one handler on the root logger. Every line
carries ``mail_id=...`` while a message is being handled (the worker and
``submit`` set :data:`mail_id_var`; :func:`bind_mail_id` does it for other
code). Secrets never appear: passwords in URLs (``scheme://user:***@host``),
``Bearer`` tokens, and every secret passed to :func:`configure_logging` (SMTP
passwords, API tokens) are replaced by ``***`` in the whole line, tracebacks
included.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO
from urllib.parse import unquote, urlsplit

__all__ = [
    "JSONFormatter",
    "KeyValueFormatter",
    "MailIdFilter",
    "Redactor",
    "bind_mail_id",
    "configure_logging",
    "mail_id_var",
    "secrets_of_urls",
]

#: The id of the mail the current task works on; ``None`` outside of one.
mail_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("mailqueue_mail_id", default=None)

_URL_PASSWORD: Final = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")
_BEARER: Final = re.compile(r"(?i)(?P<head>\bbearer\s+)[A-Za-z0-9._~+/=\-]+")
_PLAIN_KV: Final = re.compile(r"^[^\s\"=]+$")


@contextlib.contextmanager
def bind_mail_id(mail_id: str | None) -> Iterator[None]:
    """Within the block, log lines carry ``mail_id=<mail_id>``."""
    token = mail_id_var.set(mail_id)
    try:
        yield
    finally:
        mail_id_var.reset(token)


class Redactor:
    """Replaces secrets in text by ``***``.

    Args:
        secrets: literal strings never to show (passwords, tokens); empty ones are ignored.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so that a secret containing another is hidden whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` without URL passwords, bearer tokens and the known secrets."""
        # The substring tests skip the regular expressions for the usual line (a few µs each).
        if "://" in text:
            text = _URL_PASSWORD.sub(r"\g<head>***@", text)
        if "bearer" in text.lower():
            text = _BEARER.sub(r"\g<head>***", text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


class MailIdFilter(logging.Filter):
    """Sets ``record.mail_id`` from :data:`mail_id_var` (unless the call gave one in ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; just annotate it."""
        if getattr(record, "mail_id", None) is None:
            record.mail_id = mail_id_var.get()
        return True


class _Clock:
    """``2026-11-29T09:45:26.194+00:00`` for a record's ``created``; the part up to the
    seconds is made once per second (``datetime.isoformat`` costs more than the rest of a line)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}+00:00"


def _fields(record: logging.LogRecord, formatter: logging.Formatter, clock: _Clock) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": clock(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    mail_id = getattr(record, "mail_id", None) or mail_id_var.get()
    if mail_id:
        fields["mail_id"] = mail_id
    fields["msg"] = record.getMessage()
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    elif record.exc_text:
        fields["exc"] = record.exc_text
    return fields


#: Fields whose values mailqueue makes itself (time, level, logger name): never secret.
_OWN_FIELDS: Final = frozenset({"ts", "level", "logger"})


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=mailqueue.worker mail_id=... msg="..."``, one line per record."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        """One line; values with spaces, quotes or ``=`` are JSON-quoted (newlines escaped)."""
        parts = []
        for key, value in _fields(record, self, self._clock).items():
            text = str(value) if key in _OWN_FIELDS else self.redactor(str(value))
            parts.append(f"{key}={text if _PLAIN_KV.match(text) else json.dumps(text, ensure_ascii=False)}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``mail_id`` (if any), ``msg``, ``exc``."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line, secrets replaced."""
        fields = {
            key: str(value) if key in _OWN_FIELDS else self.redactor(str(value))
            for key, value in _fields(record, self, self._clock).items()
        }
        return json.dumps(fields, ensure_ascii=False)


def secrets_of_urls(urls: Iterable[str]) -> list[str]:
    """The passwords in ``urls`` (raw and percent-decoded), to pass as secrets."""
    found: list[str] = []
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found += [password, unquote(password)]
    return found


def configure_logging(
    level: str | int = "INFO",
    fmt: Literal["kv", "json"] = "kv",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default stderr) in ``fmt`` through one handler on the root logger.

    A handler installed by an earlier call is replaced; other handlers are left alone.

    Returns:
        The installed handler.
    """
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter(redactor) if fmt == "json" else KeyValueFormatter(redactor))
    handler.addFilter(MailIdFilter())
    handler.set_name("mailqueue")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "mailqueue":  # ours from an earlier call; leave others' handlers alone
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
