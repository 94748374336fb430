"""``python -m mailqueue`` runs the command line."""

from mailqueue.cli import main

if __name__ == "__main__":
    main()
