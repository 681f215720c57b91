"""Celery 5.7's side of kombu-celery's tests.

    format CASES_JSON       for each case, the message Celery's own app.amqp.as_task_v2 builds
                            (headers, body, properties) as JSON, one list
    send URL OPTS QUEUE     send_task three tasks (protocol 2) and one with protocol 1 to QUEUE;
                            print their ids
    result BACKEND OPTS ID  AsyncResult(ID).get(timeout=10) from the result backend: the state
                            and the value, or the exception's type, module and text
"""

import datetime
import json
import sys

from celery import Celery, signature


def when(text):
    return datetime.datetime.fromisoformat(text) if text else None


def sig(app, spec):
    return dict(signature(spec["task"], args=tuple(spec.get("args", ())),
                          kwargs=spec.get("kwargs", {}), options=spec.get("options", {}),
                          immutable=spec.get("immutable", False), app=app))


def fmt(cases):
    app = Celery("kombu_rs_format", broker="memory://")
    out = []
    for case in cases:
        chain = [sig(app, s) for s in case.get("chain", [])]
        chain.reverse()  # Celery's order: the next task last
        m = app.amqp.as_task_v2(
            case["id"], case["name"], args=tuple(case["args"]), kwargs=case["kwargs"],
            eta=when(case.get("eta")), expires=when(case.get("expires")),
            retries=case.get("retries", 0), root_id=case.get("root_id"),
            parent_id=case.get("parent_id"), group_id=case.get("group"),
            group_index=case.get("group_index"), time_limit=case.get("time_limit"),
            soft_time_limit=case.get("soft_time_limit"), shadow=case.get("shadow"),
            ignore_result=case.get("ignore_result"), origin=case["origin"],
            callbacks=[sig(app, s) for s in case.get("link", [])] or None,
            errbacks=[sig(app, s) for s in case.get("link_error", [])] or None,
            chain=chain or None,
        )
        headers = dict(m.headers)
        headers.update(case.get("headers", {}))
        out.append({"headers": headers, "body": list(m.body), "properties": m.properties})
    print(json.dumps(out))


def send(url, opts, queue):
    app = Celery("kombu_rs_send", broker=url)
    app.conf.broker_transport_options = json.loads(opts)
    ids = []
    r = app.send_task("tasks.add", (2, 3), queue=queue)
    ids.append(r.id)
    r = app.send_task("tasks.add", (1, 2), {"k": "v"}, queue=queue, countdown=30, expires=600,
                      priority=5, time_limit=10, soft_time_limit=5)
    ids.append(r.id)
    r = app.send_task("tasks.mul", (3,), queue=queue,
                      link=signature("tasks.log", args=("done",), app=app))
    ids.append(r.id)
    # A second app: the protocol is chosen when an app first builds a message.
    old = Celery("kombu_rs_send_v1", broker=url)
    old.conf.broker_transport_options = json.loads(opts)
    old.conf.task_protocol = 1
    r = old.send_task("tasks.old", (7,), {"x": 1}, queue=queue, countdown=30)
    ids.append(r.id)
    print(json.dumps({"ids": ids}))


def result(backend, opts, task_id):
    app = Celery("kombu_rs_result", backend=backend)
    app.conf.result_backend_transport_options = json.loads(opts)
    r = app.AsyncResult(task_id)
    try:
        value = r.get(timeout=10)
        print(json.dumps({"state": r.state, "value": value}))
    except Exception as e:  # the task's own exception, re-raised by Celery
        print(json.dumps({"state": r.state, "error_type": type(e).__name__,
                          "error_module": type(e).__module__, "error": str(e)}))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "format":
        fmt(json.loads(sys.argv[2]))
    elif command == "send":
        send(*sys.argv[2:])
    elif command == "result":
        result(*sys.argv[2:])
