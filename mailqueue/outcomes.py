"""What an attempt came to: the per-recipient results applied to a record, the
outcome the worker records and settles by, and the retry delay.

Pure functions of the record and the Sender's result, so that the rules
(which recipient is sent, failed, pending or suppressed; when a mail waits
for a slot rather than backing off) can be read, and tested, apart from the
worker's consuming and recording (:mod:`mailqueue.worker`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mailqueue.errors import DeliveryError
from mailqueue.protocols import SendResult
from mailqueue.records import Attempt, RecipientOutcome, RecipientState, Status

__all__ = ["Outcome", "apply_result", "backoff", "fail_pending", "slot_wait", "truncate"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an attempt came to, before it is recorded: the status to record (``retry``:
    retried after a backoff, or ``dead`` once attempts or age are exhausted; ``defer``:
    every recipient left waits for a slot of a limit of the chain, tried again after
    that many seconds without counting a failed attempt)."""

    status: Status
    attempt: Attempt
    recipients: tuple[RecipientOutcome, ...]
    remark: str
    error: str
    retry: bool = False
    exc: DeliveryError | None = None
    defer: float | None = None


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)``,
    capped at ``cap``, then a random amount between half and all of it."""
    delay = min(cap, base * 2.0 ** min(attempt - 1, 62))
    fraction = rng.random() if rng is not None else random.random()
    return delay * (0.5 + 0.5 * fraction)


def apply_result(
    recipients: tuple[RecipientOutcome, ...], result: SendResult
) -> tuple[RecipientOutcome, ...]:
    updated = []
    for outcome in recipients:
        reply = result.replies.get(outcome.address)
        if outcome.state is not RecipientState.PENDING or reply is None:
            updated.append(outcome)
        elif reply.suppressed:
            updated.append(
                RecipientOutcome(
                    outcome.address, RecipientState.SUPPRESSED, None, f"suppressed: {reply.suppressed}"
                )
            )
        elif reply.accepted:
            updated.append(RecipientOutcome(outcome.address, RecipientState.SENT, reply.code, reply.reply))
        elif reply.permanent:
            updated.append(RecipientOutcome(outcome.address, RecipientState.FAILED, reply.code, reply.reply))
        else:
            updated.append(RecipientOutcome(outcome.address, RecipientState.PENDING, reply.code, reply.reply))
    return tuple(updated)


def slot_wait(still: Sequence[RecipientOutcome], result: SendResult) -> float | None:
    """The seconds until the first slot, if every recipient in ``still`` waits for one (its
    reply has ``retry_after``); ``None`` if any was refused by a server."""
    waits = [result.replies[r.address].retry_after if r.address in result.replies else None for r in still]
    if not waits or any(wait is None for wait in waits):
        return None
    return min(wait for wait in waits if wait is not None)


def fail_pending(
    recipients: tuple[RecipientOutcome, ...], code: int | None, reply: str
) -> tuple[RecipientOutcome, ...]:
    return tuple(
        RecipientOutcome(r.address, RecipientState.FAILED, code, reply)
        if r.state is RecipientState.PENDING
        else r
        for r in recipients
    )


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
