#!/usr/bin/env python3
"""Fleet-scale runs against null-master (see docs/BENCHMARKS.md, "Fleet scale").

For every minion count: start `null-master --minions N` and a fresh halite
on its config, then time synchronous `local` `test.ping` calls to `*`
through rest_wsgi (the default JSON answer, and the streamed
`application/x-ndjson` answer) and record per call: wall time, halite CPU
(schedstat of every thread, exact), CPU per return, response bytes, and
halite's peak RSS (VmHWM; halite is restarted per count and per answer kind,
so the peak is that kind's). Optionally the same call through Salt's own
Python `LocalClient` (`--salt-python`, an interpreter with Salt installed),
pointed at the same null-master. Then the bus firehose (`bus-rate`).

Writes one JSON document (--out) and prints a Markdown table.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_s(pid):
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for t in tasks:
        v = read(f"/proc/{pid}/task/{t}/schedstat").split()
        if v:
            total += int(v[0]) / 1e9
    return total


def status_kib(pid, key):
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def wait_port(port, limit=30):
    end = time.time() + limit
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(p):
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def body(fun):
    return json.dumps([{"client": "local", "tgt": "*", "fun": fun, "timeout": 60,
                        "eauth": "auto", "username": "saltdev", "password": "saltdev"}]).encode()


BODY = body("test.ping")


def call(port, accept, data=BODY):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=data, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": accept})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        body = r.read()
    return time.perf_counter() - t, body


def count_returns(body, accept, n):
    if accept == "application/json":
        ret = json.loads(body)["return"][0]
        return sum(1 for v in ret.values() if returned(v))
    ok = 0
    for line in body.splitlines():
        obj = json.loads(line)
        if returned(obj.get("return")):
            ok += 1
    return ok


def returned(v):
    """A minion's return: `True` (test.ping) or its grains (grains.items)."""
    return v is True or (isinstance(v, dict) and "id" in v)


def halite_runs(a, cfg, wsgi, n, accept):
    """Start halite, one warm-up call, `reps` measured calls; halite stopped after."""
    h = subprocess.Popen([*a.halite_wrap, f"{a.bin_dir}/halite", "--config", cfg], stdout=subprocess.DEVNULL,
                         stderr=open(f"{a.workdir}/halite-scale.log", "ab"),
                         env={**os.environ, "RUST_LOG": "warn", **a.halite_env})
    hpid = h.pid
    try:
        if not wait_port(wsgi):
            raise RuntimeError("halite did not start")
        time.sleep(0.3 if not a.halite_wrap else 5)
        hpid = halite_pid(h)
        idle_kib = status_kib(hpid, "VmRSS")
        data = body(a.fun)
        call(wsgi, accept, data)
        rows = []
        for _ in range(a.reps):
            c0 = cpu_s(hpid)
            wall, answer = call(wsgi, accept, data)
            cpu = cpu_s(hpid) - c0
            rows.append({"wall_s": wall, "cpu_s": cpu, "bytes": len(answer),
                         "complete": count_returns(answer, accept, n)})
        peak_kib = status_kib(hpid, "VmHWM")
    finally:
        # Under a wrapper (heaptrack) halite is its child: stop halite, then
        # give the wrapper time to write its data.
        if a.halite_wrap and hpid != h.pid:
            os.kill(hpid, signal.SIGTERM)
            try:
                h.wait(120)
            except subprocess.TimeoutExpired:
                pass
        stop(h)
    return {
        "accept": accept,
        "wall_s": statistics.median(r["wall_s"] for r in rows),
        "cpu_s": statistics.median(r["cpu_s"] for r in rows),
        "cpu_us_per_return": statistics.median(r["cpu_s"] for r in rows) / n * 1e6,
        "bytes": rows[-1]["bytes"],
        "complete_min": min(r["complete"] for r in rows),
        "idle_rss_mib": idle_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "runs": rows,
    }


