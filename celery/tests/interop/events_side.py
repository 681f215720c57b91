"""Celery 5.7's event receiver (the library Flower uses) listening to a node, for kombu-celery's
event tests.

    events_side.py NODE COUNT SECONDS

Broker and transport options from $KOMBU_RS_BROKER and $KOMBU_RS_OPTIONS (JSON). Prints
"ready" once it heard NODE (the heartbeat the receiver's wake-up asks for), then listens until
NODE sent COUNT task-succeeded/-failed events (or SECONDS passed) and prints one JSON object:
the events NODE sent, in the order they came, and what celery.events.state.State made of them.
"""

import json
import os
import sys
import time

from celery import Celery

node, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
app = Celery("kombu_rs_events", broker=os.environ["KOMBU_RS_BROKER"])
app.conf.broker_transport_options = json.loads(os.environ.get("KOMBU_RS_OPTIONS", "{}"))
state = app.events.State()
seen = []
done = [0]
deadline = time.monotonic() + seconds


def on_event(event):
    state.event(event)
    if event.get("hostname") != node:
        return
    if not seen:
        print("ready", flush=True)
    seen.append({k: event.get(k) for k in ("type", "uuid", "clock", "timestamp", "freq",
                                            "sw_ident", "active", "processed", "result",
                                            "name", "args", "exception")})
    if event["type"] in ("task-succeeded", "task-failed"):
        done[0] += 1


with app.connection() as conn:
    receiver = app.events.Receiver(conn, handlers={"*": on_event})
    try:
        # Yields after each message; raises socket.timeout after SECONDS without one.
        for _ in receiver.itercapture(limit=None, timeout=seconds, wakeup=True):
            if done[0] >= count or time.monotonic() > deadline:
                break
    except OSError:
        pass

worker = state.workers.get(node)
print(json.dumps({
    "events": seen,
    "tasks": {uuid: task.state for uuid, task in state.tasks.items()},
    "worker": None if worker is None else {
        "alive": worker.alive, "freq": worker.freq, "sw_ident": worker.sw_ident,
        "processed": worker.processed, "heartbeats": len(worker.heartbeats),
    },
}), flush=True)
