"""The HTTP API (FastAPI, ``greenplace api``): routes over ``scheduler.service``, token auth,
telemetry ingest, Prometheus metrics and the dashboard's static assets."""
