"""Conformance suite of the :class:`~mailqueue.protocols.SuppressionStore` capability.

Part of :class:`~mailqueue.testing.store.StoreConformance` (it needs the same
opened ``store`` fixture); a store without the capability skips every test. Times may be kept to the
second only, cut (compared with :func:`~mailqueue.testing.store.assert_same_time`);
everything else is compared exactly. Points the suite pins down beyond the
docstrings: a closed store raises :class:`~mailqueue.errors.StoreError`;
an expired entry is still listed and counted (unless ``active_only``) but
never returned by ``get_suppressions``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailqueue.errors import StoreError
from mailqueue.protocols import Store, SuppressionStore
from mailqueue.records import utcnow
from mailqueue.suppression import Suppression, SuppressionQuery, SuppressionReason
from mailqueue.testing.store.data import assert_same_time

__all__ = ["SuppressionConformance"]


def _entry(
    address: str, reason: SuppressionReason = SuppressionReason.MANUAL, **changes: object
) -> Suppression:
    return Suppression(address=address, reason=reason, **changes)  # type: ignore[arg-type]


class SuppressionConformance:
    """The tests every :class:`~mailqueue.protocols.SuppressionStore` passes."""

    @pytest.fixture
    def suppressions(self, store: Store) -> SuppressionStore:
        if not isinstance(store, SuppressionStore):
            pytest.skip("the store has no suppression list (SuppressionStore)")
        return store

    def assert_same_entry(self, got: Suppression | None, expected: Suppression) -> None:
        """``got`` is ``expected``, its times possibly cut to the second."""
        assert got is not None, f"no entry for {expected.address}"
        assert (got.address, got.reason, got.mail_id, got.text) == (
            expected.address,
            expected.reason,
            expected.mail_id,
            expected.text,
        )
        assert_same_time(got.created_at, expected.created_at)
        if expected.expires_at is None:
            assert got.expires_at is None
        else:
            assert_same_time(got.expires_at, expected.expires_at)

    async def test_suppression_add_then_get_returns_every_field(self, suppressions: SuppressionStore) -> None:
        entry = _entry(
            "gone@example.com",
            SuppressionReason.HARD_BOUNCE,
            mail_id="m-123",
            text="550 5.1.1 <gone@example.com>: Recipient address rejected: User ünknown",
            expires_at=utcnow() + timedelta(days=30),
        )
        stored = await suppressions.add_suppression(entry)
        self.assert_same_entry(stored, entry)
        found = await suppressions.get_suppressions(["gone@example.com"], now=utcnow())
        assert list(found) == ["gone@example.com"]
        self.assert_same_entry(found["gone@example.com"], entry)

    async def test_suppression_an_entry_without_mail_or_text_or_expiry(
        self, suppressions: SuppressionStore
    ) -> None:
        entry = _entry("manual@example.com")
        await suppressions.add_suppression(entry)
        found = await suppressions.get_suppressions(["manual@example.com"], now=utcnow())
        self.assert_same_entry(found.get("manual@example.com"), entry)

    async def test_suppression_adding_again_replaces_the_entry(self, suppressions: SuppressionStore) -> None:
        await suppressions.add_suppression(
            _entry("x@example.com", SuppressionReason.HARD_BOUNCE, mail_id="m1", text="550 5.1.1 gone")
        )
        later = _entry(
            "x@example.com",
            SuppressionReason.COMPLAINT,
            mail_id="m2",
            text="abuse report",
            created_at=utcnow() + timedelta(seconds=5),
            expires_at=utcnow() + timedelta(days=1),
        )
        await suppressions.add_suppression(later)
        found = await suppressions.get_suppressions(["x@example.com"], now=utcnow())
        self.assert_same_entry(found.get("x@example.com"), later)
        assert await suppressions.count_suppressions(SuppressionQuery()) == 1
        # and back to no mail, no text, no expiry
        plain = _entry("x@example.com")
        await suppressions.add_suppression(plain)
        found = await suppressions.get_suppressions(["x@example.com"], now=utcnow())
        self.assert_same_entry(found.get("x@example.com"), plain)

    async def test_suppression_remove(self, suppressions: SuppressionStore) -> None:
        await suppressions.add_suppression(_entry("a@example.com"))
        await suppressions.add_suppression(_entry("b@example.com"))
        assert await suppressions.remove_suppression("a@example.com") is True
        assert await suppressions.remove_suppression("a@example.com") is False
        assert await suppressions.remove_suppression("nobody@example.com") is False
        found = await suppressions.get_suppressions(["a@example.com", "b@example.com"], now=utcnow())
        assert list(found) == ["b@example.com"]

    async def test_suppression_get_many_leaves_out_unknown_and_expired(
        self, suppressions: SuppressionStore
    ) -> None:
        now = utcnow()
        await suppressions.add_suppression(_entry("forever@example.com"))
        await suppressions.add_suppression(_entry("later@example.com", expires_at=now + timedelta(hours=1)))
        await suppressions.add_suppression(_entry("expired@example.com", expires_at=now - timedelta(hours=1)))
        asked = [
            "forever@example.com",
            "later@example.com",
            "expired@example.com",
            "unknown@example.com",
            "forever@example.com",
        ]
        found = await suppressions.get_suppressions(asked, now=now)
        assert sorted(found) == ["forever@example.com", "later@example.com"]
        # the same entry seen from two hours on: expired too
        found = await suppressions.get_suppressions(asked, now=now + timedelta(hours=2))
        assert sorted(found) == ["forever@example.com"]
        assert await suppressions.get_suppressions([], now=now) == {}

    async def test_suppression_get_many_takes_hundreds_of_addresses(
        self, suppressions: SuppressionStore
    ) -> None:
        for n in range(0, 1200, 100):
            await suppressions.add_suppression(_entry(f"user{n}@example.com"))
        asked = [f"user{n}@example.com" for n in range(1200)]
        found = await suppressions.get_suppressions(asked, now=utcnow())
        assert sorted(found) == sorted(f"user{n}@example.com" for n in range(0, 1200, 100))

    async def test_suppression_list_filters_orders_and_pages(self, suppressions: SuppressionStore) -> None:
        start = utcnow() - timedelta(hours=1)
        reasons = list(SuppressionReason)
        for n in range(10):
            await suppressions.add_suppression(
                _entry(
                    f"user{n}@{'example.com' if n % 2 else 'other.org'}",
                    reasons[n % 4],
                    created_at=start + timedelta(minutes=n),
                )
            )
        page = await suppressions.list_suppressions(SuppressionQuery(limit=4))
        assert [e.address for e in page] == [
            "user9@example.com",
            "user8@other.org",
            "user7@example.com",
            "user6@other.org",
        ]
        page = await suppressions.list_suppressions(SuppressionQuery(limit=4, offset=8))
        assert [e.address for e in page] == ["user1@example.com", "user0@other.org"]
        assert await suppressions.list_suppressions(SuppressionQuery(offset=10)) == []
        # a case-insensitive substring of the address
        domain = SuppressionQuery(address="@EXAMPLE.com")
        assert [e.address for e in await suppressions.list_suppressions(domain)] == [
            f"user{n}@example.com" for n in (9, 7, 5, 3, 1)
        ]
        assert await suppressions.count_suppressions(domain) == 5
        # LIKE's wildcards are plain characters
        assert await suppressions.count_suppressions(SuppressionQuery(address="user_@")) == 0
        assert await suppressions.count_suppressions(SuppressionQuery(address="%")) == 0
        complaints = SuppressionQuery(reason=SuppressionReason.COMPLAINT)
        assert [e.address for e in await suppressions.list_suppressions(complaints)] == [
            "user9@example.com",
            "user5@example.com",
            "user1@example.com",
        ]
        both = SuppressionQuery(address="other", reason=SuppressionReason.HARD_BOUNCE)
        assert [e.address for e in await suppressions.list_suppressions(both)] == [
            "user8@other.org",
            "user4@other.org",
            "user0@other.org",
        ]
        assert await suppressions.count_suppressions(SuppressionQuery(limit=1, offset=3)) == 10

    async def test_suppression_same_time_is_ordered_by_address(self, suppressions: SuppressionStore) -> None:
        when = utcnow().replace(microsecond=0)
        for address in ("c@example.com", "a@example.com", "b@example.com"):
            await suppressions.add_suppression(_entry(address, created_at=when))
        page = await suppressions.list_suppressions(SuppressionQuery())
        assert [e.address for e in page] == ["a@example.com", "b@example.com", "c@example.com"]

    async def test_suppression_expired_entries_are_listed_unless_active_only(
        self, suppressions: SuppressionStore
    ) -> None:
        now = utcnow()
        await suppressions.add_suppression(_entry("old@example.com", expires_at=now - timedelta(minutes=5)))
        await suppressions.add_suppression(_entry("new@example.com"))
        assert await suppressions.count_suppressions(SuppressionQuery()) == 2
        active = SuppressionQuery(active_only=True)
        assert [e.address for e in await suppressions.list_suppressions(active)] == ["new@example.com"]
        assert await suppressions.count_suppressions(active) == 1
        # re-adding an expired address makes it suppress again
        await suppressions.add_suppression(_entry("old@example.com", SuppressionReason.HARD_BOUNCE))
        found = await suppressions.get_suppressions(["old@example.com"], now=utcnow())
        assert found["old@example.com"].reason is SuppressionReason.HARD_BOUNCE

    async def test_suppression_long_text_is_kept(self, suppressions: SuppressionStore) -> None:
        text = "550 5.1.1 " + "ü" * 990
        await suppressions.add_suppression(_entry("long@example.com", text=text))
        found = await suppressions.get_suppressions(["long@example.com"], now=utcnow())
        assert found["long@example.com"].text == text

    async def test_suppression_a_closed_store_raises_store_error(
        self, store: Store, suppressions: SuppressionStore
    ) -> None:
        await store.close()
        with pytest.raises(StoreError):
            await suppressions.add_suppression(_entry("a@example.com"))
        with pytest.raises(StoreError):
            await suppressions.get_suppressions(["a@example.com"], now=utcnow())
        with pytest.raises(StoreError):
            await suppressions.list_suppressions(SuppressionQuery())
        with pytest.raises(StoreError):
            await suppressions.count_suppressions(SuppressionQuery())
        with pytest.raises(StoreError):
            await suppressions.remove_suppression("a@example.com")
