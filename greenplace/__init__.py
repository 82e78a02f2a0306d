"""greenplace: a carbon-aware multi-cloud scheduler for ML training jobs.

The distribution installs this one top-level package. The repository keeps its three parts
in top-level folders that install beneath it: ``scheduler/`` as ``greenplace.scheduler``,
``providers/`` as ``greenplace.providers`` and ``policies/`` as ``greenplace.policies``.
Importing it imports no cloud SDK and opens no connection.
"""

__version__ = "0.1.0"
