#!/usr/bin/env python3
"""Celery peer of the citadel benchmark: implements bench/peers/CONTRACT.md.

  peer.py throughput --redis URL --prefix P [--concurrency C] [--jobs N] [--pool prefork|threads]
  peer.py latency    --redis URL --prefix P [--concurrency C] [--rate R] [--seconds D] [--pool ...]
  peer.py recovery   --redis URL --prefix P [--timeout S] [--give-up S] [--pool ...]

Broker and result backend are the given Redis server; every key lives under "<prefix>:" (kombu's
and the result backend's global_keyprefix) and is deleted at the end. The worker is a real
`celery worker` subprocess in its own process group. A job counts as completed when the Redis
result backend has stored its result: the backend writes SETEX <prefix>:celery-task-meta-<id> and
PUBLISHes the same payload on the channel of that name (celery/backends/redis.py,
RedisBackend._set), which the harness follows with one PSUBSCRIBE. Progress goes to stderr, the
JSON result is the last line of stdout.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[celery-peer]", *a, file=sys.stderr, flush=True)


def fail(msg):
    log("error:", msg)
    sys.exit(1)


def glob_escape(s):
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def setup_env(args, broker_opts=None, prefetch=None):
    """Configures bench_app (here and in the workers) through the environment, then imports it."""
    os.environ["BENCH_CELERY_REDIS"] = args.redis
    os.environ["BENCH_CELERY_PREFIX"] = args.prefix
    os.environ["BENCH_CELERY_BROKER_OPTS"] = json.dumps(broker_opts or {})
    if prefetch is not None:
        os.environ["BENCH_CELERY_PREFETCH"] = str(prefetch)
    else:
        os.environ.pop("BENCH_CELERY_PREFETCH", None)
    sys.path.insert(0, HERE)
    import bench_app  # noqa: E402

    return bench_app


def variant(args):
    import celery

    return " ".join([f"celery {celery.__version__} {args.pool}", *args.worker_opt])


# ---------------------------------------------------------------- worker processes


class Worker:
    """One `celery worker` in its own process group (session)."""

    def __init__(self, args, name, concurrency, pool):
        self.name = name
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.prefix)
        self.hostname = f"{name}-{safe}@{os.uname().nodename}"
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench_app", "worker",
            "--pool", pool, "--concurrency", str(concurrency),
            "-n", self.hostname, "--loglevel", "WARNING",
        ] + list(getattr(args, "worker_opt", None) or [])
        env = dict(os.environ)
        env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group

    def alive(self):
        return self.proc.poll() is None

    def pids(self):
        """Processes of the worker's group (the main process and its pool children)."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            st = _stat(d)
            if st is not None and int(st[2]) == self.pgid:
                out.append((d, st))
        return out

    def usage(self):
        """(cpu seconds user+sys incl. reaped children, rss bytes summed) over the group."""
        cpu = 0
        rss = 0
        for _, st in self.pids():
            cpu += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
            rss += int(st[21]) * PAGE
        return cpu / TICKS, rss

    def signal_group(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace=10.0):
        """SIGTERM to the group (Celery's warm shutdown), SIGKILL after `grace` seconds."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"worker {self.name} did not stop within {grace}s: SIGKILL")
        self.kill()

    def kill(self):
        self.signal_group(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        # pool children the main process did not reap may linger a moment: make sure
        deadline = time.time() + 5
        while self.pids() and time.time() < deadline:
            self.signal_group(signal.SIGKILL)
            time.sleep(0.05)


def _die_with_parent():
    """In the worker's main process: SIGKILL it if the harness dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def pss_bytes(pids):
    """Proportional set size summed over pids (shared pages split among their users)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def _stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()  # fields from 3 (state) on: [0]=state [2]=pgrp


def wait_ready(r, app_mod, workers, limit=60.0):
    keys = [app_mod.KEYPREFIX + "ready:" + w.hostname for w in workers]
    deadline = time.time() + limit
    while time.time() < deadline:
        for w in workers:
            if not w.alive():
                fail(f"worker {w.name} exited with {w.proc.returncode} before it was ready")
        if all(r.exists(k) for k in keys):
            return
        time.sleep(0.02)
    fail(f"workers not ready within {limit}s")


def cleanup(r, prefix):
    n = 0
    for pattern in (glob_escape(prefix) + ":*",):
        batch = []
        for k in r.scan_iter(match=pattern, count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                n += r.delete(*batch)
                batch = []
        if batch:
            n += r.delete(*batch)
    log(f"deleted {n} keys under {prefix}:")


def result_pubsub(r, app_mod):
    """PSUBSCRIBE to the result backend's channels of this run (one channel per task id)."""
    ps = r.pubsub(ignore_subscribe_messages=True)
    pattern = glob_escape(app_mod.KEYPREFIX) + "celery-task-meta-*"
    ps.psubscribe(pattern)
    # wait for the subscription to be in place before anything can complete
    deadline = time.time() + 10
    while time.time() < deadline:
        ps.get_message(timeout=0.1)
        if ps.subscribed:
            return ps
    fail("PSUBSCRIBE not confirmed")


