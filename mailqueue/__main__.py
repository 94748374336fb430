"""``python -m mailqueue`` runs the command line."""

from mailqueue.cli import main

main()
