"""What every backend shares (backends/_base.py): the settle-once rule and the URL-option parser."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import Field

from mailqueue.backends._base import (
    BaseDelivery,
    Flag,
    Number,
    OptionsModel,
    SettleKind,
    Whole,
    parse_options,
)
from mailqueue.errors import ConfigurationError, QueueError

# --- BaseDelivery ---------------------------------------------------------------


class Recording(BaseDelivery):
    """A delivery that records what the settle template does with it."""

    __slots__ = ("completed", "gone", "settled_calls")

    def __init__(self) -> None:
        super().__init__()
        self.gone: str | None = None
        self.completed: list[SettleKind] = []
        self.settled_calls: list[bool] = []

    @property
    def key(self) -> str:
        return "k"

    def _gone(self) -> str | None:
        return self.gone

    async def _complete(self, kind: SettleKind) -> None:
        self.completed.append(kind)

    def _on_settled(self, *, done: bool) -> None:
        self.settled_calls.append(done)


async def test_settles_once() -> None:
    delivery = Recording()
    assert await delivery._settle("ack") is True
    assert delivery.settled
    assert await delivery._settle("release") is False
    assert await delivery._settle("dead") is False
    assert (delivery.completed, delivery.settled_calls) == (["ack"], [True])


async def test_a_settle_under_way_makes_the_others_no_ops() -> None:
    delivery = Recording()
    started, go_on = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def slow() -> None:
        steps.append("retry")
        started.set()
        await go_on.wait()

    first = asyncio.create_task(delivery._settle("retry", slow))
    await started.wait()
    assert not delivery.settled

    async def other() -> None:
        steps.append("dead")

    assert await delivery._settle("dead", other) is False
    assert await delivery._settle("ack") is False
    go_on.set()
    assert await first is True
    assert (steps, delivery.completed, delivery.settled_calls) == (["retry"], ["retry"], [True])


async def test_a_failed_step_leaves_the_delivery_owned() -> None:
    delivery = Recording()

    async def fail() -> None:
        raise QueueError("not confirmed")

    with pytest.raises(QueueError):
        await delivery._settle("retry", fail)
    assert not delivery.settled
    assert (delivery.completed, delivery.settled_calls) == ([], [])
    assert await delivery._settle("ack") is True
    assert delivery.settled_calls == [True]


async def test_a_cancelled_step_leaves_the_delivery_owned() -> None:
    delivery = Recording()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(delivery._settle("dead", hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not delivery.settled
    assert await delivery._settle("release") is True


async def test_a_gone_message_is_settled_without_its_step() -> None:
    delivery = Recording()
    delivery.gone = "its channel is closed"
    ran: list[str] = []

    async def step() -> None:
        ran.append("step")

    assert await delivery._settle("retry", step) is False
    assert delivery.settled
    assert (ran, delivery.completed, delivery.settled_calls) == ([], [], [False])
    assert await delivery._settle("ack") is False


async def test_a_failed_completion_never_settles_twice() -> None:
    class FailingAck(Recording):
        __slots__ = ()

        async def _complete(self, kind: SettleKind) -> None:
            raise RuntimeError("ack lost")

    delivery = FailingAck()
    with pytest.raises(RuntimeError):
        await delivery._settle("ack")
    assert not delivery.settled
    assert await delivery._settle("release") is False
    assert delivery.settled_calls == []


async def test_drop_gives_up_an_unsettled_delivery() -> None:
    delivery = Recording()
    delivery._drop()
    delivery._drop()
    assert delivery.settled
    assert delivery.settled_calls == [False]
    assert await delivery._settle("ack") is False


# --- parse_options --------------------------------------------------------------


class Knobs(OptionsModel):
    queue: str = "mailqueue"
    poll: Number = 0.5
    batch: Whole = 10
    create: Flag = False
    from_: str = Field("", alias="from")


class Nothing(OptionsModel):
    pass


def test_defaults_and_given_values() -> None:
    default = parse_options("x://", Knobs)
    assert default == Knobs()
    assert default.model_fields_set == set()
    given = parse_options("x://h/?queue=q&poll=1.5&batch=3&create=Yes&from=a@b.c", Knobs)
    assert (given.queue, given.poll, given.batch, given.create, given.from_) == ("q", 1.5, 3, True, "a@b.c")
    assert given.model_fields_set == {"queue", "poll", "batch", "create", "from_"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_flags(text: str, value: bool) -> None:
    assert parse_options(f"x://?create={text}", Knobs).create is value


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("create=y", "option 'create' of x:// must be true or false, not 'y'"),
        ("create=", "option 'create' of x:// must be true or false, not ''"),
        ("poll=soon", "option 'poll' of x:// is not a number: 'soon'"),
        ("batch=1.0", "option 'batch' of x:// is not a whole number: '1.0'"),
        ("batch=1e3", "option 'batch' of x:// is not a whole number: '1e3'"),
    ],
)
def test_bad_values_name_the_option(query: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_options(f"x://?{query}", Knobs)
    assert str(caught.value) == fragment


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_options("x://?queue=q&colour=red", Knobs)
    assert str(caught.value) == (
        "unknown option 'colour' in x:// URL (known: queue, poll, batch, create, from)"
    )
    with pytest.raises(ConfigurationError, match="unknown option 'from_'"):
        parse_options("x://?from_=a@b.c", Knobs)
    with pytest.raises(ConfigurationError) as caught:
        parse_options("memory://?size=1", Nothing)
    assert str(caught.value) == "unknown option 'size' in memory:// URL (memory:// takes no options)"


def test_repeated_options() -> None:
    assert parse_options("x://?batch=1&batch=2", Knobs).batch == 2
    with pytest.raises(ConfigurationError, match="option 'batch' is given twice in the x URL"):
        parse_options("x://?batch=1&batch=2", Knobs, label="the x", once=True)


def test_models_forbid_unknown_fields_when_built_directly() -> None:
    with pytest.raises(ValueError, match="colour"):
        Knobs.model_validate({"colour": "red"})
