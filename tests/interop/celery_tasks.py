"""Python Celery's side of tests/celery_worker.rs: sends the tasks of examples/python/tasks.py
as Celery's own clients do, to a queue our Rust worker consumes, and prints (as JSON) what
AsyncResult.get() gave back.

    celery_tasks.py checks            every check below, one JSON object out
    celery_tasks.py chain PY_QUEUE    a chain across languages: Rust, then Python, then Rust
    celery_tasks.py chord PY_QUEUE    chords whose headers run on both workers
    celery_tasks.py canvas PY_QUEUE chords|nochords
                                      a group, and a chord, as steps our worker sends
    celery_tasks.py many N            N tasks.echo(i), then their results

Its app is examples/python/tasks.py, configured from CELERY_BROKER_URL, CELERY_RESULT_BACKEND,
CELERY_QUEUE (our worker's queue) and CELERY_TRANSPORT_OPTIONS.
"""

import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))

from celery import chain, chord, group  # noqa: E402

import tasks  # noqa: E402

WAIT = 30


def failure(result):
    """The exception a result raises, as [module, type, args]."""
    try:
        value = result.get(timeout=WAIT)
    except Exception as exc:  # the task's exception, re-raised by Celery
        return [type(exc).__module__, type(exc).__name__, [str(a) for a in exc.args]]
    return ["no exception", repr(value), []]


def checks():
    out = {}
    out["add"] = tasks.add.delay(2, 3).get(timeout=WAIT)
    out["add_kwargs"] = tasks.add.apply_async(kwargs={"x": 3, "y": 4}).get(timeout=WAIT)
    out["echo"] = tasks.echo.delay({"a": [1, 2.5, None, "x"]}).get(timeout=WAIT)
    out["fail"] = failure(tasks.fail.delay("boom"))
    out["flaky"] = tasks.flaky.delay(2).get(timeout=WAIT)
    # Due after it expires: revoked when its eta comes.
    out["expired"] = failure(tasks.add.apply_async((1, 1), countdown=2, expires=1))
    sent = datetime.datetime.now(datetime.timezone.utc)
    due = tasks.add.apply_async((4, 4), countdown=2)
    out["eta"] = due.get(timeout=WAIT)
    done = due.date_done
    if done is not None and done.tzinfo is None:
        done = done.replace(tzinfo=datetime.timezone.utc)
    out["eta_not_early"] = done is not None and done >= sent + datetime.timedelta(seconds=2)
    out["time_limit"] = failure(tasks.sleep.apply_async((10,), time_limit=1))
    # Protocol 1, as Celery 3 clients (and task_protocol = 1) write it.
    tasks.app.conf.task_protocol = 1
    out["protocol1"] = tasks.add.delay(5, 6).get(timeout=WAIT)
    tasks.app.conf.task_protocol = 2
    return out


def cross_chain(py_queue):
    rust = tasks.app.conf.task_default_queue
    flow = chain(
        tasks.add.s(1, 2).set(queue=rust),
        tasks.mul.s(3).set(queue=py_queue),
        tasks.add.s(4).set(queue=rust),
    )
    result = flow.apply_async()
    value = result.get(timeout=WAIT)
    return {"value": value, "parent": result.parent.get(timeout=WAIT)}


def cross_chord(py_queue):
    rust = tasks.app.conf.task_default_queue
    # The body on our worker's queue (on SQL, our worker runs celery.chord_unlock too).
    ours = chord(
        [
            tasks.add.s(1, 1).set(queue=rust),
            tasks.add.s(2, 2).set(queue=py_queue),
            tasks.add.s(3, 3).set(queue=rust),
        ],
        tasks.echo.s().set(queue=rust),
    ).apply_async()
    # The body on Python's.
    theirs = chord(
        [tasks.add.s(10, 10).set(queue=py_queue), tasks.add.s(20, 20).set(queue=rust)],
        tasks.echo.s().set(queue=py_queue),
    ).apply_async()
    return {"ours": ours.get(timeout=WAIT), "theirs": theirs.get(timeout=WAIT)}


def canvas(py_queue, chords):
    rust = tasks.app.conf.task_default_queue
    out = {}
    # Our worker sends the group that ends the chain, with its result first in each member.
    flow = chain(
        tasks.add.s(1, 1).set(queue=rust),
        group(tasks.mul.s(2).set(queue=py_queue), tasks.mul.s(3).set(queue=rust)),
    )
    out["group"] = flow.apply_async().get(timeout=WAIT)
    if chords:
        # group | task in a chain is a chord (Celery upgrades it); the step after it rides on
        # the chord's body.
        flow = chain(
            tasks.add.s(1, 1).set(queue=rust),
            group(tasks.mul.s(2).set(queue=py_queue), tasks.mul.s(3).set(queue=rust)),
            tasks.echo.s().set(queue=rust),
            tasks.echo.s().set(queue=py_queue),
        )
        out["chord"] = flow.apply_async().get(timeout=WAIT)
    return out


def many(n):
    started = time.monotonic()
    results = [tasks.echo.delay(i) for i in range(n)]
    values = [r.get(timeout=120) for r in results]
    return {"values": values, "seconds": time.monotonic() - started}


def main():
    command = sys.argv[1]
    if command == "checks":
        out = checks()
    elif command == "chain":
        out = cross_chain(sys.argv[2])
    elif command == "chord":
        out = cross_chord(sys.argv[2])
    elif command == "canvas":
        out = canvas(sys.argv[2], sys.argv[3] == "chords")
    elif command == "many":
        out = many(int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