PY_LOCALCLIENT = r"""
import json, resource, sys, time
import salt.client, salt.config
opts = salt.config.client_config(sys.argv[1])
client = salt.client.LocalClient(mopts=opts)
# null-master keeps no job cache; LocalClient reads the job's load from it
# once per call and gives up ("jid does not exist") when it is empty.
client.returners[f"{opts['master_job_cache']}.get_load"] = lambda jid: {"jid": jid, "fun": "test.ping"}
n = int(sys.argv[2])
out = []
for i in range(int(sys.argv[3]) + 1):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    ret = client.cmd("*", "test.ping", timeout=60, eauth="auto", username="saltdev", password="saltdev")
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if i:
        out.append({"wall_s": wall, "cpu_s": cpu, "complete": sum(1 for v in ret.values() if v is True)})
print(json.dumps({"runs": out, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def localclient_runs(a, cfg, n):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([a.salt_python, "-c", PY_LOCALCLIENT, cfg, str(n), str(a.reps)],
                       capture_output=True, text=True, timeout=900, env=env)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-3:]}
    d = json.loads(p.stdout.strip().splitlines()[-1])
    rows = d["runs"]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in rows),
        "cpu_s": statistics.median(r["cpu_s"] for r in rows),
        "cpu_us_per_return": statistics.median(r["cpu_s"] for r in rows) / n * 1e6,
        "complete_min": min(r["complete"] for r in rows),
        "peak_rss_mib": d["peak_rss_mib"],
        "runs": rows,
    }


def inflight_config(cfg, base, tls):
    """The null-master's config with rest_wsgi open to `inflight` connections
    (halite's default `max_connections` is 1024), and TLS when asked."""
    extra = "  max_connections: 20000\n"
    if tls:
        extra += f"  ssl_crt: {tls[0]}\n  ssl_key: {tls[1]}\n"
    with open(cfg, "w") as f:
        f.write(base.replace("rest_wsgi:\n", "rest_wsgi:\n" + extra, 1))


def self_signed(d):
    d = os.path.abspath(d)
    crt, key = f"{d}/tls.crt", f"{d}/tls.key"
    if not os.path.exists(crt):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "30", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
    return crt, key


def inflight_runs(a, port, wsgi, cp):
    """`inflight` synchronous calls held open at once (returns delayed), over
    HTTP/1.1 (one connection each), h2c and TLS HTTP/2 (streams over a few
    connections); halite restarted for each, its peak RSS over its idle RSS
    per call."""
    nd = f"{a.workdir}/null-inflight"
    cfg = f"{nd}/master"
    nm = subprocess.Popen([f"{a.bin_dir}/null-master", "--port", str(port), "--dir", nd, "--minions", "3",
                           "--ret-delay-ms", str(a.hold_ms), "--write-config", cfg,
                           "--wsgi-port", str(wsgi), "--cherrypy-port", str(cp), "--threads", "2"],
                          stdout=subprocess.DEVNULL, stderr=open(f"{a.workdir}/null-master.log", "ab"))
    body = json.dumps([{"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 120,
                        "eauth": "auto", "username": "saltdev", "password": "saltdev"}])
    out = []
    try:
        wait_port(port)
        with open(cfg) as f:
            base = f.read()
        tls = self_signed(nd)
        h2 = ["--h2-connections", str(a.h2_connections)]
        modes = {"HTTP/1.1": (None, "http", []), "h2c": (None, "http", h2),
                 "TLS h2": (tls, "https", h2 + ["--cacert", tls[0]]),
                 "TLS HTTP/1.1": (tls, "https", ["--cacert", tls[0]])}
        for label in a.inflight_modes.split(","):
            crt_key, scheme, extra = modes[label]
            inflight_config(cfg, base, crt_key)
            henv = {**os.environ, "RUST_LOG": "warn"}
            henv.update(a.halite_env)
            h = subprocess.Popen([*a.halite_wrap, f"{a.bin_dir}/halite", "--config", cfg], stdout=subprocess.DEVNULL,
                                 stderr=open(f"{a.workdir}/halite-scale.log", "ab"), env=henv)
            hpid = None
            try:
                wait_port(wsgi)
                time.sleep(0.5 if not a.halite_wrap else 5)
                hpid = halite_pid(h)
                idle = status_kib(hpid, "VmRSS")
                c0 = cpu_s(hpid)
                r = subprocess.run([f"{a.bin_dir}/http-load", "--url", f"{scheme}://127.0.0.1:{wsgi}/", "--body", body,
                                    "-c", str(a.inflight), "-n", str(a.inflight), "--timeout", "180",
                                    "--check", "true:3", *extra], capture_output=True, text=True, timeout=400)
                cpu = cpu_s(hpid) - c0
                peak = status_kib(hpid, "VmHWM")
                # What the allocator gives back once the burst is over.
                time.sleep(a.settle_secs)
                settled = status_kib(hpid, "VmRSS")
                rep = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {"error": r.stderr[-300:]}
                row = {"http": label, "calls": a.inflight, "idle_rss_mib": idle / 1024, "peak_rss_mib": peak / 1024,
                       "kib_per_call": (peak - idle) / a.inflight,
                       "settled_rss_mib": settled / 1024, "settle_secs": a.settle_secs, "cpu_s": cpu, "loadavg": os.getloadavg(),
                       "ok": rep.get("ok"), "failed": rep.get("failed"), "incomplete": rep.get("incomplete"),
                       "max_in_flight": rep.get("max_in_flight"), "connections": rep.get("connections"),
                       "errors": rep.get("errors", rep.get("error"))}
                log(f"inflight: {row}")
                out.append(row)
            finally:
                # Under a wrapper (heaptrack) halite is its child: stopping
                # the wrapper alone left halite serving on the port, and the
                # next row measured it instead of its own halite.
                if hpid and hpid != h.pid:
                    os.kill(hpid, signal.SIGTERM)
                stop(h)
    finally:
        stop(nm)
    return out


def halite_pid(p):
    """halite's own pid (the child when it runs under a wrapper such as heaptrack)."""
    for _ in range(100):
        kids = read(f"/proc/{p.pid}/task/{p.pid}/children").split()
        if read(f"/proc/{p.pid}/comm").strip() == "halite" or not kids:
            if read(f"/proc/{p.pid}/comm").strip() == "halite":
                return p.pid
        for k in kids:
            if read(f"/proc/{k}/comm").strip() == "halite":
                return int(k)
        time.sleep(0.1)
    return p.pid


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--port", type=int, default=16606)
    p.add_argument("--minions", default="100,1000,10000,30000")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--salt-python", default="")
    p.add_argument("--localclient-minions", default="1000,10000")
    p.add_argument("--firehose-secs", type=int, default=10)
    p.add_argument("--inflight", type=int, default=10000)
    p.add_argument("--hold-ms", type=int, default=15000)
    p.add_argument("--h2-connections", type=int, default=100)
    p.add_argument("--inflight-modes", default="HTTP/1.1,h2c,TLS h2")
    p.add_argument("--settle-secs", type=int, default=15,
                   help="after an in-flight run, wait this long and read halite's RSS again")
    p.add_argument("--halite-wrap", default="", help="command to run halite under (heaptrack)")
    p.add_argument("--halite-env", default="", help="NAME=VALUE,... added to halite's environment (a comma not followed by NAME= stays in the value)")
    p.add_argument("--ret-delay-ms", type=int, default=0,
                   help="answer rows: null-master fires the returns this long after its publish reply, "
                        "the order of a real master (0: before the reply, the worst case for halite)")
    p.add_argument("--fun", default="test.ping",
                   help="the function called: test.ping, or grains.items (~6 KiB a minion)")
    p.add_argument("--kinds", default="json,ndjson", help="answers to measure (a build without streaming: json)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    a.halite_wrap = a.halite_wrap.split()
    # A value may hold commas (jemalloc's "narenas:1,tcache:false"): split
    # only at a comma that starts another NAME=.
    a.halite_env = dict(kv.split("=", 1) for kv in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", a.halite_env) if kv)
    os.makedirs(a.workdir, exist_ok=True)
    port, wsgi, cp = a.port, a.port - 5, a.port - 4
    results = {"loadavg_start": os.getloadavg(), "nproc": os.cpu_count(), "counts": [], "fun": a.fun,
               "ret_delay_ms": a.ret_delay_ms,
               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    for n in [int(x) for x in a.minions.split(",") if x]:
        nd = f"{a.workdir}/null-{n}"
        cfg = f"{nd}/master"
        nm = subprocess.Popen([f"{a.bin_dir}/null-master", "--port", str(port), "--dir", nd,
                               "--minions", str(n), "--write-config", cfg,
                               "--ret-delay-ms", str(a.ret_delay_ms),
                               "--wsgi-port", str(wsgi), "--cherrypy-port", str(cp)],
                              stdout=subprocess.DEVNULL, stderr=open(f"{a.workdir}/null-master.log", "ab"))
        try:
            if not wait_port(port):
                raise RuntimeError("null-master did not start")
            row = {"minions": n, "loadavg": os.getloadavg()}
            kinds = a.kinds.split(",")
            if "json" in kinds:
                row["json"] = halite_runs(a, cfg, wsgi, n, "application/json")
            if "ndjson" in kinds:
                row["ndjson"] = halite_runs(a, cfg, wsgi, n, "application/x-ndjson")
            if a.salt_python and str(n) in a.localclient_minions.split(","):
                row["localclient"] = localclient_runs(a, cfg, n)
            log(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "runs"})
                            for k, v in row.items()}))
            results["counts"].append(row)
        finally:
            stop(nm)
    if a.inflight:
        results["inflight"] = inflight_runs(a, port, wsgi, cp)
    for threads in ([1, 2] if a.firehose_secs else []):
        nd = f"{a.workdir}/null-firehose-{threads}"
        nm = subprocess.Popen([f"{a.bin_dir}/null-master", "--port", str(port), "--dir", nd,
                               "--minions", "3", "--firehose-secs", str(a.firehose_secs + 5), "--threads", "2"],
                              stdout=subprocess.DEVNULL, stderr=open(f"{a.workdir}/null-master.log", "ab"))
        try:
            wait_port(port)
            r = subprocess.run([f"{a.bin_dir}/bus-rate", "--sock-dir", f"{nd}/sock", "--threads", str(threads),
                                "--secs", str(a.firehose_secs)], capture_output=True, text=True,
                               timeout=a.firehose_secs + 60)
            fh = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr}
            fh["loadavg"] = os.getloadavg()
            fh["threads"] = threads
            results.setdefault("firehose", []).append(fh)
            log(f"firehose: {fh}")
        finally:
            stop(nm)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))


