"""The greenplace service: catalog, signals, estimation, placement, job store, worker and CLI.

Installed as ``greenplace.scheduler``. Importing it imports no cloud SDK and opens no connection.
"""
