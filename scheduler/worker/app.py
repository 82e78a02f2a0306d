"""The Celery app factory and the module-level ``app`` that ``celery -A`` and Flower load.

Creating the app reads the settings and opens no connection. The settings, in
Celery terms, and why:

- JSON only (``task_serializer``, ``accept_content``): no pickle on the wire.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  after its task ran; a pool process that dies mid-task gets its message
  requeued at once by the worker's main process.
- ``worker_prefetch_multiplier = 1``: a worker holds at most one unstarted
  message per pool process, so a crash strands as few as possible.
- Time limits on every task (soft = hard - 3 s): no task can hold a message,
  or the dispatch lock, longer than ``task_time_limit_s``.
- **Visibility timeout** (``GREENPLACE_VISIBILITY_TIMEOUT_S``, 45 s): when a whole
  worker is SIGKILLed (machine gone), its unacknowledged messages sit in Redis'
  ``unacked`` hash; any live worker moves those older than the visibility timeout
  back to their queue. The sweep runs every 5 s (``unacked_restore_interval``,
  with ``unacked_restore_throttle = 1``: kombu's defaults would sweep every
  100 s), so such a message is running again 45-50 s after it was delivered:
  within about a minute. It cannot be shorter than the longest time a live
  worker may hold a message (a task's hard limit plus the longest retry
  countdown, ``MAX_COUNTDOWN_S``): the settings loader enforces that, or Redis
  would hand a running task to a second worker.
- ``unacked_mutex_expire = 30`` s: a worker killed while sweeping blocks the
  sweep for 30 s, not kombu's default 5 minutes.
- Deferred jobs are never held as ETA messages (an ETA beyond the visibility
  timeout would be redelivered over and over); ``reconcile`` releases them.
- **No restore on connection close** (kombu's Redis ``QoS.restore_at_shutdown``
  off): when Redis goes away, Celery closes the broker connection and kombu would
  try to push the worker's unacknowledged messages back through that dead
  connection; kombu fails there with an AttributeError that Celery treats as
  unrecoverable, and the worker exits (seen in the Redis-restart test under load).
  Those messages stay in the ``unacked`` hash instead and the visibility sweep
  above brings them back within 45-50 s, as for a killed worker.
- ``worker_cancel_long_running_tasks_on_connection_loss``: on a lost broker
  connection, tasks still running are cancelled and redelivered later. Otherwise
  such a task acknowledges its message on the dead channel when it ends, kombu
  fails there and the worker exits. Every task is idempotent (dispatch holds a
  lock and an idempotency key), so a cancelled one is safe to run again.
- **No ack on a closed channel** (``task_cls`` = ``GreenplaceTask``, whose
  ``Request`` is ``ClosedChannelSafeRequest``). Root cause of the
  ``AttributeError("'NoneType' object has no attribute 'client'")`` in kombu's
  ``QoS.ack`` that still stopped workers after a Redis restart: the setting above
  cancels only the requests a pool process had *started*; a message already
  handed to the pool but not yet started, or one whose task ended as the
  connection dropped, is acknowledged afterwards on its old channel, which kombu
  closed (``channel.connection`` is None), and kombu fails with that
  AttributeError, which Celery does not count as a connection error. The request
  class skips the ack / reject of a message whose channel is closed and logs it:
  the message stays in the ``unacked`` hash and the visibility sweep redelivers
  it (the task is idempotent), exactly as for a worker that died.
- **Bounded broker I/O**: ``task_publish_retry_policy`` tries a publish 3 times
  within about 1 s (Celery's default waits up to 3 s plus a connection attempt
  per try), and the broker sockets have a 2 s connect and a 5 s read timeout
  (kombu's default waits forever on a broker that stopped answering). A task
  that publishes during an outage (a follow-up, ``self.retry``) therefore fails
  within a few seconds, far inside its soft time limit; see ``tasks`` for how the
  message comes back. This is one part of the fix for the workers that stopped
  after a 30 s outage (``Soft time limit exceeded``, then ``Unrecoverable error:
  UnicodeDecodeError``); ``tasks``' docstring tells the root cause and the rest.
- **Heartbeat**: the worker's main process records itself in Redis every few
  seconds (``heartbeat``), which ``greenplace status`` / ``submit`` read.
- No result backend: job state lives in the job store.
- ``global_keyprefix`` (``GREENPLACE_KEY_PREFIX``): every key and channel kombu uses
  (queues, ``unacked``, ``unacked_index``, ``_kombu.binding.*``, the pidbox fanout
  channel of ``control.ping``) starts with ``{prefix}:``, so deployments with
  distinct prefixes share one Redis; the default prefix leaves them unprefixed.
- The daily price refresh (``greenplace.catalog_refresh``, every
  ``GREENPLACE_CATALOG_REFRESH_INTERVAL_S``; no entry when 0) is the one task that may run
  for minutes (the clouds' price APIs page through thousands of items). It acknowledges
  its message when it starts and has its own time limits (``tasks.CATALOG_REFRESH_TIME_
  LIMIT_S``): redelivering it after the visibility timeout would start the same slow
  refresh again while it runs; a refresh lost with its worker is simply done at the next
  interval, and until then placement keeps the figures it has.
- Task events are off by default (they cost throughput); Flower switches them on
  by itself (``enable_events``), so it works against this app unchanged.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from typing import Any

from celery import Celery, Task
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis

from greenplace.scheduler.settings import Settings, load_settings

PLACE_QUEUE = "greenplace.place"
DISPATCH_QUEUE = "greenplace.dispatch"
CONTROL_QUEUE = "greenplace.control"
QUEUES = (DISPATCH_QUEUE, PLACE_QUEUE, CONTROL_QUEUE)
TASK_QUEUES = {
    "greenplace.place": PLACE_QUEUE,
    "greenplace.dispatch": DISPATCH_QUEUE,
    "greenplace.reconcile": CONTROL_QUEUE,
    "greenplace.terminate": CONTROL_QUEUE,
    "greenplace.attribute": CONTROL_QUEUE,
    "greenplace.gc": CONTROL_QUEUE,
    "greenplace.prune": CONTROL_QUEUE,
    "greenplace.catalog_refresh": CONTROL_QUEUE,
    "greenplace.noop": CONTROL_QUEUE,
}
UNACKED_RESTORE_INTERVAL_S = 5.0
BROKER_CONNECT_TIMEOUT_S = 2.0
BROKER_SOCKET_TIMEOUT_S = 5.0
# 3 tries, 0 / 0.5 / 0.5 s apart: a publish during an outage fails in about 1 s.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                        "interval_max": 0.5}

log = logging.getLogger("greenplace.worker")

_SETTINGS: weakref.WeakKeyDictionary[Celery, Settings] = weakref.WeakKeyDictionary()


def settings_of(app: Celery) -> Settings:
    """The settings ``app`` was created with."""
    found = _SETTINGS.get(app)
    return found if found is not None else load_settings()


class ClosedChannelSafeRequest(Request):
    """A task request that leaves its message unacknowledged when its channel is closed.

    See the module docstring: the message stays in Redis' ``unacked`` hash and is
    redelivered after the visibility timeout instead of stopping the worker.
    """

    def _channel_closed(self) -> bool:
        return getattr(self.message.channel, "connection", None) is None

    def _skip(self, what: str) -> None:
        log.warning("not %s task %s (%s): its broker connection was closed; the message is "
                    "redelivered after the visibility timeout", what, self.id, self.name)
        self.acknowledged = True  # nothing more to do with this message here

    def acknowledge(self) -> None:
        if self.acknowledged:
            return
        try:
            if self._channel_closed():
                self._skip("acknowledging")
                return
            super().acknowledge()
        except AttributeError:  # the channel closed between the check and the ack
            if not self._channel_closed():
                raise
            self._skip("acknowledging")

    def reject(self, requeue: bool = False) -> None:
        if self.acknowledged:
            return
        try:
            if self._channel_closed():
                self._skip("rejecting")
                return
            super().reject(requeue=requeue)
        except AttributeError:
            if not self._channel_closed():
                raise
            self._skip("rejecting")


class GreenplaceTask(Task):  # type: ignore[misc]
    """The base of every task of the app: only its request class differs from Celery's."""

    Request = f"{__name__}:ClosedChannelSafeRequest"


