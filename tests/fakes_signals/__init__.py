"""Local HTTP fakes of the live carbon signal APIs, answering in their real JSON formats.

Each fake runs an ``http.server`` in a thread on 127.0.0.1 (a free port) and can
be switched into failure modes: an HTTP error status, a slow answer past the
client's timeout, a malformed payload, or a body that is not JSON.
"""
