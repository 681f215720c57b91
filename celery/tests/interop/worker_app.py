"""The Celery app kombu-celery's tests run a real worker of (written as kombu_rs_tasks.py).

Its broker is $KOMBU_RS_BROKER with the transport options $KOMBU_RS_OPTIONS (JSON), its result
backend $KOMBU_RS_BACKEND (none when unset) with the same options. kombu_rs.record writes its
arguments and request to the file it is given; tasks.add, tasks.mul and tasks.fail are the issue's.
"""

import json
import os

from celery import Celery

app = Celery("kombu_rs_tasks", broker=os.environ["KOMBU_RS_BROKER"])
app.conf.broker_transport_options = json.loads(os.environ.get("KOMBU_RS_OPTIONS", "{}"))
app.conf.task_default_queue = os.environ["KOMBU_RS_QUEUE"]
app.conf.worker_hijack_root_logger = False
if os.environ.get("KOMBU_RS_BACKEND"):
    app.conf.result_backend = os.environ["KOMBU_RS_BACKEND"]
    app.conf.result_backend_transport_options = app.conf.broker_transport_options
app.conf.broker_connection_retry_on_startup = True


@app.task(name="kombu_rs.record", bind=True)
def record(self, path, a, b, *, label=None, nested=None):
    out = {
        "args": [a, b],
        "label": label,
        "nested": nested,
        "id": self.request.id,
        "root_id": self.request.root_id,
        "parent_id": self.request.parent_id,
        "retries": self.request.retries,
        "eta": self.request.eta,
        "delivery_info": self.request.delivery_info,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, path)
    return a + b


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)
