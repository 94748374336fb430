"""The suppression list: ``mailqueue_suppression``.

One row per suppressed address (normalised, unique), with the reason, the
mail and SMTP/DSN text that caused it, and an optional expiry. Like the
revisions before it, it checks what exists first, so it can run again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copy of the id type of this revision (schema.py may move on).
BigId = (
    sa.BigInteger()
    .with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
    .with_variant(sa.Integer(), "sqlite")
)

TABLE = "mailqueue_suppression"
#: (name, columns, unique) of the table's indexes.
INDEXES = [
    ("uq_mailqueue_suppression_address", ["address"], True),
    ("ix_mailqueue_suppression_created_at", ["created_at"], False),
    ("ix_mailqueue_suppression_reason_created_at", ["reason", "created_at"], False),
]


def upgrade() -> None:
    """Create the table and its indexes (those missing)."""
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(TABLE):
        op.create_table(
            TABLE,
            sa.Column("id", BigId, primary_key=True, autoincrement=True),
            sa.Column("address", sa.String(254), nullable=False),
            sa.Column("reason", sa.String(16), nullable=False),
            sa.Column("mail_id", sa.String(64), nullable=True),
            sa.Column("text", sa.String(1000), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("expires_at", sa.DateTime(), nullable=True),
        )
        existing: set[str] = set()
    else:
        existing = {str(index["name"]) for index in inspector.get_indexes(TABLE)}
    for name, columns, unique in INDEXES:
        if name not in existing:
            op.create_index(name, TABLE, columns, unique=unique)


def downgrade() -> None:
    """Drop the table (and with it the list)."""
    if sa.inspect(op.get_bind()).has_table(TABLE):
        op.drop_table(TABLE)
