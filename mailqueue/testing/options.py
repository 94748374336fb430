"""The URL-option rule every backend follows, for the conformance suites and backend tests.

A backend refuses an option it does not know with a
:class:`~mailqueue.errors.ConfigurationError` that names it and lists the
valid ones. The valid ones are those of the backend's ``url_options`` model
(a pydantic model, see :func:`mailqueue.backends._base.parse_options`) when it
declares one, else those the test's URL itself uses.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from mailqueue.errors import ConfigurationError
from mailqueue.protocols import BackendContext

__all__ = ["UNKNOWN_OPTION", "URLOptionsCheck", "assert_unknown_option_refused", "valid_option_names"]

#: The option name no backend has.
UNKNOWN_OPTION = "mailqueue_no_such_option"


def valid_option_names(factory: Any, url: str) -> list[str]:
    """The option names ``factory`` declares in ``url_options``, else those ``url`` uses."""
    model = getattr(factory, "url_options", None)
    if model is not None:
        return [field.alias or name for name, field in model.model_fields.items()]
    return [name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)]


def _with_unknown_option(url: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{UNKNOWN_OPTION}=1" if parts.query else f"{UNKNOWN_OPTION}=1"
    return parts._replace(query=query).geturl()


def assert_unknown_option_refused(factory: Any, url: str, context: BackendContext | None = None) -> None:
    """``factory.from_url`` refuses ``url`` plus an unknown option, naming it and listing the valid ones.

    Args:
        factory: the backend class (anything with ``from_url(url, *, context)``).
        url: a URL that ``factory`` accepts with ``context``.
        context: what the factory is given besides the URL.
    """
    context = context or BackendContext()
    factory.from_url(url, context=context)  # the URL itself is fine
    with pytest.raises(ConfigurationError) as caught:
        factory.from_url(_with_unknown_option(url), context=context)
    message = str(caught.value)
    assert UNKNOWN_OPTION in message, f"the error does not name the unknown option: {message!r}"
    missing = [
        name
        for name in valid_option_names(factory, url)
        if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message)
    ]
    assert not missing, f"the error does not list the valid option(s) {missing}: {message!r}"


class URLOptionsCheck:
    """The URL-option part of a conformance suite, for the suites to inherit.

    A test class gives ``backend_url`` (and ``backend_context`` where the backend
    needs one); the suite's own test calls :meth:`check_url_options` with the
    backend under test. Without ``backend_url`` the test is skipped.
    """

    @pytest.fixture
    def backend_url(self) -> str | None:
        """Default: no URL, and the URL-option test is skipped (override to run it)."""
        return None

    @pytest.fixture
    def backend_context(self) -> BackendContext:
        """What ``from_url`` is given with ``backend_url`` (default: nothing)."""
        return BackendContext()

    @staticmethod
    def check_url_options(backend: object, url: str | None, context: BackendContext) -> None:
        """:func:`assert_unknown_option_refused` for ``backend``'s class; a skip without ``url``."""
        if url is None:
            pytest.skip("the test class gives no backend_url")
        assert_unknown_option_refused(type(backend), url, context)
