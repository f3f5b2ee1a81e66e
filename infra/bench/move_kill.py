#!/usr/bin/env python3
"""A merchant move killed mid-freeze, tried as a user would (issue 18).

Only the standard library and the payfn command line: a plain HTTP client,
`payfn up` on the embedded defaults, `payfn shards move`, kill -9.

1. `payfn up` with PAYFN_MOVE_STALL_AT="frozen after the last copy" (the
   driver parks mid-freeze, after writing the last changes to the target).
2. `payfn bench` gives merchant 1 its history (BULK_SECONDS at BULK_RATE/s
   of authorize+capture).
3. Client threads authorize and capture for merchant 1 (moving) and
   merchant 2 (staying), each request with an Idempotency-Key, retried with
   the same key on a dropped connection, a 503 or a 5xx, as a payments
   client does. A payment counts as acknowledged when its capture answered.
4. Merchant 1 moves to shard-1; once it is frozen and its requests get
   503s, the host gets SIGKILL. It restarts without the stall; another
   driver takes the move over and ends it.
5. Checks: the move ended, every acknowledged payment is CAPTURED for its
   amount, no order was authorized twice (order ids are the clients' keys),
   merchant 1 has no rows left on shard-2, `payfn reconcile` finds no drift.

    [PAYFN=./target/release/payfn] [BULK_RATE=500] [BULK_SECONDS=40] \\
        infra/bench/move_kill.py
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

PAYFN = os.environ.get("PAYFN", "./target/release/payfn")
BULK_RATE = os.environ.get("BULK_RATE", "500")
BULK_SECONDS = os.environ.get("BULK_SECONDS", "40")
STALL = "frozen after the last copy"

state = tempfile.mkdtemp(prefix="payfn-move-kill-")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = f"http://127.0.0.1:{port}"
common = ["--manifest", "spin.toml", "--state-dir", state]
log = open(os.path.join(state, "host.log"), "ab")


def say(*what):
    print(time.strftime("%H:%M:%S"), *what, flush=True)


def start_host(stall=None):
    env = dict(os.environ)
    env.pop("PAYFN_MOVE_STALL_AT", None)
    if stall:
        env["PAYFN_MOVE_STALL_AT"] = stall
    host = subprocess.Popen([PAYFN, "up", "--listen", f"127.0.0.1:{port}"] + common,
                            env=env, stdout=log, stderr=log)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return host
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    sys.exit(f"the host did not get ready; see {state}/host.log")


def payfn(*args):
    return subprocess.run([PAYFN, *args, "--admin-url", url] + common, check=True,
                          capture_output=True, text=True).stdout


def status():
    return json.loads(payfn("shards", "status", "--json"))


host = start_host(STALL)
say(f"host up at {url}, state in {state}")
keys = {m: subprocess.run([PAYFN, "keys", "issue", "--merchant", str(m)] + common, check=True,
                          capture_output=True, text=True).stdout.strip() for m in (1, 2)}

say(f"merchant 1's history: authorize+capture at {BULK_RATE}/s for {BULK_SECONDS}s")
subprocess.run([PAYFN, "bench", "--url", url, "--scenario", "authorize-capture", "--rate", BULK_RATE,
                "--duration", f"{BULK_SECONDS}s", "--merchants", "1"] + common,
               check=True, stdout=subprocess.DEVNULL)


def call(merchant, path, body, key):
    """POSTs until a definitive answer: the same key on every retry."""
    data = json.dumps(body).encode()
    while True:
        req = urllib.request.Request(f"{url}{path}", data=data, method="POST", headers={
            "Authorization": f"Bearer {keys[merchant]}", "Content-Type": "application/json",
            "Idempotency-Key": key})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                with lock:
                    unavailable[merchant] += 1
                time.sleep(float(e.headers.get("Retry-After") or 0.2))
                continue
            return e.code, json.loads(e.read() or b"{}")
        except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
            with lock:
                dropped[merchant] += 1
            time.sleep(0.2)


acknowledged = {1: [], 2: []}
refused = []
unavailable = {1: 0, 2: 0}
dropped = {1: 0, 2: 0}
stop = threading.Event()
lock = threading.Lock()


def client(merchant):
    while not stop.is_set():
        order = f"mk-{uuid.uuid4()}"
        amount = 1000 + len(order) % 7
        code, body = call(merchant, "/payments/authorize",
                             {"amount": amount, "currency": "EUR", "orderId": order}, order)
        if code not in (200, 201) or body.get("status") != "AUTHORIZED":
            with lock:
                refused.append((merchant, code, body))
            continue
        code, captured = call(merchant, f"/payments/{body['id']}/capture", {}, f"{order}-capture")
        with lock:
            if code == 200 and captured.get("status") == "CAPTURED":
                acknowledged[merchant].append((body["id"], order, amount))
            else:
                refused.append((merchant, code, captured))


threads = [threading.Thread(target=client, args=(m,)) for m in (1, 1, 1, 1, 2, 2)]
for t in threads:
    t.start()
time.sleep(3)
say("moving merchant 1 to shard-1")
move = subprocess.Popen([PAYFN, "shards", "move", "--merchant", "1", "--to", "shard-1", "--no-wait",
                         "--json", "--admin-url", url] + common, stdout=subprocess.PIPE, text=True)
move_id = json.loads(move.communicate()[0])["id"]
deadline = time.time() + 600
while not any(m["id"] == move_id and m["step"] == "frozen" for m in status()["moving"]):
    if time.time() > deadline:
        sys.exit("the move never froze")
    time.sleep(0.2)
before = unavailable[1]
while unavailable[1] == before:
    time.sleep(0.05)
say(f"frozen, merchant 1 answered 503 ({unavailable[1]} so far): kill -9 the host")
host.send_signal(signal.SIGKILL)
host.wait()
time.sleep(2)
host = start_host()
say("restarted; waiting for the move to be taken over and end")
deadline = time.time() + 300
while any(m["id"] == move_id for m in status()["moving"]):
    if time.time() > deadline:
        sys.exit("the move did not end after the restart")
    time.sleep(0.5)
time.sleep(3)
stop.set()
for t in threads:
    t.join()
say(f"move ended; acknowledged: merchant 1 {len(acknowledged[1])}, merchant 2 {len(acknowledged[2])}; "
    f"5xx answers: merchant 1 {unavailable[1]}, merchant 2 {unavailable[2]}; "
    f"dropped by the kill: {dropped[1] + dropped[2]}; refused: {len(refused)}")

failures = [f"refused: {r}" for r in refused]
for merchant in (1, 2):
    for pid, order, amount in acknowledged[merchant]:
        req = urllib.request.Request(f"{url}/payments/{pid}",
                                     headers={"Authorization": f"Bearer {keys[merchant]}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            p = json.loads(r.read())
        if p["status"] != "CAPTURED" or p["capturedAmount"] != amount or p["orderId"] != order:
            failures.append(f"merchant {merchant}: {pid} is {p}")
shards = {}
for name in ("shard-1", "shard-2"):
    path = next((os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs if f == f"{name}.db"), None)
    if path is None:
        sys.exit(f"no {name}.db under {state}")
    shards[name] = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
left = shards["shard-2"].execute("SELECT COUNT(*) FROM payments WHERE merchant_id = 1").fetchone()[0]
if left:
    failures.append(f"merchant 1 still has {left} payments on shard-2")
twice = shards["shard-1"].execute(
    "SELECT COUNT(*) FROM (SELECT order_id FROM payments WHERE order_id LIKE 'mk-%' "
    "GROUP BY merchant_id, order_id HAVING COUNT(*) > 1)").fetchone()[0]
if twice:
    failures.append(f"{twice} orders authorized twice")
reconcile = subprocess.run([PAYFN, "reconcile", "--wait", "60s"] + common, capture_output=True, text=True)
say("payfn reconcile:", reconcile.stdout.strip().splitlines()[-1] if reconcile.stdout.strip() else "",
    f"(exit {reconcile.returncode})")
if reconcile.returncode != 0:
    failures.append(f"reconcile: {reconcile.stdout}{reconcile.stderr}")
host.terminate()
host.wait()
if failures:
    print("\n".join(failures[:20]))
    sys.exit(f"{len(failures)} failures; state in {state}")
say(f"every acknowledged payment found and captured; state in {state}")
