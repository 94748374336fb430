"""mailqueue's public API: ``__all__`` is sorted, complete and importable."""

from __future__ import annotations

import types

import mailqueue


def test_all_is_sorted() -> None:
    assert mailqueue.__all__ == sorted(mailqueue.__all__)


def test_all_names_exist() -> None:
    for name in mailqueue.__all__:
        assert hasattr(mailqueue, name), name


def test_every_public_object_is_exported() -> None:
    public = {
        name
        for name, value in vars(mailqueue).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public == set(mailqueue.__all__) - {"__version__"}


def test_exported_classes_and_functions_are_documented() -> None:
    for name in mailqueue.__all__:
        value = getattr(mailqueue, name)
        if isinstance(value, type) or callable(value):
            assert value.__doc__, f"{name} has no docstring"
