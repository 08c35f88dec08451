#!/usr/bin/env python3
"""Benchmark driver behind scripts/bench (run it through that script).

Measures, alternating servers cell by cell: halite (rest_wsgi POST /, and
rest_cherrypy /run when it answers), Salt's rest_cherrypy and rest_tornado
(/run with inline credentials) and the raw salt-client ceiling (salt-raw),
then halite against null-master. For every run it records throughput,
latency, failed/incomplete answers, the API process's CPU seconds per
request and peak RSS, and the Salt master's CPU. Writes one JSON file.
Only 127.0.0.1 is ever contacted; every loop is bounded.
"""
import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CREDS = {"eauth": "auto", "username": "saltdev", "password": "hal"}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc ---

def proc_stat(pid):
    """(ppid, pgid, cpu ticks incl. reaped children) of pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    # fields from 3 (state): ppid=rest[1], pgrp=rest[2], utime=rest[11],
    # stime=rest[12], cutime=rest[13], cstime=rest[14]
    return int(rest[1]), int(rest[2]), sum(int(x) for x in rest[11:15])


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def tree(root):
    """root and all its descendants."""
    kids = {}
    for p in all_pids():
        st = proc_stat(p)
        if st:
            kids.setdefault(st[0], []).append(p)
    out, todo = [], [root]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def group(pgid):
    return [p for p in all_pids() if (proc_stat(p) or (0, -1, 0))[1] == pgid]


def cpu_s(pids):
    """CPU seconds of pids: on-CPU ns of every live thread (schedstat, exact)
    plus the reaped children's utime+stime (ticks)."""
    total = 0.0
    for p in pids:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            v = read(f"/proc/{p}/task/{t}/schedstat").split()
            if v:
                total += int(v[0]) / 1e9
        s = read(f"/proc/{p}/stat")
        if s:
            rest = s[s.rindex(")") + 2:].split()
            total += (int(rest[13]) + int(rest[14])) / TICK
    return total


def rss_mib(pids, key="VmRSS"):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class RssSampler(threading.Thread):
    """Peak of the summed VmRSS of a set of processes, sampled every 100 ms."""

    def __init__(self, pids_fn):
        super().__init__(daemon=True)
        self.pids_fn, self.peak, self.stop = pids_fn, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pids_fn()))
            self.stop.wait(0.1)


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


# ------------------------------------------------------------- servers ---

def http_ok(url, body=None, timeout=5):
    try:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json",
                                                              "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # noqa: BLE001 - any failure means "not there"
        return 0, str(e).encode()


