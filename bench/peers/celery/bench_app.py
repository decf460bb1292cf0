"""The Celery app of the benchmark peer (imported by peer.py and by `celery -A bench_app worker`).

It is configured from the environment, so the harness and the worker subprocesses it starts see
the same settings:

  BENCH_CELERY_REDIS      Redis URL: broker and result backend (same server)
  BENCH_CELERY_PREFIX     the run's key namespace; every Redis key the app, its workers and the
                          result backend write starts with "<prefix>:"
  BENCH_CELERY_BROKER_OPTS  optional JSON object merged into broker_transport_options
                          (visibility_timeout, unacked_restore_interval, ...)
  BENCH_CELERY_PREFETCH   optional worker_prefetch_multiplier (Celery's default, 4, otherwise)

Everything else is Celery's default: JSON serializer, the default queue "celery" (whose Redis
list is "<prefix>:celery" through kombu's global_keyprefix), early acks for the no-op task,
prefork pool unless the worker is told otherwise, result expiry one day (SETEX).
"""

import json
import os
import time

import redis
from celery import Celery
from celery.signals import worker_ready

REDIS_URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_CELERY_PREFIX", "celery-bench")
KEYPREFIX = PREFIX + ":"

broker_opts = {"global_keyprefix": KEYPREFIX}
broker_opts.update(json.loads(os.environ.get("BENCH_CELERY_BROKER_OPTS") or "{}"))

app = Celery("bench_app", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    # kombu prefixes every key and pub/sub channel of the broker side (the queue list, the
    # unacked hash/index/mutex, the bindings, the pidbox/celeryev fanout channels) ...
    broker_transport_options=broker_opts,
    # ... and the Redis result backend its "celery-task-meta-<id>" keys and channels.
    result_backend_transport_options={"global_keyprefix": KEYPREFIX},
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_CELERY_PREFETCH"):
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_CELERY_PREFETCH"])

_plain = None


def plain_redis():
    """A plain redis-py client (no kombu prefixing) for the harness's own records."""
    global _plain
    if _plain is None:
        _plain = redis.Redis.from_url(REDIS_URL)
    return _plain


@app.task(name="bench.noop")
def noop():
    """The no-op job: returns the instant its body started (stored by the result backend)."""
    return time.time()


@app.task(name="bench.hold", bind=True, acks_late=True)
def hold(self):
    """The recovery job: records which worker started it and when, then sleeps an hour."""
    plain_redis().rpush(KEYPREFIX + "started", f"{self.request.hostname} {int(time.time() * 1000)}")
    time.sleep(3600)


@worker_ready.connect
def _announce_ready(sender=None, **_):
    """Tells the harness the worker consumes (Celery logs "ready." only at INFO)."""
    plain_redis().set(KEYPREFIX + "ready:" + sender.hostname, str(time.time()))
