"""The original service's ``email`` table.

Created only where it does not exist yet, so that a new database and one
adopted from the original service converge: on MySQL/MariaDB with the
original DDL verbatim, elsewhere with its closest equivalent.

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

#: The original service's DDL (REFERENCE.md), with ``IF NOT EXISTS``.
ORIGINAL_MYSQL_DDL = """
CREATE TABLE IF NOT EXISTS `email` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `title` VARCHAR(255) NOT NULL DEFAULT '',
  `content` TEXT NOT NULL,
  `sender_name` VARCHAR(50) NOT NULL DEFAULT '',
  `receiver` TEXT NOT NULL,
  `receiver_name` TEXT NOT NULL,
  `attachment` VARCHAR(1000) NOT NULL DEFAULT '',
  `remark` VARCHAR(100) NOT NULL DEFAULT '',
  `is_ok` TINYINT UNSIGNED NOT NULL DEFAULT 0,
  `is_deleted` TINYINT UNSIGNED NOT NULL DEFAULT 0,
  `created_at` DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  `updated_at` DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (`id`), KEY `idx-created_at` (`created_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

# Frozen copies of the column types of this revision (schema.py may move on).
BigId = (
    sa.BigInteger()
    .with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
    .with_variant(sa.Integer(), "sqlite")
)
TinyFlag = sa.SmallInteger().with_variant(mysql.TINYINT(unsigned=True), "mysql", "mariadb")


def upgrade() -> None:
    """Create ``email`` unless it exists (an adopted table is left as it is)."""
    bind = op.get_bind()
    if bind.dialect.name in ("mysql", "mariadb"):
        op.execute(ORIGINAL_MYSQL_DDL)
        return
    if sa.inspect(bind).has_table("email"):
        return
    op.create_table(
        "email",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(255), nullable=False, server_default=""),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sender_name", sa.String(50), nullable=False, server_default=""),
        sa.Column("receiver", sa.Text(), nullable=False),
        sa.Column("receiver_name", sa.Text(), nullable=False),
        sa.Column("attachment", sa.String(1000), nullable=False, server_default=""),
        sa.Column("remark", sa.String(100), nullable=False, server_default=""),
        sa.Column("is_ok", TinyFlag, nullable=False, server_default="0"),
        sa.Column("is_deleted", TinyFlag, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("updated_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()),
    )
    op.create_index("idx-created_at", "email", ["created_at"])


def downgrade() -> None:
    """Keep ``email``: it holds the mail records, possibly the original service's.

    Dropping it is left to the operator.
    """
