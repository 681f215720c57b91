"""Celery's own send_task rate on Redis: N `app.send_task("tasks.add", (i, i), queue=Q)` calls
(protocol 2, JSON, the queue declared once by Celery), timed after a warm-up call; prints
{"rate": calls per second}. Arguments: REDIS_URL KEY_PREFIX N. Deletes its keys at the end.
"""

import json
import sys
import time

from celery import Celery

url, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = Celery("kombu_rs_bench", broker=url)
app.conf.broker_transport_options = {"global_keyprefix": prefix}
queue = "bench-celery"
app.send_task("tasks.add", (0, 0), queue=queue)  # connects and declares
start = time.perf_counter()
for i in range(n):
    app.send_task("tasks.add", (i, i), queue=queue)
took = time.perf_counter() - start
with app.connection_for_write() as conn:
    client = conn.default_channel.client
    keys = client.keys(prefix + "*")
    if keys:
        client.delete(*keys)
print(json.dumps({"rate": n / took}))
