#!/usr/bin/env python3
"""List the processes that belong to one lab (helper of scripts/lab).

    procs.py LAB_DIR [all|master|minion|minion-N|api] [--long]

A process belongs to the lab when its command line runs the lab's own virtualenv
(an argv word starting with LAB_DIR/venv/: the venv python, salt-master, salt-minion,
salt-api, the salt CLI, the PAM helper), or when it descends from such a process.
Salt renames its workers with setproctitle, but keeps the original command line as a prefix,
so the words are still there; /proc/PID/cmdline is split on NUL and on whitespace.

Some workers replace their whole title (the master's EventPublisher does), and a worker whose
daemon died is re-parented away from it; such a process is still found through its memory map
(it has shared objects of LAB_DIR/venv/ mapped) and is reported with the kind "orphan".

Kinds narrow the match to the daemons: master = salt-master and its descendants,
minion = any salt-minion, minion-N = the salt-minion whose config dir is LAB_DIR/minion-N,
api = salt-api and its descendants, orphan = see above; all = every lab process.
Prints one PID per line (with --long: PID, kind, cmdline).
Never lists itself or its parent (the calling shell).
"""
import os
import sys


def read_procs():
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                raw = fh.read()
            with open("/proc/%d/stat" % pid, "rb") as fh:
                stat = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        # stat: pid (comm) state ppid ...; comm may contain spaces/parens
        rest = stat[stat.rfind(")") + 2:].split()
        if rest and rest[0] == "Z":
            continue  # zombies cannot be signalled usefully
        ppid = int(rest[1]) if len(rest) > 1 else 0
        text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        procs[pid] = (ppid, text.split(), text)
    return procs


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    lab = os.path.realpath(sys.argv[1]).rstrip("/")
    kind = sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else "all"
    long_out = "--long" in sys.argv
    venv = lab + "/venv/"
    procs = read_procs()
    me = {os.getpid(), os.getppid()}

    def role(words):
        if not any(w.startswith(venv) for w in words):
            return None
        for i, w in enumerate(words):
            if w == venv + "bin/salt-master":
                return "master"
            if w == venv + "bin/salt-api":
                return "api"
            if w == venv + "bin/salt-minion":
                for j, x in enumerate(words):
                    if x == "-c" and j + 1 < len(words):
                        d = words[j + 1].rstrip("/")
                        if d.startswith(lab + "/minion-"):
                            return d[len(lab) + 1:]
                    elif x.startswith("--config-dir="):
                        d = x.split("=", 1)[1].rstrip("/")
                        if d.startswith(lab + "/minion-"):
                            return d[len(lab) + 1:]
                return "minion-?"
        return "other"

    roles = {pid: role(words) for pid, (_, words, _) in procs.items()}

    def effective(pid):
        """Own role, else the role of the nearest lab ancestor."""
        seen = set()
        while pid and pid not in seen:
            seen.add(pid)
            r = roles.get(pid)
            if r:
                return r
            pid = procs.get(pid, (0,))[0]
        return None

    def maps_venv(pid):
        try:
            with open("/proc/%d/maps" % pid, "rb") as fh:
                return venv.encode() in fh.read()
        except OSError:
            return False

    out = []
    for pid in sorted(procs):
        if pid in me:
            continue
        r = effective(pid)
        if not r and maps_venv(pid):
            r = "orphan"
        if not r:
            continue
        if kind == "all" or r == kind or (kind == "minion" and r.startswith("minion-")):
            out.append((pid, r, procs[pid][2]))
    for pid, r, text in out:
        print("%d %s %s" % (pid, r, text[:200]) if long_out else pid)


if __name__ == "__main__":
    main()
