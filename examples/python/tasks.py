"""The Python side of examples/celery_worker.rs: the same six tasks, as Celery 5 defines them.

Either side runs them: send from Python to a Rust worker (or the other way round) and read the
results with AsyncResult.get().

    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/1 \
        python -c 'from tasks import add; print(add.delay(2, 3).get(timeout=10))'
    CELERY_BROKER_URL=... celery -A tasks worker -c 2      # a Python worker for the same tasks

Settings from the environment: CELERY_BROKER_URL, CELERY_RESULT_BACKEND, CELERY_QUEUE (the
default queue, `celery` when unset) and CELERY_TRANSPORT_OPTIONS (JSON, for the broker and the
result backend alike).
"""

import json
import os
import time

from celery import Celery

app = Celery("tasks")
app.conf.broker_url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app.conf.result_backend = os.environ.get("CELERY_RESULT_BACKEND") or None
app.conf.task_default_queue = os.environ.get("CELERY_QUEUE", "celery")
_options = json.loads(os.environ.get("CELERY_TRANSPORT_OPTIONS", "{}"))
app.conf.broker_transport_options = _options
app.conf.result_backend_transport_options = _options
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.echo")
def echo(value):
    return value


@app.task(name="tasks.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.flaky", bind=True, max_retries=None)
def flaky(self, times):
    if self.request.retries < times:
        raise self.retry(countdown=0.1)
    return self.request.retries
