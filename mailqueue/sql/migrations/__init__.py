"""Alembic migrations of mailqueue's SQL schema (:mod:`mailqueue.sql.schema`).

Run them with :func:`mailqueue.sql.migrate.upgrade` or ``mailqueue db
upgrade``; no ``alembic.ini`` is needed. This package imports nothing.
"""
