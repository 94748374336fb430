"""Alembic migrations of mailqueue's SQL schema (:mod:`mailqueue.stores.schema`).

Run them with :func:`mailqueue.stores.sql.upgrade` or ``mailqueue db
upgrade``; no ``alembic.ini`` is needed. This package imports nothing.
"""