def percentile(sorted_vals, p):
    """Nearest rank."""
    if not sorted_vals:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def num(x):
    """200.0 -> 200 in the JSON."""
    return int(x) if float(x).is_integer() else x


def emit(obj):
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------- commands


def cmd_throughput(args):
    app_mod = setup_env(args)
    import redis

    r = redis.Redis.from_url(args.redis)
    workers = []
    try:
        ps = result_pubsub(r, app_mod)
        # apply_async subscribes the *client* to each task's result channel (RedisBackend.
        # on_task_call) and unsubscribes when the AsyncResult is dropped; a fire-and-forget
        # enqueue of N jobs does not need that, and it would leave a second subscriber during
        # the timed part. The worker side is untouched: it stores and publishes each result.
        app_mod.app.backend.on_task_call = lambda producer, task_id: None
        log(f"enqueueing {args.jobs} jobs…")
        t0 = time.time()
        with app_mod.app.producer_or_acquire() as producer:
            # kombu >= 5.7's Producer.batch() pipelines the LPUSHes (1000 per round trip)
            batch = producer.batch(max_size=1000) if hasattr(producer, "batch") else None
            if batch is not None:
                with batch:
                    for _ in range(args.jobs):
                        app_mod.noop.apply_async(producer=producer)
            else:
                for _ in range(args.jobs):
                    app_mod.noop.apply_async(producer=producer)
        queued = r.llen(app_mod.KEYPREFIX + "celery")
        if queued != args.jobs:
            fail(f"{queued} messages in the queue after enqueueing {args.jobs}")
        log(f"enqueued in {time.time() - t0:.1f}s; starting the worker ({args.pool}, concurrency "
            f"{args.concurrency})")

        w = Worker(args, "tp", args.concurrency, args.pool)
        workers.append(w)
        start = w.started_at
        done = 0
        first = None
        peak_rss = 0
        cpu = 0.0
        next_sample = time.time()
        deadline = start + args.max_seconds
        end = None
        while True:
            now = time.time()
            if now >= next_sample:
                cpu, rss = w.usage()
                peak_rss = max(peak_rss, rss)
                next_sample = now + 0.1
                if not w.alive():
                    fail(f"worker exited with {w.proc.returncode} after {done} completions")
                if now > deadline:
                    fail(f"only {done}/{args.jobs} completions after {args.max_seconds}s")
            msg = ps.get_message(timeout=max(0.0, next_sample - time.time()))
            if msg is not None and msg["type"] == "pmessage" and b'"SUCCESS"' in msg["data"]:
                done += 1
                if first is None:
                    first = time.time()
                if done >= args.jobs:
                    end = time.time()
                    cpu, rss = w.usage()
                    peak_rss = max(peak_rss, rss)
                    pids = [p for p, _ in w.pids()]
                    pss = pss_bytes(pids)
                    break
        seconds = end - start
        log(f"first completion {first - start:.2f}s after the worker started (startup: imports, "
            f"pool, mingle); last at {seconds:.2f}s; at the end {len(pids)} processes, RSS sum "
            f"{rss / 2**20:.1f} MB, PSS sum {pss / 2**20:.1f} MB (RSS counts shared pages per process)")
        w.stop()
        ps.close()
        emit({
            "system": "celery",
            "variant": variant(args),
            "concurrency": args.concurrency,
            "jobs": args.jobs,
            "seconds": round(seconds, 4),
            "jobs_per_sec": round(args.jobs / seconds, 1),
            "worker_cpu_seconds": round(cpu, 2),
            "worker_peak_rss_mb": round(peak_rss / 2**20, 1),
            "first_done_s": round(first - start, 4),
        })
    finally:
        for w in workers:
            w.kill()
        cleanup(r, args.prefix)


