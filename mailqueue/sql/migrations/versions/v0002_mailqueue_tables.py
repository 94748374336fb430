"""mailqueue's columns on ``email``, its indexes, and mailqueue's own tables.

The added columns are nullable or defaulted, so existing rows stay valid.
Rows already there (the original service's) are backfilled: ``uid`` becomes
``legacy-<id>``, ``status`` ``sent`` where ``is_ok = 1`` and ``failed``
otherwise, ``attempts`` 1. Every step checks what exists first, so the
revision can run again over a database that has (some of) it already, e.g.
after a failure half-way on MySQL, where DDL is not transactional.

Revision ID: 0002
Revises: 0001
Create Date: 2024-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the column types of this revision (schema.py may move on).
BigId = (
    sa.BigInteger()
    .with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
    .with_variant(sa.Integer(), "sqlite")
)
RefId = sa.BigInteger().with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
Blob = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


def _email_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("uid", sa.String(64), nullable=True),
        sa.Column("message_id", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("recipients", LongText, nullable=True),
        sa.Column("payload", LongText, nullable=True),
        sa.Column("last_error", sa.String(1000), nullable=False, server_default=""),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
    ]


#: (name, columns, unique) of the indexes added to ``email``.
EMAIL_INDEXES = [
    ("uq_email_uid", ["uid"], True),
    ("uq_email_idempotency_key", ["idempotency_key"], True),
    ("ix_email_status_id", ["status", "id"], False),
]


def _create_email_attempt() -> None:
    op.create_table(
        "email_attempt",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("email_id", RefId, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("reply", sa.String(1000), nullable=False, server_default=""),
        sa.Column("recipients", LongText, nullable=True),
    )
    op.create_index("ix_email_attempt_email_id", "email_attempt", ["email_id", "number"])


def _create_queue() -> None:
    op.create_table(
        "mailqueue_queue",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("msg_key", sa.String(64), nullable=False),
        sa.Column("body", Blob, nullable=False),
        sa.Column("available_at", sa.BigInteger(), nullable=False),
        sa.Column("lease", sa.String(32), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("state", sa.String(8), nullable=False, server_default="ready"),
        sa.Column("dead_reason", sa.String(1000), nullable=False, server_default=""),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_mailqueue_queue_ready", "mailqueue_queue", ["queue", "state", "available_at"])


def _create_attachment() -> None:
    op.create_table(
        "mailqueue_attachment",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("complete", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def _create_attachment_chunk() -> None:
    op.create_table(
        "mailqueue_attachment_chunk",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("data", Blob, nullable=False),
    )


#: Tables of this revision, in creation order, with their creators.
NEW_TABLES = [
    ("email_attempt", _create_email_attempt),
    ("mailqueue_queue", _create_queue),
    ("mailqueue_attachment", _create_attachment),
    ("mailqueue_attachment_chunk", _create_attachment_chunk),
]


def upgrade() -> None:
    """Add what is missing; backfill rows that have no ``uid`` yet."""
    bind = op.get_bind()
    columns = {column["name"] for column in sa.inspect(bind).get_columns("email")}
    for column in _email_columns():
        if column.name not in columns:
            op.add_column("email", column)

    email = sa.table(
        "email",
        sa.column("id", sa.BigInteger()),
        sa.column("uid", sa.String()),
        sa.column("is_ok", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("attempts", sa.Integer()),
        sa.column("updated_at", sa.DateTime()),
    )
    op.execute(
        email.update()
        .where(email.c.uid.is_(None))
        .values(
            uid=sa.literal("legacy-", sa.String()) + sa.cast(email.c.id, sa.String(20)),
            status=sa.case((email.c.is_ok == 1, "sent"), else_="failed"),
            attempts=1,
            # set to itself so that MySQL's ON UPDATE CURRENT_TIMESTAMP keeps the original time
            updated_at=email.c.updated_at,
        )
    )

    inspector = sa.inspect(bind)
    indexes = {index["name"] for index in inspector.get_indexes("email")}
    for name, index_columns, unique in EMAIL_INDEXES:
        if name not in indexes:
            op.create_index(name, "email", index_columns, unique=unique)
    tables = set(inspector.get_table_names())
    for table, create in NEW_TABLES:
        if table not in tables:
            create()


def downgrade() -> None:
    """Back to the original table: drop mailqueue's tables, indexes and columns.

    The rows of ``email`` are kept; what mailqueue recorded beyond the
    original columns (payloads, attempts, queued messages) is lost.
    """
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())
    for table, _ in reversed(NEW_TABLES):
        if table in tables:
            op.drop_table(table)
    indexes = {index["name"] for index in inspector.get_indexes("email")}
    for name, _, _ in EMAIL_INDEXES:
        if name in indexes:
            op.drop_index(name, table_name="email")
    columns = {column["name"] for column in inspector.get_columns("email")}
    for column in reversed(_email_columns()):
        if column.name in columns:
            op.drop_column("email", column.name)
