#!/usr/bin/env python3
"""Install one Salt release from its PyPI sdist into a lab virtualenv (helper of scripts/lab).

    install_salt.py --venv DIR --spec 'salt==3008.*' --cache DIR --log FILE

Steps:
  1. `pip download --no-deps --no-binary :all: SPEC` into CACHE/sdist (gives the newest matching
     release for a series spec such as salt==3008.*).
  2. Unpack it, relax the requirement pins that the package registry cannot satisfy, and build a
     wheel into CACHE/wheels (reused by later labs of the same release).
     `certifi` is always relaxed: 3006.30, 3007.17 and 3008.5 pin certifi>=2026.10.23, which the
     registry here does not carry. Any other requirement that pip then reports as unsatisfiable
     ("No matching distribution found for X") is relaxed the same way and the wheel is rebuilt
     (at most a few rounds). Relaxing = dropping the version specifier, keeping env markers.
  3. pip install the wheel plus cherrypy (Salt's rest_cherrypy netapi, the test oracle) into VENV.
  4. Check that salt, salt.netapi.rest_cherrypy, zmq, tornado import and that libpam is found
     (Salt's PAM eauth uses ctypes; no Python package is needed).
  5. Write VENV/.lab-installed (full Salt version) and VENV/.lab-relaxed (relaxed requirements).

Prints the full installed Salt version on stdout. Progress and pip output go to the log file.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ALWAYS_RELAX = ["certifi"]
MAX_ROUNDS = 6


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


REQ_LINE = re.compile(r"^(\s*)([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*([^;#]*?)\s*(;[^#]*)?(#.*)?$")


def relax_file(path, names):
    """Drop version specifiers of the named requirements in one requirements file."""
    changed = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=False)
    out = []
    for line in lines:
        m = REQ_LINE.match(line)
        if m and not line.lstrip().startswith(("#", "-")) and norm(m.group(2)) in names and m.group(4):
            new = m.group(1) + m.group(2) + (m.group(3) or "")
            if m.group(5):
                new += " " + m.group(5).strip()
            changed.append("%s: %r -> %r" % (os.path.basename(path), line.strip(), new.strip()))
            line = new
        out.append(line)
    if changed:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(out) + "\n")
    return changed


def relax_tree(src, names):
    names = {norm(n) for n in names}
    changed = []
    for path in sorted(glob.glob(os.path.join(src, "requirements", "*.txt"))):
        changed += relax_file(path, names)
    return changed


def run(cmd, logfh, **kw):
    logfh.write("\n$ %s\n" % " ".join(cmd))
    logfh.flush()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL, **kw)
    logfh.write(proc.stdout)
    logfh.flush()
    return proc


UNSAT = [
    re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"Could not find a version that satisfies the requirement ([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"salt [0-9.]+ depends on ([A-Za-z0-9][A-Za-z0-9._-]*)"),
]


def unsatisfied(output):
    found = []
    for rx in UNSAT:
        for name in rx.findall(output):
            if norm(name) not in ("salt",) and norm(name) not in found:
                found.append(norm(name))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--extra", action="append", default=["cherrypy"])
    a = ap.parse_args()

    pip = [os.path.join(a.venv, "bin", "python"), "-m", "pip"]
    env = dict(os.environ)
    env.pop("USE_STATIC_REQUIREMENTS", None)  # use requirements/*.txt, which we patch
    env["PIP_NO_INPUT"] = "1"
    sdist_dir = os.path.join(a.cache, "sdist")
    wheel_root = os.path.join(a.cache, "wheels")
    os.makedirs(sdist_dir, exist_ok=True)
    os.makedirs(wheel_root, exist_ok=True)

    with open(a.log, "a", encoding="utf-8") as log:
        # 1. the sdist. An exact spec already in the cache needs no index lookup.
        m = re.fullmatch(r"salt==(\d+\.\d+)", a.spec)
        sdist = None
        if m and os.path.exists(os.path.join(sdist_dir, "salt-%s.tar.gz" % m.group(1))):
            sdist = os.path.join(sdist_dir, "salt-%s.tar.gz" % m.group(1))
        else:
            p = run(pip + ["download", "--no-deps", "--no-binary", ":all:", a.spec, "-d", sdist_dir], log, env=env)
            names = re.findall(r"(salt-\d+\.\d+(?:\.\d+)?\.tar\.gz)", p.stdout)
            if p.returncode != 0 or not names:
                sys.exit("pip download %s failed (see %s)" % (a.spec, a.log))
            sdist = os.path.join(sdist_dir, names[-1])
        version = re.match(r"salt-(.+)\.tar\.gz$", os.path.basename(sdist)).group(1)
        log.write("\n== Salt %s from %s\n" % (version, sdist))

        wheel_dir = os.path.join(wheel_root, version)
        relaxed_file = os.path.join(wheel_dir, "relaxed.txt")
        relax = list(ALWAYS_RELAX)
        if os.path.exists(relaxed_file):
            with open(relaxed_file, encoding="utf-8") as fh:
                relax = sorted(set(relax) | {l.strip() for l in fh if l.strip()})
        changes = []

        for round_no in range(1, MAX_ROUNDS + 1):
            wheels = glob.glob(os.path.join(wheel_dir, "salt-%s-*.whl" % version))
            built_with = []
            if os.path.exists(relaxed_file):
                with open(relaxed_file, encoding="utf-8") as fh:
                    built_with = sorted({l.strip() for l in fh if l.strip()})
            if not wheels or built_with != sorted(set(relax)):
                # 2. unpack, relax, build
                shutil.rmtree(wheel_dir, ignore_errors=True)
                os.makedirs(wheel_dir)
                tmp = tempfile.mkdtemp(prefix="salt-src-", dir=a.cache)
                try:
                    with tarfile.open(sdist) as tf:
                        tf.extractall(tmp)
                    src = os.path.join(tmp, "salt-%s" % version)
                    changes = relax_tree(src, relax)
                    for c in changes:
                        log.write("relaxed %s\n" % c)
                    p = run(pip + ["wheel", "--no-deps", "-w", wheel_dir, src], log, env=env)
                    if p.returncode != 0:
                        sys.exit("building the Salt %s wheel failed (see %s)" % (version, a.log))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                with open(relaxed_file, "w", encoding="utf-8") as fh:
                    fh.write("\n".join(sorted(set(relax))) + "\n")
                wheels = glob.glob(os.path.join(wheel_dir, "salt-%s-*.whl" % version))
                if not wheels:
                    sys.exit("no wheel produced for Salt %s (see %s)" % (version, a.log))
            # 3. install
            p = run(pip + ["install", wheels[0]] + a.extra, log, env=env)
            if p.returncode == 0:
                break
            bad = [n for n in unsatisfied(p.stdout) if n not in relax]
            if not bad:
                sys.exit("pip install of Salt %s failed (see %s)" % (version, a.log))
            log.write("\n== round %d: relaxing unsatisfiable requirement(s) %s and rebuilding\n" % (round_no, bad))
            relax += bad
        else:
            sys.exit("pip install of Salt %s still failing after %d rounds (see %s)" % (version, MAX_ROUNDS, a.log))

        # 4. checks
        check = (
            "import ctypes.util, salt.version, salt.netapi.rest_cherrypy.app, cherrypy, zmq, tornado\n"
            "assert ctypes.util.find_library('pam'), 'libpam not found (apt-get install libpam0g)'\n"
            "print(salt.version.__version__)\n"
        )
        p = run([os.path.join(a.venv, "bin", "python"), "-c", check], log, env=env)
        if p.returncode != 0:
            sys.exit("the installed Salt does not import cleanly (see %s)" % a.log)
        got = p.stdout.strip().splitlines()[-1]
        if got != version:
            sys.exit("installed Salt reports %s, expected %s" % (got, version))
        p = run([os.path.join(a.venv, "bin", "salt-api"), "--version"], log, env=env)
        if p.returncode != 0:
            sys.exit("salt-api --version failed (see %s)" % a.log)

        # 5. stamps
        with open(os.path.join(a.venv, ".lab-relaxed"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(sorted(set(relax))) + "\n")
        with open(os.path.join(a.venv, ".lab-installed"), "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
    print(version)


if __name__ == "__main__":
    main()
