"""Recording what a report says on the mail it is about.

:class:`BounceIntake` takes a received report, finds its mail and recipient
and records, in one compare-and-set update of the Store:

- a **hard bounce**: the recipient becomes ``bounced`` with the report's
  status and diagnostic text; the mail becomes ``bounced`` if it was ``sent``
  (or ``unknown``) and now reached none of its recipients (every one
  ``bounced`` or ``failed``), and stays ``sent`` otherwise;
- a **soft bounce** (or delay warning): nothing but the attempt row;
- a **complaint**: the recipient becomes ``complained``;

each with an attempt row (``bounced``, ``delayed``, ``complained``), a log
line on ``mailqueue.bounces`` and ``mailqueue_bounces_total{kind}``. With a
suppression list (:class:`~mailqueue.suppression_list.Suppressions`), a hard
bounce also suppresses the recipient (reason ``hard_bounce``, unless its
status is a ``5.7.x`` policy refusal or ``suppression.on_hard_bounce`` is
off) and a complaint does (reason ``complaint``), with the mail id and the
report's status and text; a report delivered again suppresses again (the
entry is replaced), so a Store failure there is safe to retry.

The mail is found by the VERP return path the report was sent to
(:mod:`mailqueue.sending.verp`), else by one the report quotes (ARF
``Original-Mail-From``, the original's ``Return-Path``), and the recipient
by the VERP tag: a report without one (a provider's complaint about a mail
sent before ``bounces.domain`` was set) names no mail. A report that names no existing mail
and recipient (a forged VERP, a bounce of a pruned mail) is *unmatched*:
logged, counted, and nothing changes. A report for a mail still being sent
(``queued``, ``sending``, or ``retrying`` for other recipients) raises
:class:`NotYetSentError` (the listener answers 451: the reporting MTA tries
again later, for days, while the mail's ``max_age`` is three by default).
The same notice twice (a report delivered again) is recorded once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mailqueue import metrics
from mailqueue.bounces.parse import Kind, Notice, Report
from mailqueue.errors import StoreError
from mailqueue.logs import bind_mail_id
from mailqueue.protocols import Store
from mailqueue.records import (
    Attempt,
    MailRecord,
    RecipientOutcome,
    RecipientState,
    RecordUpdate,
    Status,
    utcnow,
)
from mailqueue.sending.verp import VERPAddress, parse_verp
from mailqueue.suppression import SuppressionReason
from mailqueue.suppression_list import Suppressions

__all__ = ["BounceIntake", "NotYetSentError", "Recorded"]

logger = logging.getLogger("mailqueue.bounces")

_OUTCOME = {Kind.HARD: "bounced", Kind.SOFT: "delayed", Kind.COMPLAINT: "complained"}
_STATE = {Kind.HARD: RecipientState.BOUNCED, Kind.COMPLAINT: RecipientState.COMPLAINED}
#: Statuses in which the worker may still write the recipients: a report then waits. A
#: ``retrying`` mail is among them: its next attempt writes every recipient from the copy it
#: read before the claim, which would undo a recipient's ``bounced`` recorded meanwhile.
_BUSY = frozenset({Status.QUEUED, Status.SENDING, Status.RETRYING})
_CAS_TRIES = 5


class NotYetSentError(StoreError):
    """The mail is being sent (or queued again): its outcome is not recorded yet."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of one notice: ``kind`` is ``hard``, ``soft``, ``complaint`` or
    ``unmatched``; ``mail_id`` and ``recipient`` are ``""`` when unmatched."""

    kind: str
    mail_id: str = ""
    recipient: str = ""
    reply: str = ""
    changed: bool = False


class BounceIntake:
    """Finds the mail and recipient of reports and records them (see the module docs).

    Args:
        store: the deployment's Store (opened by the caller).
        domain: ``bounces.domain``.
        secret: ``bounces.secret`` as bytes (``b""``: none).
    """

    def __init__(
        self,
        store: Store,
        *,
        domain: str,
        secret: bytes = b"",
        suppressions: Suppressions | None = None,
        suppress_hard_bounces: bool = True,
    ) -> None:
        self.store = store
        self.domain = domain
        self.secret = secret
        self.suppressions = suppressions
        self.suppress_hard_bounces = suppress_hard_bounces

    async def receive(self, report: Report, *, rcpt_tos: list[str]) -> list[Recorded]:
        """Record ``report``, received for the envelope recipients ``rcpt_tos``.

        Returns:
            One entry per notice recorded, or one ``unmatched`` entry.

        Raises:
            NotYetSentError: the mail is still queued or being sent.
            StoreError: the Store failed (nothing, or not everything, was recorded).
        """
        if not report.notices:
            logger.info("report (%s) for %s holds no bounce or complaint; ignored", report.form, rcpt_tos)
            return []
        verp = self._verp(rcpt_tos, report.return_paths)
        if verp is None:
            return [self._unmatched(report, rcpt_tos, "no VERP return path of this domain")]
        record = await self.store.get(verp.mail_id)
        if record is None:
            return [self._unmatched(report, rcpt_tos, f"no mail with id {verp.mail_id}")]
        address = self._recipient(record, verp)
        if address is None:
            return [self._unmatched(report, rcpt_tos, f"no recipient of mail {verp.mail_id} has that tag")]
        with bind_mail_id(record.id):
            results = []
            for notice in self._pick(report.notices, address):
                results.append(await self._record(record.id, address, notice))
            return results

    def _verp(self, rcpt_tos: list[str], quoted: tuple[str, ...]) -> VERPAddress | None:
        for address in (*rcpt_tos, *quoted):
            found = parse_verp(address, self.domain)
            if found is not None:
                return found
        return None

    def _recipient(self, record: MailRecord, verp: VERPAddress) -> str | None:
        for outcome in record.recipients:
            if verp.matches(outcome.address, self.secret):
                return outcome.address
        return None

    @staticmethod
    def _pick(notices: tuple[Notice, ...], address: str) -> list[Notice]:
        """The notice about ``address``: the one naming it, else the first (a VERP return path
        is one recipient's, so a report to it is about that recipient even if it names
        another address, e.g. one it was forwarded to)."""
        named = [n for n in notices if n.recipient.lower() == address.lower()]
        return named[:1] or list(notices[:1])

    def _unmatched(self, report: Report, rcpt_tos: list[str], why: str) -> Recorded:
        metrics.BOUNCES.labels(kind="unmatched").inc()
        logger.warning("%s report for %s ignored: %s", report.form, ",".join(rcpt_tos), why)
        return Recorded("unmatched")

    async def _record(self, mail_id: str, address: str, notice: Notice) -> Recorded:
        kind = str(notice.kind)
        for _ in range(_CAS_TRIES):
            record = await self.store.get(mail_id)
            if record is None:
                return self._gone(mail_id)
            if record.status in _BUSY:
                raise NotYetSentError(f"mail {mail_id} is {record.status}; its outcome is not recorded yet")
            change = self._change(record, address, notice)
            if change is None:
                logger.info("mail id=%s recipient=%s: this %s was recorded already", mail_id, address, kind)
                await self._suppress(mail_id, address, notice)
                return Recorded(kind, mail_id, address, notice.reply)
            if await self.store.update(mail_id, change):
                break
        else:
            raise StoreError(f"mail {mail_id} kept changing while a {kind} notice was recorded on it")
        metrics.BOUNCES.labels(kind=kind).inc()
        log = logger.info if notice.kind is Kind.SOFT else logger.warning
        log(
            "mail id=%s recipient=%s %s status=%s code=%s reply=%r%s",
            mail_id,
            address,
            {"hard": "bounced", "soft": "delayed (soft bounce)", "complaint": "complained"}[kind],
            notice.status or "-",
            notice.code,
            notice.text,
            f" mail_status={change.status}" if change.status is not None else "",
        )
        await self._suppress(mail_id, address, notice)
        return Recorded(kind, mail_id, address, notice.reply, changed=True)

    async def _suppress(self, mail_id: str, address: str, notice: Notice) -> None:
        """Put the recipient of a hard bounce (not a 5.7.x policy refusal) or complaint on the list."""
        suppressions = self.suppressions
        if suppressions is None or not suppressions.available or not suppressions.enabled:
            return
        if notice.kind is Kind.HARD and self.suppress_hard_bounces and not notice.status.startswith("5.7."):
            await suppressions.record_hard_bounce(address, mail_id, notice.reply)
        elif notice.kind is Kind.COMPLAINT:
            try:
                await suppressions.add(
                    address, SuppressionReason.COMPLAINT, mail_id=mail_id, text=notice.reply
                )
            except ValueError as exc:
                logger.warning("not suppressing %r after a complaint: %s", address, exc)

    def _gone(self, mail_id: str) -> Recorded:
        metrics.BOUNCES.labels(kind="unmatched").inc()
        logger.warning("mail id=%s was deleted while a report about it was recorded; ignored", mail_id)
        return Recorded("unmatched")

    @staticmethod
    def _change(record: MailRecord, address: str, notice: Notice) -> RecordUpdate | None:
        """The update recording ``notice`` on ``record``; ``None`` if it is there already."""
        reply = notice.reply
        state = _STATE.get(notice.kind)
        recipients = record.recipients
        if state is not None:
            current = next((r for r in recipients if r.address == address), None)
            if current is not None and current.state is state and current.reply == reply:
                return None
            recipients = tuple(
                RecipientOutcome(r.address, state, notice.code, reply) if r.address == address else r
                for r in recipients
            )
        elif any(
            a.outcome == "delayed" and a.reply == reply and address in {r.address for r in a.recipients}
            for a in record.history[-3:]
        ):
            return None
        status = None
        if (
            record.status in (Status.SENT, Status.UNKNOWN)
            and any(r.state is RecipientState.BOUNCED for r in recipients)
            and all(r.state in (RecipientState.BOUNCED, RecipientState.FAILED) for r in recipients)
        ):
            status = Status.BOUNCED
        now = utcnow()
        about = tuple(r for r in recipients if r.address == address)
        attempt = Attempt(record.attempts + 1, now, now, _OUTCOME[notice.kind], notice.code, reply, about)
        last_error = None if notice.kind is Kind.SOFT else f"{_OUTCOME[notice.kind]}: {address}: {reply}"
        return RecordUpdate(
            status=status,
            attempt=attempt,
            recipients=recipients if state is not None else None,
            last_error=last_error[:1000] if last_error else None,
            last_code=notice.code if notice.kind is Kind.HARD else None,
            expect=frozenset({record.status}),
            expect_updated_at=record.updated_at,
        )