def _ssl_options(settings: Settings) -> dict[str, Any] | None:
    if not settings.tls:
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_cert is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_cert)
    return options


def create_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app on the settings' Redis. Opens no connection.

    Raises:
        ConfigError: unusable ``GREENPLACE_*`` variables (when ``settings`` is None).
    """
    settings = settings or load_settings()
    kombu_redis.QoS.restore_at_shutdown = False  # see the module docstring
    limit = settings.task_time_limit_s
    soft = max(1.0, limit - 3.0)
    app = Celery("greenplace", broker=settings.broker_url, task_cls=GreenplaceTask,
                 include=["greenplace.scheduler.worker.tasks"])
    ssl_options = _ssl_options(settings)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=limit,
        task_soft_time_limit=soft,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 30,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
            "global_keyprefix": settings.broker_key_prefix,
        },
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_use_ssl=ssl_options,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        enable_utc=True,
        timezone="UTC",
        beat_schedule={
            "greenplace-reconcile": {
                "task": "greenplace.reconcile",
                "schedule": settings.reconcile_interval_s,
                # A pass that waited longer than one interval is superseded by the next.
                "options": {"expires": max(settings.reconcile_interval_s, 1.0)},
            },
            "greenplace-gc": {
                "task": "greenplace.gc",
                "schedule": settings.gc_interval_s,
                "options": {"expires": settings.gc_interval_s},
            },
            "greenplace-prune": {
                "task": "greenplace.prune",
                "schedule": settings.prune_interval_s,
                "options": {"expires": settings.prune_interval_s},
            },
            **({"greenplace-catalog-refresh": {
                "task": "greenplace.catalog_refresh",
                "schedule": settings.catalog_refresh_interval_s,
                "options": {"expires": settings.catalog_refresh_interval_s},
            }} if settings.catalog_refresh_interval_s > 0 else {}),
        },
    )
    _SETTINGS[app] = settings
    return app


app = create_app()

