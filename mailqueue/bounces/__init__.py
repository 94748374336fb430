"""Bounce and complaint intake: what comes back after a mail was sent.

- :mod:`mailqueue.bounces.parse` reads a report (RFC 3464 DSN, RFC 5965 ARF
  complaint, or a non-standard bounce) into per-recipient notices; the
  standard library's :mod:`email` parser does it.
- :mod:`mailqueue.bounces.intake` finds the mail and recipient (by the VERP
  return path of :mod:`mailqueue.sending.verp`) and records the notice on it.
- :mod:`mailqueue.bounces.listener` is the SMTP listener (aiosmtpd,
  ``mailqueue[bounces]``) that ``mailqueue bounces`` and ``mailqueue serve``
  run.

This package's ``__init__`` imports nothing: ``aiosmtpd`` is needed by the
listener only.
"""
