"""The suppression list's conformance suite over every Store, and its migration."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mailqueue.protocols import BackendContext, Store
from mailqueue.sql.store import SQLStore
from mailqueue.stores.memory import MemoryStore
from mailqueue.testing.suppression import SuppressionConformance

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sql-sqlite"),
    pytest.param("mysql", id="sql-mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", id="sql-postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """``memory://`` or a fresh database of each SQL server."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


class TestSuppressionConformance(SuppressionConformance):
    @pytest.fixture
    async def store(self, store_url: str) -> AsyncIterator[Store]:
        backend: Store
        if store_url == "memory://":
            backend = MemoryStore.from_url(store_url, context=BackendContext())
        else:
            backend = SQLStore.from_url(store_url, context=BackendContext())
        async with backend:
            yield backend
