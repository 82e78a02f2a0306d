"""``python -m scheduler`` runs the greenplace CLI."""

from scheduler.cli import main

main()
