"""greenplace: a carbon-aware multi-cloud scheduler for ML training jobs.

Importing this package imports no cloud SDK and opens no connection.
"""

__version__ = "0.1.0"