def cmd_latency(args):
    app_mod = setup_env(args)
    import redis

    r = redis.Redis.from_url(args.redis)
    workers = []
    try:
        ps = result_pubsub(r, app_mod)
        w = Worker(args, "lat", args.concurrency, args.pool)
        workers.append(w)
        wait_ready(r, app_mod, [w])
        log(f"worker ready ({args.pool}, concurrency {args.concurrency}); {args.rate} jobs/s for "
            f"{args.seconds}s")
        enq = {}
        started = {}

        def take(msg):
            if msg is not None and msg["type"] == "pmessage":
                meta = json.loads(msg["data"])
                if meta.get("status") == "SUCCESS":
                    started[meta["task_id"]] = meta["result"]

        n = int(round(args.rate * args.seconds))
        period = 1.0 / args.rate
        with app_mod.app.producer_or_acquire() as producer:
            # warm-up job (not counted): opens the producer's and the result subscriber's
            # connections and declares the queue, as a long-running client would have done
            res = app_mod.noop.apply_async(producer=producer)
            warm = res.id
            del res
            deadline = time.time() + 30
            while warm not in started and time.time() < deadline:
                take(ps.get_message(timeout=0.1))
            if warm not in started:
                fail("the warm-up job did not complete within 30s")
            del started[warm]
            t0 = time.time() + 0.05
            for i in range(n):
                due = t0 + i * period
                while True:
                    left = due - time.time()
                    if left <= 0:
                        break
                    take(ps.get_message(timeout=left))
                t = time.time()
                res = app_mod.noop.apply_async(producer=producer)
                enq[res.id] = t
                del res
        deadline = time.time() + 60
        while len(started) < n and time.time() < deadline:
            if not w.alive():
                fail(f"worker exited with {w.proc.returncode}")
            take(ps.get_message(timeout=0.1))
        if len(started) < n:
            fail(f"only {len(started)}/{n} jobs completed within 60s of the last enqueue")
        lat = sorted((started[k] - enq[k]) * 1000.0 for k in enq)
        w.stop()
        ps.close()
        emit({
            "system": "celery",
            "variant": variant(args),
            "concurrency": args.concurrency,
            "rate": num(args.rate),
            "jobs": n,
            "p50_ms": round(percentile(lat, 50), 3),
            "p90_ms": round(percentile(lat, 90), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "p999_ms": round(percentile(lat, 99.9), 3),
            "max_ms": round(lat[-1], 3),
        })
    finally:
        for w in workers:
            w.kill()
        cleanup(r, args.prefix)


DEFAULT_VT = 3600  # kombu.transport.redis.Channel.visibility_timeout
DEFAULT_RESTORE_INTERVAL = 10  # Channel.unacked_restore_interval (timer period, s)
DEFAULT_RESTORE_THROTTLE = 10  # Channel.unacked_restore_throttle (scan on every Nth tick)


def cmd_recovery(args):
    if args.timeout is None:
        broker_opts = {}
        setting, vt = "default", DEFAULT_VT
    else:
        vt = args.timeout
        # kombu only looks for expired unacked messages in QoS.restore_visible, run by each
        # consumer at start and then from a timer every unacked_restore_interval seconds, and
        # scanning only on every unacked_restore_throttle-th tick (10 s x 10 = ~100 s by
        # default): a short visibility_timeout needs a short sweep period to be honoured.
        broker_opts = {
            "visibility_timeout": vt,
            "unacked_restore_interval": args.restore_interval,
            "unacked_restore_throttle": 1,
        }
        setting = f"timeout={vt:g}s"
    app_mod = setup_env(args, broker_opts, prefetch=1)
    import redis

    r = redis.Redis.from_url(args.redis)
    started_key = app_mod.KEYPREFIX + "started"
    workers = []
    try:
        a = Worker(args, "A", 1, args.pool)
        b = Worker(args, "B", 1, args.pool)
        workers += [a, b]
        wait_ready(r, app_mod, workers)
        log("workers A and B ready; enqueueing the long job")
        app_mod.hold.apply_async()
        deadline = time.time() + 60
        first = None
        while time.time() < deadline:
            first = r.lindex(started_key, 0)
            if first:
                break
            time.sleep(0.01)
        if not first:
            fail("no worker started the job within 60s")
        holder, t_start_ms = first.decode().split()
        victim = next(w for w in workers if w.hostname == holder)
        survivor = next(w for w in workers if w is not victim)
        # Name the roles after what happened: A is the one that got the job.
        log(f"{holder} started the job; SIGKILL its process group (pgid {victim.pgid})")
        t_kill = time.time()
        victim.signal_group(signal.SIGKILL)
        victim.kill()
        log(f"waiting up to {args.give_up}s for {survivor.hostname} to start the job")
        give_up_at = t_kill + args.give_up
        recovery = None
        second = None
        while time.time() < give_up_at:
            if not survivor.alive():
                fail(f"surviving worker exited with {survivor.proc.returncode}")
            entries = r.lrange(started_key, 1, -1)
            for e in entries:
                host, ms = e.decode().split()
                if host == survivor.hostname:
                    second = (host, int(ms))
            if second:
                recovery = second[1] / 1000.0 - t_kill
                break
            time.sleep(0.02)
        held_for = t_kill - int(t_start_ms) / 1000.0
        if recovery is not None:
            note = (f"{survivor.hostname} started the job {recovery:.2f}s after the SIGKILL "
                    f"(the job had run {held_for:.2f}s on the killed worker): acks_late keeps it "
                    f"in kombu's unacked hash/index; the survivor's QoS.restore_visible sweep "
                    f"re-pushed it once older than visibility_timeout={vt:g}s")
            if args.timeout is not None:
                note += (f" (sweep every unacked_restore_interval={args.restore_interval:g}s, "
                         f"unacked_restore_throttle=1). Caveat: the timeout counts from delivery, "
                         f"not from the crash, so a live worker's job running longer than {vt:g}s "
                         f"is redelivered too")
        else:
            note = (f"not redelivered within {args.give_up:g}s: with acks_late the message stays "
                    f"in kombu's unacked hash/sorted set (score = delivery time) and a live "
                    f"consumer's QoS.restore_visible re-pushes it only once it is older than "
                    f"visibility_timeout={vt:g}s; that sweep runs at consumer start and then every "
                    f"unacked_restore_interval={DEFAULT_RESTORE_INTERVAL}s timer tick but scans "
                    f"only every unacked_restore_throttle={DEFAULT_RESTORE_THROTTLE}th tick, so "
                    f"redelivery comes {vt:g}-{vt + DEFAULT_RESTORE_INTERVAL * DEFAULT_RESTORE_THROTTLE:g}s "
                    f"after the job was delivered to the killed worker")
            if args.timeout is not None:
                note = (f"not redelivered within {args.give_up:g}s despite visibility_timeout="
                        f"{vt:g}s, unacked_restore_interval={args.restore_interval:g}s")
        for w in workers:
            w.kill()
        emit({
            "system": "celery",
            "setting": setting,
            "timeout_s": num(vt),
            "recovery_s": None if recovery is None else round(recovery, 3),
            "note": note,
        })
    finally:
        for w in workers:
            w.kill()
        cleanup(r, args.prefix)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--redis", required=True, help="Redis URL (broker and result backend)")
        sp.add_argument("--prefix", required=True, help="key namespace of the run")
        sp.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"],
                        help="worker pool (Celery's default: prefork)")
        sp.add_argument("--worker-opt", action="append", default=[], metavar="OPT",
                        help="extra `celery worker` option, repeatable, e.g. "
                             "--worker-opt=--without-mingle (none by default)")

    sp = sub.add_parser("throughput")
    common(sp)
    sp.add_argument("--concurrency", type=int, default=64)
    sp.add_argument("--jobs", type=int, default=20000)
    sp.add_argument("--max-seconds", type=float, default=1800, help="fail after this long")
    sp.set_defaults(fn=cmd_throughput)

    sp = sub.add_parser("latency")
    common(sp)
    sp.add_argument("--concurrency", type=int, default=16)
    sp.add_argument("--rate", type=float, default=200)
    sp.add_argument("--seconds", type=float, default=5)
    sp.set_defaults(fn=cmd_latency)

    sp = sub.add_parser("recovery")
    common(sp)
    sp.add_argument("--timeout", type=float, default=None,
                    help="visibility_timeout in seconds (default: kombu's, 3600)")
    sp.add_argument("--give-up", type=float, default=120)
    sp.add_argument("--restore-interval", type=float, default=1.0,
                    help="unacked_restore_interval used with --timeout (kombu's default: 10)")
    sp.set_defaults(fn=cmd_recovery)

    args = p.parse_args()
    if getattr(args, "concurrency", 1) < 1 or getattr(args, "jobs", 1) < 1:
        fail("--concurrency and --jobs must be positive")
    # SIGTERM/SIGINT of the harness: still kill the workers and delete the keys (finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.fn(args)


if __name__ == "__main__":
    main()
