#!/usr/bin/env python3
"""Read `salt ... test.ping --out=json --static` output on stdin; exit 0 when every minion id
given as an argument answered True (helper of scripts/lab). Prints the ones still missing."""
import json
import sys

want = sys.argv[1:]
text = sys.stdin.read()
try:
    start = text.index("{")
    got = json.loads(text[start:text.rindex("}") + 1])
except ValueError:
    got = {}
missing = [m for m in want if got.get(m) is not True]
if missing:
    print(" ".join(missing))
    sys.exit(1)
