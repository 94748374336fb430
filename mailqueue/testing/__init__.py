"""testing package: imports nothing, so that importing mailqueue imports no driver."""
