"""The Celery side of the service: the app factory (``app``) and the thin tasks (``tasks``).

This package is the only place Celery is imported; ``import greenplace.scheduler.worker``
itself imports nothing. Run a worker with ``greenplace worker`` or
``celery -A scheduler.worker.app worker``; Flower works with
``celery -A scheduler.worker.app flower``.
"""
