#!/usr/bin/env python3
"""Soak of the control plane's store (docs/performance.md#control-plane-store-soak).

Starts `citadel nexus serve` on a fresh folder, pushes JOBS no-op jobs through it as a worker
would (submit, claim, `claimed` and `end` events, ack) from a few threads, and samples the store
folder's size every few seconds. Then waits, restarts the plane and samples again (the restart
gives back what sled keeps). Not a test: it prints figures.

usage: nexus-soak.py [--jobs N] [--payload BYTES] [--threads T] [--every S] BIN [SERVE_FLAGS...]
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers=self.auth)
        r = self.conn.getresponse()
        text = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {text!r}")
        return json.loads(text) if text else None


def start(binary, data, port, flags):
    log = open(data + ".log", "a")
    p = subprocess.Popen(
        [binary, "nexus", "serve", "--listen", f"127.0.0.1:{port}", "--data", data, *flags],
        stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if os.path.exists(os.path.join(data, "token")):
                break
        except OSError:
            time.sleep(0.02)
    return p, open(os.path.join(data, "token")).read().strip()


def worker(port, token, n, payload, done, lock, tid):
    c = Client(port, token)
    blob = "x" * payload
    left = n
    while left > 0:
        batch = min(50, left)
        for _ in range(batch):
            body = {"type": "noop"}
            if payload:
                body["payload"] = {"blob": blob}
            c.call("POST", "/api/v1/jobs", body)
        got = []
        while len(got) < batch:
            got += c.call("POST", "/api/v1/jobs/claim",
                          {"worker": f"soak-{tid}", "max": batch - len(got),
                           "lease_ms": 600000})["jobs"]
        for j in got:
            jid, lease = j["id"], j["lease"]["id"]
            for ty, data in (("claimed", {"agent_version": "soak"}), ("end", {"result": None})):
                ev = {"version": "1.0", "type": ty, "jobId": jid,
                      "timestamp": "2026-01-01T00:00:00Z", "data": data}
                c.call("POST", f"/api/v1/jobs/{jid}/events?lease_id={lease}", ev)
            c.call("POST", f"/api/v1/jobs/{jid}/settle", {"lease_id": lease, "action": "ack"})
        left -= batch
        with lock:
            done[0] += batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--payload", type=int, default=0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds to wait after the last job")
    ap.add_argument("flags", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="nexus-soak-")
    data = os.path.join(tmp, "plane")
    port = free_port()
    proc, token = start(a.binary, data, port, a.flags)
    done, lock = [0], threading.Lock()
    per = a.jobs // a.threads
    threads = [threading.Thread(target=worker, args=(port, token, per, a.payload, done, lock, t))
               for t in range(a.threads)]
    t0 = time.time()
    for t in threads:
        t.start()
    print("seconds\tjobs_done\tstore_bytes", flush=True)
    while any(t.is_alive() for t in threads):
        time.sleep(a.every)
        print(f"{time.time() - t0:.0f}\t{done[0]}\t{du(data)}", flush=True)
    for t in threads:
        t.join()
    ran = time.time() - t0
    time.sleep(a.settle)
    stats = Client(port, token).call("GET", "/api/v1/stats") if "--retention" in " ".join(a.flags) else {}
    print(f"# {done[0]} jobs in {ran:.0f}s; {a.settle:.0f}s later: {du(data)} bytes, "
          f"stats {json.dumps(stats)}", flush=True)
    proc.terminate()
    proc.wait()
    proc, token = start(a.binary, data, port, a.flags)
    print(f"# after a restart: {du(data)} bytes", flush=True)
    proc.terminate()
    proc.wait()


if __name__ == "__main__":
    sys.exit(main())