def table(r):
    delay = r.get("ret_delay_ms", 0)
    order = f"returns {delay} ms after the publish reply (wall includes it)" if delay else "returns before the publish reply"
    lines = [f"{r.get('fun', 'test.ping')}, {order}:", "",
             "| minions | answer | wall s | halite CPU ms | CPU µs/return | peak RSS MiB (idle) | response bytes "
             "| growth ÷ response | complete |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["counts"]:
        n = row["minions"]
        for kind in ("json", "ndjson", "localclient"):
            d = row.get(kind)
            if not d:
                continue
            if "error" in d:
                lines.append(f"| {n:,} | {kind} | error: {' '.join(d['error'])[:120]} | | | | | |")
                continue
            rss = f"{d['peak_rss_mib']:.1f}" + (f" ({d['idle_rss_mib']:.1f})" if "idle_rss_mib" in d else "")
            ratio = ""
            if "idle_rss_mib" in d and d.get("bytes"):
                ratio = f"{(d['peak_rss_mib'] - d['idle_rss_mib']) * 1048576 / d['bytes']:.2f}"
            lines.append(f"| {n:,} | {kind} | {d['wall_s']:.3f} | {d['cpu_s'] * 1000:.1f} | "
                         f"{d['cpu_us_per_return']:.2f} | {rss} | {d.get('bytes', 0):,} | {ratio} "
                         f"| {d['complete_min']:,}/{n:,} |")
    if r.get("inflight"):
        lines += ["", "| in flight | HTTP | connections | completed | failed+incomplete | idle RSS MiB | peak RSS MiB | KiB per call | RSS MiB after |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["inflight"]:
            after = f"{x['settled_rss_mib']:.1f} ({x['settle_secs']} s)" if "settled_rss_mib" in x else ""
            lines.append(f"| {x['calls']:,} | {x['http']} | {x['connections']} | {x['ok']} | "
                         f"{(x['failed'] or 0) + (x['incomplete'] or 0)} | {x['idle_rss_mib']:.1f} | "
                         f"{x['peak_rss_mib']:.1f} | {x['kib_per_call']:.1f} | {after} |")
    for fh in r.get("firehose", []):
        if "error" in fh:
            continue
        lines.append("")
        lines.append(f"bus firehose, {fh['threads']} thread(s): {fh['events']:,} events in {fh['wall_s']:.1f} s, "
                     f"{fh['cpu_s']:.2f} CPU s: {fh['events_per_cpu_s']:,.0f} events per CPU-second "
                     f"({fh['events_per_s']:,.0f}/s wall); waiter got {fh['waiter_returns']:,} returns, "
                     f"lost other events: {fh['waiter_lost_events']}, lost returns: {fh.get('waiter_lost_returns')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