class Halite:
    def __init__(self, binary, config, logfile):
        self.binary, self.config, self.logfile = binary, config, logfile
        self.proc = None

    def start(self, ports):
        self.stop()
        env = dict(os.environ, SALT_MASTER_CONFIG=self.config)
        self.proc = subprocess.Popen([self.binary, "--config", self.config], env=env,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.logfile, "ab"))
        for _ in range(100):
            if http_ok(f"http://127.0.0.1:{ports[0]}/")[0] == 200:
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"halite exited at start (see {self.logfile})")
            time.sleep(0.1)
        raise SystemExit(f"halite did not answer on {ports[0]} (see {self.logfile})")

    def pids(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def salt_api_child(lab, module):
    """The salt-api child process serving `module` (rest_cherrypy/rest_tornado)."""
    root = read(f"{lab}/root/var/run/salt-api.pid")
    if not root:
        return None
    for p in tree(int(root)):
        cmd = read(f"/proc/{p}/cmdline").replace("\0", " ")
        if f"netapi.{module})" in cmd:
            return p
    return None


# ---------------------------------------------------------------- runs ---

def run_tool(argv, timeout, on_start=None):
    """Run a load tool; return (parsed JSON stdout, its CPU seconds)."""
    t0 = time.time()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if on_start:
        on_start(proc.pid)
    out, err = b"", b""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ru = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    try:
        data = json.loads(out.decode())
    except ValueError:
        data = None
    try:
        data = data if isinstance(data, dict) else json.loads(out.decode().strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        data = {"error": (err or out).decode(errors="replace")[-400:]}
    data.setdefault("wall_s", round(time.time() - t0, 3))
    return data, ru


def oha_summary(data, elapsed_hint):
    """Normalise oha's JSON to the fields http-load reports."""
    s = data.get("summary", {})
    lat = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    errors = data.get("errorDistribution", {})
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    bad = sum(v for k, v in codes.items() if not str(k).startswith("2"))
    nerr = sum(errors.values())
    total = ok + bad
    elapsed = s.get("total") or elapsed_hint
    return {
        "tool": "oha", "requests": total + nerr, "ok": ok, "failed": bad + nerr,
        "incomplete": None, "elapsed_s": elapsed,
        "rps": round(total / elapsed, 3) if elapsed else 0,
        "ok_rps": round(ok / elapsed, 3) if elapsed else 0,
        "p50_ms": round((lat.get("p50") or 0) * 1000, 3),
        "p99_ms": round((lat.get("p99") or 0) * 1000, 3),
        "status": codes, "errors": list(errors)[:5],
    }


class Bench:
    def __init__(self, a):
        self.a = a
        self.lab = os.environ["HALITE_LAB_DIR"]
        self.bin = a.bin_dir
        self.results = []
        self.master_pgid = proc_stat(int(read(f"{self.lab}/root/var/run/salt-master.pid")))[1]

    def lab_pids(self):
        return [p for p in all_pids() if self.lab in read(f"/proc/{p}/cmdline").replace("\0", " ")]

    def quiesce(self, limit=10.0, idle=0.12):
        """Wait until the lab (master, minions, salt-api) is idle again."""
        t_end = time.time() + limit
        while time.time() < t_end:
            pids = self.lab_pids()
            c0 = cpu_s(pids)
            time.sleep(0.5)
            if (cpu_s(pids) - c0) / 0.5 < idle:
                return
        log("lab still busy after %.0fs; going on" % limit)

    def measure(self, cell, server, argv, api_pids_fn, tool, extra=None):
        self.quiesce()
        api0 = api_pids_fn()
        master = group(self.master_pgid)
        c_api, c_master, t0 = cpu_s(api0), cpu_s(master), time.time()
        tool_pid = []
        sampler = RssSampler(lambda: api_pids_fn() or tool_pid)
        sampler.start()
        data, ru = run_tool(argv, timeout=self.a.duration * 4 + 240, on_start=tool_pid.append)
        sampler.stop.set()
        sampler.join()
        wall = time.time() - t0
        master_cpu = cpu_s(group(self.master_pgid)) - c_master
        if tool == "oha":
            data = oha_summary(data, wall)
        if api0:
            api_cpu = cpu_s(api_pids_fn()) - c_api
        else:  # the raw client: its own CPU (load generation included)
            api_cpu = ru
        done = (data.get("ok") or 0) + (data.get("incomplete") or 0)
        row = dict(cell, server=server, **{k: data.get(k) for k in (
            "requests", "ok", "failed", "incomplete", "rps", "ok_rps", "p50_ms", "p99_ms",
            "elapsed_s", "errors", "status", "tool", "max_in_flight")})
        row.update(
            api_cpu_s=round(api_cpu, 3) if api_cpu is not None else None,
            api_cpu_us_per_req=round(api_cpu / done * 1e6, 1) if api_cpu is not None and done else None,
            peak_rss_mib=round(sampler.peak, 1),
            master_cpu_s=round(master_cpu, 3),
            master_cpu_us_per_req=round(master_cpu / done * 1e6, 1) if done else None,
            wall_s=round(wall, 2),
            loadavg=read("/proc/loadavg").split()[0],
        )
        if extra:
            row.update(extra)
        self.results.append(row)
        log(f"{cell['workload']} c={cell['concurrency']:<5} {server:<14} "
            f"{row['rps'] or 0:9.1f} req/s  p50 {row['p50_ms'] or 0:8.2f} ms  p99 {row['p99_ms'] or 0:8.2f} ms  "
            f"fail {row['failed']} inc {row['incomplete']}  cpu/req {row['api_cpu_us_per_req']} us  "
            f"rss {row['peak_rss_mib']} MiB  master {row['master_cpu_us_per_req']} us/req  load {row['loadavg']}")
        self.save()
        return row

    def save(self):
        with open(self.a.out, "w") as f:
            json.dump({"meta": self.meta, "results": self.results}, f, indent=1)

    # ---------------------------------------------------------------------
    def http_argv(self, tool, url, body, conc, check):
        d = str(self.a.duration)
        if tool == "oha" and os.access(self.a.oha, os.X_OK):
            return [self.a.oha, "-z", f"{d}s", "-c", str(conc), "--no-tui", "--output-format", "json",
                    "--wait-ongoing-requests-after-deadline", "-m", "POST",
                    "-H", "Accept: application/json", "-T", "application/json", "-d", body, url]
        return [f"{self.bin}/http-load", "--url", url, "--body", body, "-c", str(conc), "-d", d,
                "--timeout", "60", "--check", check]

    def lab_phase(self):
        a = self.a
        wsgi, cp = int(os.environ["HALITE_WSGI_PORT"]), int(os.environ["HALITE_CHERRYPY_PORT"])
        halite = Halite(f"{self.bin}/halite", os.environ["SALT_MASTER_CONFIG"], f"{a.workdir}/halite-lab.log")
        halite.start([wsgi])
        self.halite = halite
        time.sleep(1)
        probe = json.dumps([dict(client="local_async", tgt="*", fun="test.ping", **CREDS)]).encode()
        st, body = http_ok(f"http://127.0.0.1:{cp}/run", probe)
        has_cp = st == 200 and b'"jid"' in body
        st_login, _ = http_ok(f"http://127.0.0.1:{cp}/login", json.dumps(CREDS).encode())
        has_login = st_login == 200
        self.meta["halite_rest_cherrypy"] = {"run": has_cp, "login": has_login,
                                             "probe_status": st, "login_status": st_login}
        log(f"halite rest_cherrypy: /run {'yes' if has_cp else 'no'} (HTTP {st}), /login "
            f"{'yes' if has_login else 'no'} (HTTP {st_login})")
        api_url, tornado_url = os.environ["SALT_API_URL"], os.environ["SALT_TORNADO_URL"]
        cp_child = lambda: [p for p in [salt_api_child(self.lab, "rest_cherrypy")] if p]  # noqa: E731
        tor_child = lambda: [p for p in [salt_api_child(self.lab, "rest_tornado")] if p]  # noqa: E731
        servers = [
            ("halite-wsgi", f"http://127.0.0.1:{wsgi}/", None, halite.pids),
        ]
        if has_cp:
            servers.append(("halite-cp", f"http://127.0.0.1:{cp}/run", f"http://127.0.0.1:{cp}/login",
                            halite.pids))
        servers += [
            ("salt-cherrypy", f"{api_url}/run", f"{api_url}/login", cp_child),
            ("salt-tornado", f"{tornado_url}/run", f"{tornado_url}/login", tor_child),
            ("raw", None, None, lambda: []),
        ]
        if not has_login:
            self.meta["notes"].append("W5 /login: halite has no rest_cherrypy /login yet "
                                      f"(HTTP {st_login}); halite skipped in W5")
        # W1 (local_async) leaves each minion a backlog of thousands of jobs that
        # takes minutes to drain, so it runs last: synchronous workloads first.
        workloads = [
            ("W2", "local test.ping (sync)", dict(client="local", tgt="*", fun="test.ping"), "true:3", "http-load", [1, 8, 32]),
            ("W6", "local grains.items", dict(client="local", tgt="*", fun="grains.items"), "objects:3", "http-load", [8]),
            ("W3", "runner test.arg", dict(client="runner", fun="test.arg", arg=["a"], kwarg={"b": "c"}), "key:args", "oha", [1, 8]),
            ("W4", "wheel key.list_all", dict(client="wheel", fun="key.list_all"), "key:data", "oha", [1, 8]),
            ("W5", "/login (mk_token)", dict(client="login"), "key:token", "oha", [8]),
            ("W1", "local_async test.ping", dict(client="local_async", tgt="*", fun="test.ping"), "jid", "oha", [1, 8, 32]),
        ]
        only = set(a.only.split(",")) if a.only else None
        n = 0
        for wid, title, low, check, tool, concs in workloads:
            if only and wid not in only:
                continue
            low = dict(low, **CREDS)
            for conc in concs:
                cell = {"phase": "lab", "workload": wid, "title": title, "concurrency": conc}
                order = servers[n % len(servers):] + servers[:n % len(servers)]
                n += 1
                for name, run_url, login_url, pids_fn in order:
                    if name == "halite-cp" and wid not in ("W1", "W2", "W5"):
                        continue
                    if name == "raw":
                        argv = [f"{self.bin}/salt-raw", "--config", os.environ["SALT_MASTER_CONFIG"],
                                "--low", json.dumps(low), "-c", str(conc), "-d", str(a.duration),
                                "--check", check]
                        self.measure(cell, name, argv, pids_fn, "salt-raw")
                        continue
                    if wid == "W5":
                        if not login_url:
                            continue
                        url, body = login_url, json.dumps(CREDS)
                    else:
                        url, body = run_url, json.dumps([low])
                    # oha cannot read bodies: check a few answers first.
                    extra = {}
                    if tool == "oha" and not os.access(self.a.oha, os.X_OK):
                        tool = "http-load"
                    if tool == "oha":
                        v, _ = run_tool([f"{self.bin}/http-load", "--url", url, "--body", body, "-n", "3",
                                         "--check", check, "--timeout", "60"], 120)
                        extra = {"precheck": f"{v.get('ok')}/3 ok, {v.get('incomplete')} incomplete, "
                                             f"{v.get('failed')} failed", "precheck_errors": v.get("errors")}
                    self.measure(cell, name, self.http_argv(tool, url, body, conc, check),
                                 pids_fn, tool, extra)
        self.meta["halite_lab_after"] = {"rss_mib": rss_mib(halite.pids()),
                                         "hwm_mib": rss_mib(halite.pids(), "VmHWM")}
        halite.stop()

    # ---------------------------------------------------------------------
    def null_phase(self):
        a = self.a
        nd = f"{a.workdir}/null"
        os.makedirs(nd, exist_ok=True)
        cfg = f"{nd}/master"
        port, wsgi, cp = a.null_port, a.null_port - 5, a.null_port - 4
        halite = Halite(f"{self.bin}/halite", cfg, f"{a.workdir}/halite-null.log")
        nm = {"proc": None}

        def start(minions, delay_ms):
            halite.stop()
            if nm["proc"]:
                nm["proc"].terminate()
                nm["proc"].wait(10)
            nm["proc"] = subprocess.Popen(
                [f"{self.bin}/null-master", "--port", str(port), "--dir", nd, "--minions", str(minions),
                 "--ret-delay-ms", str(delay_ms), "--write-config", cfg, "--wsgi-port", str(wsgi),
                 "--cherrypy-port", str(cp)],
                stdout=subprocess.DEVNULL, stderr=open(f"{a.workdir}/null-master.log", "ab"))
            time.sleep(0.5)
            halite.start([wsgi])
            time.sleep(1.0)

        def cell(wid, title, conc):
            return {"phase": "null", "workload": wid, "title": title, "concurrency": conc}

        url = f"http://127.0.0.1:{wsgi}/"
        low_async = json.dumps([dict(client="local_async", tgt="*", fun="test.ping", **CREDS)])
        try:
            start(3, 0)
            time.sleep(2)
            self.meta["null_idle_rss_mib"] = round(rss_mib(halite.pids()), 2)
            log(f"null: halite idle RSS {self.meta['null_idle_rss_mib']} MiB")
            for conc in (8, 32):
                self.measure(cell("N1", "local_async test.ping, null master", conc), "halite-wsgi",
                             self.http_argv("http-load", url, low_async, conc, "jid"), halite.pids, "http-load")
            raw_low = dict(client="local_async", tgt="*", fun="test.ping", **CREDS)
            self.measure(cell("N1", "local_async test.ping, null master", 32), "raw",
                         [f"{self.bin}/salt-raw", "--config", cfg, "--low", json.dumps(raw_low),
                          "-c", "32", "-d", str(a.duration), "--check", "jid"], lambda: [], "salt-raw")
            self.meta["null_idle_rss_after_mib"] = round(rss_mib(halite.pids()), 2)
            start(100, 0)
            low100 = json.dumps([dict(client="local", tgt="*", fun="test.ping", **CREDS)])
            for conc in (8, 32):
                self.measure(cell("N2", "local test.ping, 100 simulated minions", conc), "halite-wsgi",
                             self.http_argv("http-load", url, low100, conc, "true:100"), halite.pids, "http-load")
            start(3, a.hold_ms)
            low_hold = json.dumps([dict(client="local", tgt="*", fun="test.ping", timeout=120, **CREDS)])
            rss_before = rss_mib(halite.pids())
            argv = [f"{self.bin}/http-load", "--url", url, "--body", low_hold, "-c", str(a.inflight),
                    "-n", str(a.inflight), "--timeout", "180", "--check", "true:3"]
            row = self.measure(cell("N3", f"{a.inflight} synchronous calls in flight "
                                    f"(returns held {a.hold_ms / 1000:.0f} s)", a.inflight),
                               "halite-wsgi", argv, halite.pids, "http-load",
                               {"rss_before_mib": round(rss_before, 1)})
            row["hwm_mib"] = round(rss_mib(halite.pids(), "VmHWM"), 1)
            self.meta["null_rss_after_inflight_mib"] = round(rss_mib(halite.pids()), 1)
            self.save()
        finally:
            halite.stop()
            if nm["proc"]:
                nm["proc"].terminate()
                nm["proc"].wait(10)


def machine():
    model = ""
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = read("/proc/meminfo").splitlines()[0].split()[1]
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": round(int(mem) / 1048576, 1),
            "kernel": platform.release(), "salt": os.environ.get("SALT_VERSION_FULL", "?"),
            "nofile": read("/proc/self/limits") and [l for l in read("/proc/self/limits").splitlines()
                                                      if "open files" in l][0].split()[3],
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--oha", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--only", default="", help="comma list of W1..W6, N (null master)")
    p.add_argument("--null-port", type=int, default=16606)
    p.add_argument("--inflight", type=int, default=10000)
    p.add_argument("--hold-ms", type=int, default=20000)
    a = p.parse_args()
    a.workdir, a.out, a.bin_dir = (os.path.abspath(x) for x in (a.workdir, a.out, a.bin_dir))
    b = Bench(a)
    b.meta = {"machine": machine(), "duration_s": a.duration, "notes": [],
              "lab": os.environ.get("HALITE_LAB_NAME")}
    if a.only and os.path.exists(a.out):
        # A partial run replaces only its own cells in the existing results.
        only = set(a.only.split(","))
        old = json.load(open(a.out))
        b.results = [r for r in old.get("results", [])
                     if r["workload"] not in only and not (r["phase"] == "null" and "N" in only)]
        b.meta = dict(old.get("meta", {}), **{k: v for k, v in b.meta.items() if k != "notes"})
        b.meta.setdefault("notes", [])
        b.meta.setdefault("partial_runs", []).append({"only": a.only, "machine": b.meta["machine"]})
    t0 = time.time()
    try:
        if not a.only or any(x.startswith("W") for x in a.only.split(",")):
            b.lab_phase()
        if not a.only or "N" in a.only.split(","):
            b.null_phase()
    finally:
        b.meta["total_s"] = round(time.time() - t0, 1)
        b.save()
    log(f"done in {b.meta['total_s']} s -> {a.out}")


if __name__ == "__main__":
    main()
