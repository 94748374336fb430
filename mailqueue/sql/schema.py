"""The SQL tables mailqueue uses, as SQLAlchemy Core metadata.

``email`` keeps every column of the original service's table with the same
name and meaning and adds mailqueue's own; ``email_attempt`` has a row per
delivery attempt; ``mailqueue_queue`` is the ``sql`` queue; the two
``mailqueue_attachment*`` tables are the ``sql`` attachment store;
``mailqueue_suppression`` is the suppression list.

The Alembic migrations in ``mailqueue/sql/migrations`` create exactly
this; a test compares the migrated database with this metadata.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "VERSION_TABLE",
    "attachment_chunks",
    "attachments",
    "email",
    "email_attempt",
    "metadata",
    "queue",
    "suppression",
]

#: Alembic's version table, named so as not to clash with an application's own.
VERSION_TABLE = "mailqueue_alembic_version"

metadata = sa.MetaData()

# BIGINT UNSIGNED AUTO_INCREMENT on MySQL, as in the original; SQLite only
# auto-increments an INTEGER PRIMARY KEY.
BigId = (
    sa.BigInteger()
    .with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
    .with_variant(sa.Integer(), "sqlite")
)
RefId = sa.BigInteger().with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
TinyFlag = sa.SmallInteger().with_variant(mysql.TINYINT(unsigned=True), "mysql", "mariadb")
# TEXT holds only 64 KiB on MySQL; payloads can be four times the body limit.
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
Blob = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")

email = sa.Table(
    "email",
    metadata,
    # --- the original service's columns -------------------------------------
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
    # --- added by mailqueue (nullable so that adopting an old table only adds) -
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
    sa.Index("idx-created_at", "created_at"),
    sa.Index("uq_email_uid", "uid", unique=True),
    sa.Index("uq_email_idempotency_key", "idempotency_key", unique=True),
    # the dashboard's pages (keyset on uid), counts and activity chart: see revision 0003
    sa.Index("ix_email_status_deleted_uid", "status", "is_deleted", "uid"),
    sa.Index("ix_email_code_deleted_uid", "last_code", "is_deleted", "uid"),
    sa.Index("ix_email_created_deleted_uid", "created_at", "is_deleted", "uid"),
    sa.Index("ix_email_uid_deleted_title", "uid", "is_deleted", "title"),
    sa.Index("ix_email_sent_at", "sent_at"),
    sa.Index("ix_email_status_updated_at", "status", "updated_at"),
)

email_attempt = sa.Table(
    "email_attempt",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("email_id", RefId, nullable=False),
    sa.Column("number", sa.Integer(), nullable=False),
    sa.Column("started_at", sa.DateTime(), nullable=False),
    sa.Column("finished_at", sa.DateTime(), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("code", sa.Integer(), nullable=True),
    sa.Column("reply", sa.String(1000), nullable=False, server_default=""),
    sa.Column("recipients", LongText, nullable=True),
    sa.Index("ix_email_attempt_email_id", "email_id", "number"),
)

queue = sa.Table(
    "mailqueue_queue",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("msg_key", sa.String(64), nullable=False),
    sa.Column("body", Blob, nullable=False),
    # milliseconds since the epoch: claimed rows are pushed into the future
    # by their lease, so one index serves ready, delayed and expired leases.
    sa.Column("available_at", sa.BigInteger(), nullable=False),
    sa.Column("lease", sa.String(32), nullable=True),
    sa.Column("deliveries", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("state", sa.String(8), nullable=False, server_default="ready"),
    sa.Column("dead_reason", sa.String(1000), nullable=False, server_default=""),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_mailqueue_queue_ready", "queue", "state", "available_at"),
)

attachments = sa.Table(
    "mailqueue_attachment",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
    sa.Column("complete", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)

attachment_chunks = sa.Table(
    "mailqueue_attachment_chunk",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("data", Blob, nullable=False),
)

suppression = sa.Table(
    "mailqueue_suppression",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # normalised (lower-cased); 254 characters is the longest valid address
    sa.Column("address", sa.String(254), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("mail_id", sa.String(64), nullable=True),
    sa.Column("text", sa.String(1000), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=True),
    sa.Index("uq_mailqueue_suppression_address", "address", unique=True),
    # the list's pages, newest first, all or of one reason
    sa.Index("ix_mailqueue_suppression_created_at", "created_at"),
    sa.Index("ix_mailqueue_suppression_reason_created_at", "reason", "created_at"),
)
