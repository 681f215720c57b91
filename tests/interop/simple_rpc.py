"""Python kombu's side of tests/python_simple_rpc.rs: kombu.simple and kombu.common's reply
helpers against kombu-rs's SimpleQueue, RpcClient and RpcServer.

Every command takes a kombu URL and a JSON object of transport options (Redis: the
``global_keyprefix`` of the test), then its own arguments, and prints one JSON document.

    simple_put URL OPTS NAME N     SimpleQueue(NAME).put({"n": i, "from": "python"}) N times,
                                   with the header origin=python
    simple_get URL OPTS NAME N     SimpleQueue(NAME).get(timeout=10) N times, ack each; print
                                   the bodies and headers
    buffer_put URL OPTS NAME N     the same with a SimpleBuffer (transient, no-ack)
    buffer_get URL OPTS NAME N     SimpleBuffer(NAME).get(timeout=10) N times; print the
                                   bodies, headers and delivery modes
    rpc_server URL OPTS QUEUE N    serve N requests {"a", "b"} on QUEUE with send_reply
                                   ({"sum": a + b, "server": "python"}); prints "ready" once
                                   consuming, then the requests' properties
    rpc_client URL OPTS QUEUE N    publish N requests {"a": i, "b": 10} with reply_to (a reply
                                   queue of its own) and correlation_id py-<i>, gather the
                                   replies with collect_replies; print them with their
                                   correlation ids
"""

import json
import signal
import sys
import time
import uuid

from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.common import collect_replies, send_reply
from kombu.simple import SimpleBuffer, SimpleQueue

DEADLINE = 20


class Gathered(Exception):
    """Every reply expected is in."""


def connect(url, opts):
    options = json.loads(opts)
    polling_interval = options.pop("polling_interval", None)
    conn = Connection(url, transport_options=options)
    if polling_interval is not None:
        # Not a transport option there: SQLAlchemy's transport hands those to create_engine.
        conn.transport.polling_interval = polling_interval
    return conn


def put(kind, url, opts, name, n):
    with connect(url, opts) as conn:
        with kind(conn, name) as queue:
            for i in range(int(n)):
                queue.put({"n": i, "from": "python"}, headers={"origin": "python"})
    print(json.dumps({"put": int(n)}))


def get(kind, url, opts, name, n):
    got = []
    with connect(url, opts) as conn:
        with kind(conn, name) as queue:
            for _ in range(int(n)):
                message = queue.get(block=True, timeout=10)
                got.append({"body": message.decode(), "headers": message.headers,
                            "delivery_mode": message.properties.get("delivery_mode")})
                message.ack()  # a no-op for a SimpleBuffer's no-ack messages
    print(json.dumps({"messages": got}))


def rpc_server(url, opts, queue_name, n):
    n = int(n)
    seen = []
    with connect(url, opts) as conn:
        channel = conn.channel()
        producer = Producer(channel)

        def on_request(body, message):
            send_reply(Exchange(""), message, {"sum": body["a"] + body["b"], "server": "python"},
                       producer=producer)
            seen.append({"reply_to": message.properties.get("reply_to"),
                         "correlation_id": message.properties.get("correlation_id"),
                         "content_type": message.content_type})
            message.ack()

        with Consumer(channel, [Queue(queue_name)], callbacks=[on_request], accept=["json"]):
            print("ready", flush=True)
            deadline = time.monotonic() + DEADLINE
            while len(seen) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
    print(json.dumps({"served": len(seen), "requests": seen}), flush=True)


def rpc_client(url, opts, queue_name, n):
    n = int(n)
    replies = []
    with connect(url, opts) as conn:
        channel = conn.channel()
        reply_queue = Queue("reply.py." + uuid.uuid4().hex, exclusive=True, auto_delete=True,
                            durable=False, channel=channel)
        reply_queue.declare()
        producer = Producer(channel)
        for i in range(n):
            producer.publish({"a": i, "b": 10}, routing_key=queue_name, serializer="json",
                             reply_to=reply_queue.name, correlation_id="py-%d" % i)

        def record(body, message):
            replies.append({"body": body,
                            "correlation_id": message.properties.get("correlation_id"),
                            "content_type": message.content_type})
            if len(replies) >= n:
                raise Gathered()

        bodies = collect_replies(conn, channel, reply_queue, limit=None, timeout=0.2,
                                 callbacks=[record])
        try:
            for _ in bodies:
                pass
        except Gathered:
            pass
    print(json.dumps({"replies": replies}))


COMMANDS = {
    "simple_put": lambda *args: put(SimpleQueue, *args),
    "simple_get": lambda *args: get(SimpleQueue, *args),
    "buffer_put": lambda *args: put(SimpleBuffer, *args),
    "buffer_get": lambda *args: get(SimpleBuffer, *args),
    "rpc_server": rpc_server,
    "rpc_client": rpc_client,
}

if __name__ == "__main__":
    # Never outlive a test that gave up on us.
    signal.alarm(60)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
