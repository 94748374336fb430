"""What every backend shares: its URL options, settling a delivery once, and
turning a driver's exceptions into ours.

:func:`parse_options` reads the query of a backend URL into the pydantic model
in which the backend declares its options (``extra="forbid"``: an unknown
option is refused with the valid names listed); :data:`Flag`, :data:`Number`
and :data:`Whole` are the option types written in URLs.

:class:`BaseDelivery` is the settle-once rule every queue's delivery follows
(owned -> settling -> settled); a queue's delivery extends it and makes each of
``ack``, ``retry``, ``dead`` and ``release`` one call of its ``_settle``.

A backend calls its driver inside :func:`translate_errors`, and whatever the
driver raises comes out as the backend's own error (:class:`QueueError`,
:class:`StoreError`, ...), the original kept as ``__cause__``. *Any*
exception, not only the ones a driver documents: asyncmy raises a plain
``RuntimeError`` when a connection is reset while it connects, aiokafka an
``AssertionError`` now and then, and an exception let through becomes a 500
on the API or a delivery the worker cannot classify.

Imports no driver.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pydantic
from pydantic import BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

from mailqueue.errors import BackendError, ConfigurationError, MailQueueError

__all__ = [
    "BaseDelivery",
    "Flag",
    "Number",
    "OptionsModel",
    "SettleKind",
    "Whole",
    "describe",
    "parse_options",
    "translate_errors",
    "url_query",
]

logger = logging.getLogger(__name__)

#: Which of the four settling calls of a delivery is under way.
SettleKind = Literal["ack", "retry", "dead", "release"]

#: The longest driver text an error message carries.
_DETAIL_MAX = 500

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# --- URL options -------------------------------------------------------------


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise PydanticCustomError("option", "must be true or false, not {value}", {"value": repr(value)})
    return value


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise PydanticCustomError("option", "is not a number: {value}", {"value": repr(value)}) from None
    return value


def _whole(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise PydanticCustomError(
                "option", "is not a whole number: {value}", {"value": repr(value)}
            ) from None
    return value


#: A yes/no option: ``1``, ``true``, ``yes``, ``on`` or ``0``, ``false``, ``no``, ``off`` (any case).
Flag = Annotated[bool, BeforeValidator(_flag)]
#: A number option, read as Python's ``float()`` reads it.
Number = Annotated[float, BeforeValidator(_number)]
#: A whole-number option, read as Python's ``int()`` reads it.
Whole = Annotated[int, BeforeValidator(_whole)]

_Options = TypeVar("_Options", bound=pydantic.BaseModel)


class OptionsModel(pydantic.BaseModel):
    """Base of the models in which backends declare their URL options.

    Frozen, and ``extra="forbid"``: an option the model does not declare is an
    error. A field whose option name is not a Python name (``from``) declares it
    as its alias.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def url_query(url: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of ``url``'s query, in order, blank values kept."""
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def _option_names(model: type[pydantic.BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def parse_options(
    url: str, model: type[_Options], *, label: str | None = None, once: bool = False
) -> _Options:
    """Read the options in ``url``'s query into ``model``.

    Args:
        url: the backend URL.
        model: the backend's options (an :class:`OptionsModel`); fields not in
            the URL keep their defaults (``model_fields_set`` tells which were given).
        label: how messages name the URL (default ``<scheme>://``).
        once: refuse an option given twice (otherwise the last one counts).

    Raises:
        ConfigurationError: an unknown option (the message lists the valid
            ones), an option given twice with ``once``, or a bad value (the
            message names the option).
    """
    label = label or f"{urlsplit(url).scheme}://"
    given: dict[str, str] = {}
    known = _option_names(model)
    for name, value in url_query(url):
        if name not in known:
            listed = f"known: {', '.join(known)}" if known else f"{label} takes no options"
            raise ConfigurationError(f"unknown option {name!r} in {label} URL ({listed})")
        if once and name in given:
            raise ConfigurationError(f"option {name!r} is given twice in {label} URL")
        given[name] = value
    try:
        return model.model_validate(given)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(_describe_invalid(exc, label)) from None


def _describe_invalid(exc: pydantic.ValidationError, label: str) -> str:
    error = exc.errors(include_url=False)[0]
    where = error["loc"][0] if error["loc"] else None
    if where is None:
        return f"options of {label}: {error['msg']}"
    if error["type"] == "option":
        return f"option {where!r} of {label} {error['msg']}"
    return f"option {where!r} of {label}: {error['msg']}"


def describe(exc: BaseException) -> str:
    """The driver's own words about a failure, without SQL or parameters.

    SQLAlchemy's wrapped errors are described by the driver's exception
    (``orig``); an ``OSError`` by its text; anything else by its type and text,
    since its type is often all that says what happened.
    """
    original = getattr(exc, "orig", None)
    if original is not None:
        text = str(original).strip()
    elif isinstance(exc, OSError):
        text = str(exc).strip()
    else:
        text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return (text or type(exc).__name__)[:_DETAIL_MAX]


@contextlib.contextmanager
def translate_errors(error: type[BackendError], action: str) -> Iterator[None]:
    """Raise any exception of the block as ``error(f"{action}: <what the driver said>")``.

    A :class:`MailQueueError` passes unchanged (the backend's own verdict, or an
    inner translation). Cancellation (not an ``Exception``) passes too.
    """
    try:
        yield
    except MailQueueError:
        raise
    except Exception as exc:
        raise error(f"{action}: {describe(exc)}") from exc


class _State(enum.Enum):
    OWNED = "owned"
    SETTLING = "settling"
    SETTLED = "settled"


class BaseDelivery:
    """The settle-once rule of a :class:`~mailqueue.protocols.Delivery`: owned -> settling -> settled.

    A queue's delivery extends it; each of its ``ack``, ``retry``, ``dead`` and
    ``release`` is one call of :meth:`_settle`, which enforces:

    - only an owned delivery settles: a call made while another is under way,
      or after one finished, does nothing and returns ``False``;
    - a delivery whose message is no longer ours (:meth:`_gone`: the queue was
      closed, its channel is gone, its partition moved, ...) becomes settled
      without touching the broker;
    - the ``step`` (the durable part: a confirmed publish, an UPDATE) runs while
      settling; if it raises (anything, cancellation included) the delivery is
      owned again and the exception propagates, so the caller may settle it
      again (at-least-once: nothing is lost by a failed settle);
    - :meth:`_complete` then runs (the part that cannot be undone, such as
      AMQP's ``basic.ack``); if it raises the delivery stays settling, so it is
      never settled twice;
    - :meth:`_on_settled` is called when the delivery becomes settled.

    Subclasses override the three hooks as they need; the defaults do nothing.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _State.OWNED

    @property
    def settled(self) -> bool:
        """True once settled, or given up because the message is no longer ours."""
        return self._state is _State.SETTLED

    @property
    def key(self) -> str:  # pragma: no cover - overridden
        """The key the message was published under."""
        raise NotImplementedError

    async def _settle(self, kind: SettleKind, step: Callable[[], Awaitable[object]] | None = None) -> bool:
        """Settle once (see the class docstring); ``True`` if this call settled the delivery."""
        if self._state is not _State.OWNED:
            return False
        gone = self._gone()
        if gone is not None:
            logger.debug("%s of %r ignored: %s", kind, self.key, gone)
            self._drop()
            return False
        self._state = _State.SETTLING
        if step is not None:
            try:
                await step()
            except BaseException:
                self._state = _State.OWNED
                raise
        await self._complete(kind)
        self._state = _State.SETTLED
        self._on_settled(done=True)
        return True

    def _drop(self) -> None:
        """Mark the delivery settled without settling it: its message is no longer ours
        (the queue closed and gave it back, or will get it back); no-op once settled."""
        if self._state is _State.SETTLED:
            return
        self._state = _State.SETTLED
        self._on_settled(done=False)

    def _gone(self) -> str | None:
        """Why the message is no longer this delivery's to settle, or ``None`` while it is."""
        return None

    async def _complete(self, kind: SettleKind) -> None:
        """Finish a settle after its step succeeded (runs while settling)."""

    def _on_settled(self, *, done: bool) -> None:
        """The delivery became settled: by a settle (``done``) or given up (not ``done``)."""
