"""Indexes for the operator dashboard's lists, counts and activity chart.

A page of ``email`` is read in ``uid`` order (keyset pagination) and stops
after ``limit`` rows, so each filter that a page may use alone gets an index
that ends in ``uid``; ``is_deleted`` sits before it because pages leave
deleted records out:

- ``(status, is_deleted, uid)`` replaces ``(status, id)``: a page of one
  status, and ``count_by_status`` and capped counts read the index only;
- ``(last_code, is_deleted, uid)``: a page of one SMTP reply code;
- ``(created_at, is_deleted, uid)``: a page of a time window, sorted from the
  index alone (MySQL/MariaDB are told to use it, since they would rather walk
  ``uq_email_uid`` from the newest row back to the window);
- ``(sent_at)`` and ``(status, updated_at)``: mails sent, and mails failed or
  dead, per minute of the activity chart (``created_at`` has its index already);
- ``(uid, is_deleted, title)``: a subject search reads this index, in uid
  order, instead of the rows (a twentieth of their size), and then only the
  rows of the page. ``uid`` comes first: led by ``is_deleted``, MariaDB took
  it for every page and for ``count_by_status`` (seconds on a million rows).

Substring filters cannot seek in a B-tree index: a recipient search walks
``uq_email_uid`` and reads the rows, a subject search the index above; both
stop after ``limit`` matches. Like revision 0002, every step checks what
exists first, so the revision can run again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

#: (name, columns) of the indexes added to ``email``.
EMAIL_INDEXES = [
    ("ix_email_status_deleted_uid", ["status", "is_deleted", "uid"]),
    ("ix_email_code_deleted_uid", ["last_code", "is_deleted", "uid"]),
    ("ix_email_created_deleted_uid", ["created_at", "is_deleted", "uid"]),
    ("ix_email_uid_deleted_title", ["uid", "is_deleted", "title"]),
    ("ix_email_sent_at", ["sent_at"]),
    ("ix_email_status_updated_at", ["status", "updated_at"]),
]
#: (name, columns) of revision 0002's index that the first one above replaces.
REPLACED = ("ix_email_status_id", ["status", "id"])
#: Indexes of an early version of this revision, dropped where present.
DROPPED = ["ix_email_deleted_uid_title"]


def _indexes() -> set[str]:
    return {str(index["name"]) for index in sa.inspect(op.get_bind()).get_indexes("email")}


def upgrade() -> None:
    """Add the dashboard's indexes, then drop the one they make redundant."""
    existing = _indexes()
    for name, columns in EMAIL_INDEXES:
        if name not in existing:
            op.create_index(name, "email", columns)
    for name in [REPLACED[0], *DROPPED]:
        if name in existing:
            op.drop_index(name, table_name="email")


def downgrade() -> None:
    """Back to revision 0002's indexes."""
    existing = _indexes()
    name, columns = REPLACED
    if name not in existing:
        op.create_index(name, "email", columns)
    for name, _ in reversed(EMAIL_INDEXES):
        if name in existing:
            op.drop_index(name, table_name="email")
