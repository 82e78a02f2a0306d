"""Acknowledging a task whose broker channel was closed (after a Redis restart), against a
real redis-server and kombu's own Redis transport.

Kombu fails such an ack with an AttributeError that Celery treats as unrecoverable (the
worker stopped); the app's request class leaves the message in Redis' ``unacked`` hash
instead, where the visibility sweep finds it.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.worker.request import Request

from greenplace.scheduler.settings import load_settings
from greenplace.scheduler.worker.app import CONTROL_QUEUE, ClosedChannelSafeRequest, create_app
from tests.redisproc import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")


def _delivered(app: Celery, conn: Any) -> Any:
    """Publish one ``greenplace.noop`` and take it off its queue as a worker would (unacked)."""
    app.send_task("greenplace.noop", connection=conn)
    message = conn.default_channel.basic_get(CONTROL_QUEUE, no_ack=False)
    assert message is not None
    return message


def _request(cls: type[Request], app: Celery, message: Any) -> Request:
    return cls(message, app=app, task=app.tasks["greenplace.noop"],
               on_ack=message.ack_log_error, on_reject=message.reject_log_error,
               connection_errors=())


def test_an_ack_on_a_closed_channel_leaves_the_message_for_redelivery(
        server: RedisServer) -> None:
    redis = server.client()
    redis.flushall()
    app = create_app(load_settings({"GREENPLACE_REDIS_URL": server.url}))
    app.loader.import_default_modules()  # the tasks, as a worker imports them
    assert app.Task.Request.endswith(":ClosedChannelSafeRequest")

    # An open channel: the ack goes through and Redis forgets the message.
    with app.connection_for_write() as conn:
        message = _delivered(app, conn)
        assert redis.hlen("unacked") == 1
        request = _request(ClosedChannelSafeRequest, app, message)
        request.acknowledge()
        assert request.acknowledged and redis.hlen("unacked") == 0

    # The connection closed under the message (what Celery does when Redis goes away).
    conn = app.connection_for_write()
    message = _delivered(app, conn)
    conn.close()
    with pytest.raises(AttributeError):  # kombu's failure that stopped workers
        _request(Request, app, message).acknowledge()
    safe = _request(ClosedChannelSafeRequest, app, message)
    safe.acknowledge()
    safe.reject(requeue=True)  # nothing more happens to an already handled message
    assert safe.acknowledged
    assert redis.hlen("unacked") == 1  # still there: the visibility sweep redelivers it
    rejected = _request(ClosedChannelSafeRequest, app, message)
    rejected.reject(requeue=True)
    assert rejected.acknowledged and redis.hlen("unacked") == 1
