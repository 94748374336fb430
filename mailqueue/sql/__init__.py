"""sql package: everything SQL (engine, migrations, rows, fast path, the store and its
reads, writes and changes, queue, attachments).

It imports nothing, so that importing mailqueue imports no driver; the
modules are loaded by the registry when a URL asks for them.
"""
