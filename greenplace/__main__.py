"""``python -m greenplace`` runs the greenplace CLI."""

from greenplace.scheduler.cli import main

main()
