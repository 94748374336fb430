"""Conformance suite of the :class:`~mailqueue.protocols.Store` contract.

Subclass :class:`StoreConformance` in a test module and provide a ``store``
fixture that yields an OPENED store, empty at the start of each test::

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def store(self) -> AsyncIterator[Store]:
            async with MyStore(...) as store:
                yield store

The tests need pytest-asyncio (``asyncio_mode = "auto"``).

Optionally provide ``backend_url``, a URL that ``type(store).from_url(url,
context=backend_context)`` accepts: the suite then checks that an unknown URL
option is refused with the valid ones listed (see
:mod:`mailqueue.testing.options`). Without it (the default ``None``, e.g. for
a store whose URL query belongs to its driver) that test is skipped.

What a store may do differently and still conform:

- times may be kept to the second only, cut (never rounded): they are
  compared with :func:`assert_same_time`;
- ``remark`` may be cut to 100 characters, ``last_error`` to 1000.

Everything else is compared exactly. Points the suite pins down beyond the
docstrings of :class:`~mailqueue.protocols.Store`: ``add`` of an id that is
taken (without a taken idempotency key) raises
:class:`~mailqueue.errors.StoreError`; ``find`` takes ``since`` as inclusive
and ``until`` as exclusive; the history lists attempts in the order they were
added; a closed store raises :class:`~mailqueue.errors.StoreError`.

The optional capabilities (:class:`~mailqueue.protocols.PrunableStore`,
:class:`~mailqueue.protocols.InspectableStore`, :class:`~mailqueue.protocols.BatchStore`,
:class:`~mailqueue.protocols.BatchUpdateStore`, :class:`~mailqueue.protocols.SuppressionStore`)
are tested when the store has them and skipped otherwise.
"""

from __future__ import annotations

from mailqueue.testing.store.batches import BatchesConformance
from mailqueue.testing.store.data import assert_same_time, make_mail, make_record, rich_mail
from mailqueue.testing.store.inspection import InspectionConformance
from mailqueue.testing.store.queries import QueriesConformance
from mailqueue.testing.store.records import RecordsConformance
from mailqueue.testing.store.suppression import SuppressionConformance
from mailqueue.testing.store.updates import UpdatesConformance

__all__ = [
    "BatchesConformance",
    "InspectionConformance",
    "QueriesConformance",
    "RecordsConformance",
    "StoreConformance",
    "SuppressionConformance",
    "UpdatesConformance",
    "assert_same_time",
    "make_mail",
    "make_record",
    "rich_mail",
]


class StoreConformance(
    RecordsConformance,
    UpdatesConformance,
    BatchesConformance,
    QueriesConformance,
    InspectionConformance,
    SuppressionConformance,
):
    """The Store contract, one test per point. Needs an opened ``store`` fixture.

    The points are grouped by area in the classes it inherits (one module each);
    a store's tests may also inherit only some of them.
    """
