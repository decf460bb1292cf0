#!/usr/bin/env python3
"""The side-by-side comparison: citadel, apalis (apalis-redis) and Celery on one Redis, in one run.

Run by `bench/compare.sh` (which installs, builds and creates the virtual environment first).
Every system is driven through the contract in `bench/peers/CONTRACT.md`; citadel through
`citadel bench redis --json` and, for crash recovery, idle memory and cold start, real
`citadel work` processes. It prints the tables and writes `bench/results/compare.json` (every
run's raw figures), `bench/results/compare.md` (the tables docs/performance.md shows) and
`bench/results/throughput.png` (jobs/s by concurrency for each system).

Nothing here asserts a timing: it measures, takes medians of repeats and prints ratios.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import redis
except ImportError:  # `--help` runs before bench/.venv exists; every run goes through the venv
    redis = None

ROOT = Path(__file__).resolve().parent.parent
CITADEL = ROOT / "target/release/citadel"
APALIS = ROOT / "bench/peers/apalis/target/release/apalis-peer"
CELERY = ROOT / "bench/peers/celery/peer.py"
RESULTS = ROOT / "bench/results"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self, tmp):
        self.port = free_port()
        self.dir = Path(tmp) / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "log")],
        )
        self.url = f"redis://127.0.0.1:{self.port}"
        self.client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def calls(self):
        """Total commands Redis has executed, from INFO commandstats."""
        return sum(v["calls"] for k, v in self.client.info("commandstats").items())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def last_json(stdout):
    """The JSON object a command printed last (one line, or a pretty-printed object)."""
    text = stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.splitlines()[-1])


def run_json(cmd, timeout=900):
    log("  $ " + " ".join(str(c) for c in cmd))
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}")
    return last_json(p.stdout)


# ---------------------------------------------------------------------------------------------
# The systems. Each returns the contract's throughput / latency objects.


class System:
    def __init__(self, name, label):
        self.name, self.label = name, label

    def throughput(self, url, prefix, c, n):
        raise NotImplementedError

    def latency(self, url, prefix, c, rate, seconds):
        raise NotImplementedError


class Citadel(System):
    def __init__(self, durable):
        journal = "durable" if durable else "buffered"
        super().__init__(f"citadel-{journal}", f"citadel (journal {journal})")
        self.journal = journal

    def throughput(self, url, prefix, c, n):
        # `citadel bench` runs a quarter of --jobs at concurrency 1: ask for four times as many.
        jobs = n * 4 if c == 1 else n
        r = run_json([CITADEL, "bench", "redis", "--redis-url", url, "--concurrency", c,
                      "--jobs", jobs, "--journal", self.journal, "--latency-for", "0s", "--json"])
        t = r["throughput"][0]
        run = t["runs"][0]
        return {"system": self.name, "concurrency": c, "jobs": t["jobs"],
                "seconds": run["seconds"], "jobs_per_sec": run["jobs_per_sec"],
                "first_done_s": run["first_done_s"],
                "worker_cpu_seconds": run["cpu_seconds"], "worker_peak_rss_mb": run["peak_rss_mb"]}

    def latency(self, url, prefix, c, rate, seconds):
        r = run_json([CITADEL, "bench", "redis", "--redis-url", url, "--latency-only",
                      "--journal", self.journal, "--rate", rate, "--latency-for", f"{seconds}s",
                      "--latency-concurrency", c, "--json"])
        l = r["latency"]
        return {"system": self.name, "concurrency": c, "rate": rate, "jobs": l["jobs"],
                **l["start"], "done_p50_ms": l["done"]["p50_ms"], "done_p99_ms": l["done"]["p99_ms"]}


class Peer(System):
    def __init__(self, name, label, cmd, extra=()):
        super().__init__(name, label)
        self.cmd, self.extra = cmd, list(extra)

    def throughput(self, url, prefix, c, n):
        r = run_json(self.cmd + ["throughput", "--redis", url, "--prefix", prefix,
                                 "--concurrency", c, "--jobs", n] + self.extra)
        r["system"] = self.name
        return r

    def latency(self, url, prefix, c, rate, seconds):
        r = run_json(self.cmd + ["latency", "--redis", url, "--prefix", prefix, "--concurrency", c,
                                 "--rate", rate, "--seconds", seconds] + self.extra)
        r["system"] = self.name
        return r

    def recovery(self, url, prefix, timeout=None, give_up=120):
        cmd = self.cmd + ["recovery", "--redis", url, "--prefix", prefix, "--give-up", give_up]
        if timeout is not None:
            cmd += ["--timeout", timeout]
        r = run_json(cmd + self.extra, timeout=give_up + 120)
        r["system"] = self.name
        return r


def systems(args):
    out = [Citadel(durable=True), Citadel(durable=False)]
    if "apalis" not in args.skip:
        out.append(Peer("apalis", "apalis + apalis-redis", [APALIS]))
    if "celery" not in args.skip:
        py = [sys.executable, CELERY]
        out.append(Peer("celery-prefork", "Celery (prefork)", py, ["--pool", "prefork"]))
        if args.celery_threads:
            out.append(Peer("celery-threads", "Celery (threads)", py, ["--pool", "threads"]))
    return out


# ---------------------------------------------------------------------------------------------
# Throughput: the same backlog for every system (N jobs, a quarter of it at concurrency 1),
# repeated, interleaving the systems so slow drifts of the machine hit them alike. The rate
# reported is the steady one, from the first job done to the N-th ((N − 1) / that time), so a
# worker's start-up (Celery forks its pool, imports, mingles) is not counted as throughput; the
# start-up is reported beside it.


def jobs_at(args, c):
    return max(1, args.jobs // 4) if c == 1 else args.jobs


def throughput_matrix(srv, syss, args):
    rows = []
    for rep in range(args.repeat):
        for c in args.concurrency:
            for s in syss:
                before = srv.calls()
                r = s.throughput(srv.url, f"t{rep}-{s.name}-{c}", c, jobs_at(args, c))
                r["redis_commands_per_job"] = (srv.calls() - before) / r["jobs"]
                r["repeat"] = rep
                r["from_start_jobs_per_sec"] = r["jobs_per_sec"]
                steady = r["seconds"] - r.get("first_done_s", 0.0)
                if r.get("first_done_s") is not None and steady > 0 and r["jobs"] > 1:
                    r["jobs_per_sec"] = (r["jobs"] - 1) / steady
                log(f"  {s.name} c={c} #{rep + 1}: {r['jobs_per_sec']:.0f} jobs/s steady "
                    f"({r['from_start_jobs_per_sec']:.0f} from the worker's start)")
                rows.append(r)
    return rows


def median_of(rows, system, c, key="jobs_per_sec"):
    vals = [r[key] for r in rows if r["system"] == system and r["concurrency"] == c]
    return statistics.median(vals) if vals else None


def spread_of(rows, system, c):
    vals = [r["jobs_per_sec"] for r in rows if r["system"] == system and r["concurrency"] == c]
    return (min(vals), max(vals)) if vals else None


# ---------------------------------------------------------------------------------------------
# The Redis ceiling: capture every command of a citadel run with MONITOR (on a Redis of its own),
# then replay the worker's part into a fresh Redis over one pipelined connection (`redis-cli
# --pipe`): the most jobs/s Redis itself does for citadel's exact per-job command mix.

MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$')
ENTRY_ID = re.compile(rb"^\d{13}-\d+$")


def monitor_args(text):
    """The arguments of one MONITOR line: quoted strings with C escapes."""
    args, i = [], 0
    while i < len(text):
        if text[i] != '"':
            i += 1
            continue
        i += 1
        buf = bytearray()
        while text[i] != '"':
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1]
                if nxt == "x":
                    buf.append(int(text[i + 2:i + 4], 16))
                    i += 4
                    continue
                buf += {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b"}.get(nxt, nxt.encode())
                i += 2
                continue
            buf += ch.encode()
            i += 1
        args.append(bytes(buf))
        i += 1
    return args


def resp(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def unblock(args):
    """XREADGROUP/XREAD without BLOCK, so a replayed read never waits."""
    name = args[0].upper()
    if name in (b"XREADGROUP", b"XREAD"):
        out, i = [], 0
        while i < len(args):
            if args[i].upper() == b"BLOCK":
                i += 2
                continue
            out.append(args[i])
            i += 1
        return out
    return args


def redis_ceiling(tmp, jobs):
    src = RedisServer(tmp)
    capture = Path(tmp) / "monitor.txt"
    mon = None
    try:
        with open(capture, "w") as f:
            mon = subprocess.Popen(["redis-cli", "-p", str(src.port), "monitor"], stdout=f)
            time.sleep(0.3)
            Citadel(durable=True).throughput(src.url, "ceiling", 64, jobs)
            time.sleep(0.3)
            mon.terminate()
            mon.wait()
        commands = []
        for line in capture.read_text(errors="replace").splitlines():
            m = MONITOR_LINE.match(line)
            # MONITOR also shows what scripts run (client `lua`): those run inside the EVALSHA.
            if m and m.group(1) != "lua":
                commands.append((m.group(1), monitor_args(m.group(2))))
        # The producer is the client whose XADDs carry `jobId` on the bench stream; everything up
        # to its last command is set-up (untimed), the rest is the worker's.
        producer, stream = next((c, a[1]) for c, a in commands
                                if a and a[0].upper() == b"XADD" and a[1].startswith(b"bench:") and b"jobId" in a)
    finally:
        if mon and mon.poll() is None:
            mon.kill()
        src.stop()
    last = max(i for i, (c, a) in enumerate(commands)
               if c == producer and a[0].upper() == b"XADD" and a[1] == stream)
    skip = {b"MONITOR", b"INFO", b"CLIENT", b"HELLO", b"PING"}
    setup = [a for _, a in commands[:last + 1] if a[0].upper() not in skip]
    # The bench's own clean-up (DEL of its stream) is not part of a job.
    work = [unblock(a) for _, a in commands[last + 1:]
            if a[0].upper() not in skip and not (a[0].upper() == b"DEL" and a[1:] == [stream])]
    # MONITOR shows `XADD stream *`, not the ids Redis gave: the worker's acks name those ids, so
    # the set-up's XADDs get them back (ids grow with each XADD: the k-th XADD got the k-th id).
    ids = sorted({t for a in work for t in a[1:] if ENTRY_ID.match(t)},
                 key=lambda t: tuple(int(x) for x in t.split(b"-")))
    adds = [a for a in setup if a[0].upper() == b"XADD" and a[1] == stream and a[2] == b"*"]
    if len(ids) != len(adds):
        raise RuntimeError(f"the capture names {len(ids)} entry ids for {len(adds)} enqueued jobs")
    for a, i in zip(adds, ids):
        a[2] = i
    setup = b"".join(resp(a) for a in setup)
    (Path(tmp) / "setup.resp").write_bytes(setup)
    (Path(tmp) / "work.resp").write_bytes(b"".join(resp(a) for a in work))
    # Three replays, each into a fresh Redis from the same set-up: the median.
    replays, answers = [], ""
    for _ in range(3):
        dst = RedisServer(tmp)
        try:
            with open(Path(tmp) / "setup.resp", "rb") as f:
                subprocess.run(["redis-cli", "-p", str(dst.port), "--pipe"], stdin=f, check=True,
                               capture_output=True)
            began = time.perf_counter()
            with open(Path(tmp) / "work.resp", "rb") as f:
                p = subprocess.run(["redis-cli", "-p", str(dst.port), "--pipe"], stdin=f,
                                   capture_output=True, text=True)
            replays.append(time.perf_counter() - began)
            answers = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        finally:
            dst.stop()
    seconds = statistics.median(replays)
    mix = {}
    for a in work:
        k = a[0].decode().upper()
        mix[k] = mix.get(k, 0) + 1
    return {"jobs": jobs, "commands": len(work), "commands_per_job": len(work) / jobs,
            "mix_per_job": {k: round(v / jobs, 2) for k, v in sorted(mix.items(), key=lambda kv: -kv[1])},
            "seconds": seconds, "jobs_per_sec": jobs / seconds,
            "jobs_per_sec_all": [round(jobs / r) for r in replays],
            "replay": answers}


# ---------------------------------------------------------------------------------------------
# citadel work as a real process: crash recovery, idle memory, cold start.


def citadel_work(url, stream, name, tmp, lease=None, group="bench"):
    data = Path(tmp) / f"data-{name}-{time.monotonic_ns()}"
    cmd = [CITADEL, "--data-dir", data, "work", "--transport", "redis", "--redis-url", url,
           "--stream", stream, "--group", group, "--node-name", name, "--concurrency", "1",
           "--status-listen", "off"]
    if lease is not None:
        cmd += ["--lease", f"{lease}s"]
    env = dict(os.environ, RUST_LOG="warn")
    return subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(Path(tmp) / f"{name}.log", "ab"), start_new_session=True)


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {what}")


def citadel_recovery(srv, tmp, lease=None, give_up=120):
    """SIGKILL a citadel worker holding a long job; seconds until another worker starts it."""
    stream = f"bench:recovery:{time.monotonic_ns()}"
    job = f"rec-{time.monotonic_ns()}"
    ps = srv.client.pubsub()
    ps.subscribe(f"stream:v1:{job}")
    a = citadel_work(srv.url, stream, "worker-a", tmp, lease)
    b = None
    try:
        wait_for(lambda: srv.client.exists(stream), 30, "worker A's consumer group")
        time.sleep(0.5)
        srv.client.xadd(stream, {"jobId": job, "type": "sleep", "payload": json.dumps({"ms": "3600000"})})

        def started_by():
            m = ps.get_message(timeout=0.05)
            if m and m["type"] == "message":
                e = json.loads(m["data"])
                if e.get("type") == "start":
                    return e["data"]["meta"]["node_name"]
            return None

        holder = wait_for(started_by, 30, "worker A to start the job")
        assert holder == "worker-a", holder
        b = citadel_work(srv.url, stream, "worker-b", tmp, lease)
        time.sleep(1.0)
        killed = time.monotonic()
        os.killpg(a.pid, signal.SIGKILL)
        try:
            holder = wait_for(started_by, give_up, "worker B to start the job")
        except RuntimeError:
            return {"system": "citadel", "setting": "default" if lease is None else f"timeout={lease}s",
                    "timeout_s": lease or 60, "recovery_s": None, "note": f"not redelivered within {give_up} s"}
        recovered = time.monotonic() - killed
        return {"system": "citadel", "setting": "default" if lease is None else f"timeout={lease}s",
                "timeout_s": lease if lease is not None else 60, "recovery_s": recovered,
                "note": f"lease {lease if lease is not None else 60} s, stale leases checked every 1 s; started by {holder}"}
    finally:
        for p in (a, b):
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        ps.close()


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def stop_group(p, sig=signal.SIGTERM):
    """Stops a process started in its own session, SIGKILL if it lingers."""
    if p.poll() is None:
        os.killpg(p.pid, sig)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def citadel_footprint(srv, tmp):
    """Idle RSS (Redis transport, and the embedded control plane default), cold start to the
    first poll, binary size."""
    out = {}
    env = dict(os.environ, RUST_LOG="warn")
    w = citadel_work(srv.url, "bench:idle", "idle", tmp)
    try:
        time.sleep(10)
        out["idle_rss_mb_redis"] = rss_mb(w.pid)
    finally:
        stop_group(w)
    w = subprocess.Popen([str(CITADEL), "--data-dir", str(Path(tmp) / "data-embedded"), "work",
                          "--status-listen", "off"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(10)
        out["idle_rss_mb_embedded"] = rss_mb(w.pid)
    finally:
        stop_group(w)
    polls = lambda: srv.client.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0)
    starts = []
    for i in range(7):
        before = polls()
        began = time.monotonic()
        w = citadel_work(srv.url, f"bench:cold:{i}", f"cold-{i}", tmp)
        try:
            wait_for(lambda: polls() > before, 30, "the first poll")
            starts.append((time.monotonic() - began) * 1000)
        finally:
            stop_group(w, signal.SIGKILL)
    out["cold_start_ms_median"] = statistics.median(starts)
    out["cold_start_ms_all"] = [round(s, 1) for s in starts]
    out["binary_bytes"] = CITADEL.stat().st_size
    stripped = Path(tmp) / "citadel-stripped"
    subprocess.run(["strip", "-o", str(stripped), str(CITADEL)], check=True)
    out["binary_stripped_bytes"] = stripped.stat().st_size
    return out


# ---------------------------------------------------------------------------------------------
# The report.


def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def tables(res, args):
    rows, lat = res["throughput"], {r["system"]: r for r in res["latency"]}
    names = {s["name"]: s["label"] for s in res["systems"]}
    md = []
    hdr = "| system | " + " | ".join(f"c={c} jobs/s (spread)" for c in args.concurrency) + \
          f" | start-up s c={max(args.concurrency)} | CPU µs/job (with start-up) | peak RSS MiB | Redis cmds/job | dispatch p50 / p99 ms |"
    md += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for name, label in names.items():
        cells = []
        for c in args.concurrency:
            m, sp = median_of(rows, name, c), spread_of(rows, name, c)
            cells.append("—" if m is None else f"{m:,.0f} ({sp[0]:,.0f}–{sp[1]:,.0f})")
        cmax = max(args.concurrency)
        cpu = median_of(rows, name, cmax, "worker_cpu_seconds")
        jobs = median_of(rows, name, cmax, "jobs")
        rss = median_of(rows, name, cmax, "worker_peak_rss_mb")
        cmds = median_of(rows, name, cmax, "redis_commands_per_job")
        startup = median_of(rows, name, cmax, "first_done_s")
        l = lat.get(name)
        lcell = "—" if not l else f"{l['p50_ms']:.2f} / {l['p99_ms']:.2f}"
        md.append(f"| {label} | " + " | ".join(cells) +
                  f" | {fmt(startup, 2)} | {fmt(cpu * 1e6 / jobs if cpu is not None and jobs else None)} | {fmt(rss, 1)} | {fmt(cmds, 1)} | {lcell} |")
    md.append("")
    ratio_hdr = "| citadel (durable) ÷ | " + " | ".join(f"c={c}" for c in args.concurrency) + " |"
    md += [ratio_hdr, "|" + "---|" * (ratio_hdr.count("|") - 1)]
    for name, label in names.items():
        if name.startswith("citadel"):
            continue
        cells = []
        for c in args.concurrency:
            a, b = median_of(rows, "citadel-durable", c), median_of(rows, name, c)
            cells.append("—" if not a or not b else f"{a / b:.1f}×")
        md.append(f"| {label} | " + " | ".join(cells) + " |")
    if res.get("ceiling"):
        ce = res["ceiling"]
        cd = median_of(rows, "citadel-durable", 64)
        md += ["", f"Redis ceiling for citadel's command mix ({ce['commands_per_job']:.1f} commands a job: "
                   + ", ".join(f"{k} {v}" for k, v in ce["mix_per_job"].items())
                   + f"), replayed over one pipelined connection (median of 3 replays: "
                   + ", ".join(f"{x:,}" for x in ce.get("jobs_per_sec_all", []))
                   + f"): **{ce['jobs_per_sec']:,.0f} jobs/s**"
                   + (f"; citadel (durable, c=64) reaches **{100 * cd / ce['jobs_per_sec']:.0f} %** of it." if cd else ".")]
    if res.get("recovery"):
        md += ["", "| crash recovery: SIGKILL of the worker → its job running on another worker | setting | seconds |",
               "|---|---|---|"]
        for r in res["recovery"]:
            val = f"{r['recovery_s']:.2f}" if r.get("recovery_s") is not None else f"not within {args.give_up} s"
            md.append(f"| {r['system']} | {r['setting']} (timeout {r.get('timeout_s')} s) | {val} |")
    if res.get("footprint"):
        f = res["footprint"]
        md += ["", f"citadel footprint: idle RSS {f['idle_rss_mb_redis']:.1f} MiB (redis transport), "
                   f"{f['idle_rss_mb_embedded']:.1f} MiB (embedded control plane default); "
                   f"release binary {f['binary_bytes'] / 2**20:.1f} MiB, stripped {f['binary_stripped_bytes'] / 2**20:.1f} MiB; "
                   f"cold start to the first poll {f['cold_start_ms_median']:.0f} ms (median of {len(f['cold_start_ms_all'])})."]
    return "\n".join(md)


def chart(res, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in res["systems"]:
        xs, ys, lo, hi = [], [], [], []
        for c in args.concurrency:
            m = median_of(res["throughput"], s["name"], c)
            if m is None:
                continue
            sp = spread_of(res["throughput"], s["name"], c)
            xs.append(c), ys.append(m), lo.append(m - sp[0]), hi.append(sp[1] - m)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=s["label"])
    if res.get("ceiling"):
        ax.axhline(res["ceiling"]["jobs_per_sec"], color="grey", linestyle="--",
                   label="Redis ceiling (citadel's command mix)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(args.concurrency)
    ax.set_xticklabels([str(c) for c in args.concurrency])
    ax.set_xlabel("worker concurrency")
    ax.set_ylabel("no-op jobs/s (median of repeats)")
    ax.set_title(f"No-op jobs through one Redis, one worker process ({res['machine']['cpus']} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module's text as written, and every option's default."""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    ap.add_argument("--concurrency", default="1,16,64", type=lambda s: [int(x) for x in s.split(",")],
                    help="comma separated worker concurrencies of the throughput runs")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each system and concurrency (median and spread)")
    ap.add_argument("--jobs", type=int, default=10000,
                    help="backlog of one throughput run, the same for every system (a quarter at concurrency 1)")
    ap.add_argument("--latency-concurrency", type=int, default=16, help="worker concurrency of the latency runs")
    ap.add_argument("--rate", type=int, default=200, help="offered load of the latency runs, jobs/s")
    ap.add_argument("--latency-seconds", type=int, default=10, help="how long each latency run offers its load")
    ap.add_argument("--recovery-timeout", type=int, default=10,
                    help="the common lease / orphan / visibility timeout of the second recovery run")
    ap.add_argument("--give-up", type=int, default=120, help="longest wait for a crashed worker's job")
    ap.add_argument("--skip", default="", help="comma separated: apalis, celery, ceiling, recovery, footprint, latency")
    ap.add_argument("--celery-threads", action="store_true", help="also run Celery with the threads pool")
    ap.add_argument("--out", default=str(RESULTS), help="folder for compare.json, compare.md and throughput.png")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="citadel-compare-")
    began = time.time()
    srv = RedisServer(tmp)
    syss = systems(args)
    res = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                                 if l.startswith("model name")), "?"),
                    "redis": srv.client.info("server")["redis_version"],
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["bench/compare.sh"] + sys.argv[1:]),
        "systems": [{"name": s.name, "label": s.label} for s in syss],
    }
    try:
        log("== throughput")
        res["throughput"] = throughput_matrix(srv, syss, args)
        res["latency"] = []
        if "latency" not in args.skip:
            log("== dispatch latency")
            for s in syss:
                res["latency"].append(s.latency(srv.url, f"lat-{s.name}", args.latency_concurrency,
                                                args.rate, args.latency_seconds))
        if "ceiling" not in args.skip:
            log("== the Redis ceiling for citadel's command mix")
            res["ceiling"] = redis_ceiling(tmp, 5000)
        if "recovery" not in args.skip:
            log("== crash recovery")
            rec = [citadel_recovery(srv, tmp, None, args.give_up),
                   citadel_recovery(srv, tmp, args.recovery_timeout, args.give_up)]
            for s in syss:
                if isinstance(s, Peer) and s.name != "celery-threads":
                    rec.append(s.recovery(srv.url, f"rec-{s.name}", None, args.give_up))
                    rec.append(s.recovery(srv.url, f"rec2-{s.name}", args.recovery_timeout, args.give_up))
            res["recovery"] = rec
        if "footprint" not in args.skip:
            log("== citadel footprint")
            res["footprint"] = citadel_footprint(srv, tmp)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["wall_seconds"] = round(time.time() - began)
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    md = tables(res, args)
    m = res["machine"]
    head = (f"Measured {res['when']} on {m['cpus']} × {m['cpu']}, Redis {m['redis']}, one run of "
            f"`{res['command']}` ({res['wall_seconds']} s; load average {m['load_average_at_start'][0]} "
            f"at the start, {m['load_average_at_end'][0]} at the end).\n\n")
    (out / "compare.md").write_text(head + md + "\n")
    chart(res, args, out / "throughput.png")
    print(head + md)


if __name__ == "__main__":
    main()
