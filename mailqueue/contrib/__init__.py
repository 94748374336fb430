"""Integrations of mailqueue with other frameworks.

Nothing is imported here: each integration is a subpackage that needs its own
extra (``mailqueue.contrib.litestar_app`` needs ``pip install 'mailqueue[litestar]'``).
"""
