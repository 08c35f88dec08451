#!/usr/bin/env python3
"""Record raw bytes from a real Salt master for salt-client's captured-bytes tests.

    eval "$(scripts/lab env)"            # the lab to capture from (any PORT_BASE / version)
    "$SALT_LAB_VENV/bin/python" crates/salt-client/tests/data/capture.py crates/salt-client/tests/data/captures

Uses only the lab venv's msgpack (no Salt code, no pyzmq: ZMTP is spoken by hand so the exact
server bytes are kept). Writes <outdir>/<SALT_VERSION_FULL>[-tcp]/:

  pub_stream.bin          the raw bytes read from the event bus publish socket while this script
                          fires one event and publishes test.ping to every minion (complete
                          frames only; framing as the master sends it)
  zmtp_server_hello.bin   (zeromq transport) the server's 64-byte greeting + READY command frame
  reply_ping.bin          (zeromq) reply payload to {"cmd": "ping", "capture": 1}
  reply_publish.bin       (zeromq) reply payload to a test.ping publish (eauth auto)
  reply_auth_error.bin    (zeromq) reply payload to a publish with an unknown eauth backend
  reply_exception.bin     (zeromq) reply payload to a publish with its required fields missing
  tcp_reply_ping.bin      (tcp transport) the raw {"head", "body"} reply frame to a ping
  meta.json               what was sent: version, fired tag and data (JSON view), the jid, minions
"""
import json
import os
import socket
import struct
import sys
import threading
import time
import uuid

import msgpack

VERSION = os.environ["SALT_VERSION_FULL"]
RET_PORT = int(os.environ["SALT_LAB_RET_PORT"])
SOCK_DIR = os.environ["SALT_LAB_SOCK_DIR"]
TRANSPORT = os.environ.get("SALT_LAB_TRANSPORT", "zeromq")
IPC_MODE = os.environ.get("SALT_LAB_IPC_MODE", "ipc")
PORT_BASE = int(os.environ["SALT_LAB_PORT_BASE"])
MINIONS = os.environ["SALT_LAB_MINIONS"].split()
EAUTH = {"eauth": "auto", "username": "saltdev", "password": "capture"}


def envelope(load):
    return msgpack.packb({"enc": "clear", "load": load, "version": 3}, use_bin_type=False)


# ------------------------------------------------------------------ ZMTP by hand
def zmtp_frame(body, more=False, command=False):
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


class Zmtp:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 1]) + b"NULL" + b"\x00" * 48
        ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
        self.s.sendall(greeting + zmtp_frame(ready, command=True))
        raw = self._need(64)
        hello = raw
        flags, body, used = self._frame(64)
        self.hello = self.buf[:used]
        self.buf = self.buf[used:]
        assert flags & 4 and body[1:6] == b"READY", body

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        return self.buf[:n]

    def _frame(self, start):
        self._need(start + 2)
        flags = self.buf[start]
        if flags & 2:
            self._need(start + 9)
            size = struct.unpack(">Q", self.buf[start + 1:start + 9])[0]
            hdr = 9
        else:
            size = self.buf[start + 1]
            hdr = 2
        self._need(start + hdr + size)
        return flags, self.buf[start + hdr:start + hdr + size], start + hdr + size

    def request(self, payload):
        self.s.sendall(zmtp_frame(b"", more=True) + zmtp_frame(payload))
        parts = []
        while True:
            flags, body, used = self._frame(0)
            self.buf = self.buf[used:]
            if flags & 4:
                if body[1:5] == b"PING":
                    self.s.sendall(zmtp_frame(b"\x04PONG" + body[7:], command=True))
                continue
            parts.append(body)
            if not flags & 1:
                return parts[-1]


# ------------------------------------------------------------------ event bus
def bus_sockets():
    if IPC_MODE == "tcp":
        pub = socket.create_connection(("127.0.0.1", PORT_BASE + 12))
        pull = lambda: socket.create_connection(("127.0.0.1", PORT_BASE + 13))
    else:
        pub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        pub.connect(os.path.join(SOCK_DIR, "master_event_pub.ipc"))

        def pull():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(os.path.join(SOCK_DIR, "master_event_pull.ipc"))
            return s
    return pub, pull


def split_frames(data):
    """Complete frames of a publish stream: [(end_offset, tag, data)], framing detected."""
    out = []
    if not data:
        return out, None
    bare = 0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)
    pos = 0
    if bare:
        unp = msgpack.Unpacker(raw=True, strict_map_key=False)
        unp.feed(data)
        for item in unp:
            pos = unp.tell()
            out.append((pos, item))
    else:
        while pos + 4 <= len(data):
            (n,) = struct.unpack(">I", data[pos:pos + 4])
            if pos + 4 + n > len(data):
                break
            item = msgpack.unpackb(data[pos + 4:pos + 4 + n], raw=True, strict_map_key=False)
            pos += 4 + n
            out.append((pos, item))
    events = []
    for end, item in out:
        body = item.get(b"body", b"")
        tag, _, rest = body.partition(b"\n\n")
        events.append((end, tag.decode("utf-8", "replace"), rest))
    return events, ("bare" if bare else "prefixed")


def main():
    outdir = os.path.join(sys.argv[1], VERSION + ("-tcp" if TRANSPORT == "tcp" else ""))
    os.makedirs(outdir, exist_ok=True)

    def save(name, data):
        with open(os.path.join(outdir, name), "wb") as fh:
            fh.write(data)

    pub, pull = bus_sockets()
    stream = bytearray()
    stop = threading.Event()

    def reader():
        pub.settimeout(0.2)
        while not stop.is_set():
            try:
                chunk = pub.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            stream.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.5)  # let the subscription settle before anything is fired

    tag = "halite/capture/" + uuid.uuid4().hex[:12]
    data = {"text": "héllo", "n": 42, "big": 2**64 - 1, "neg": -(2**63), "f": 1.5,
            "nested": {"a": [1, "b", None, True], "m": {"k": "v"}}, 7: "int key",
            "bytes": b"\x00\xff"}
    body = tag.encode() + b"\n\n" + msgpack.packb(data, use_bin_type=True)
    frame = msgpack.packb({"head": {}, "body": body}, use_bin_type=True)
    # The pull side drops frames in the wrong framing: send both, one arrives.
    for raw in (struct.pack(">I", len(frame)) + frame, frame):
        s = pull()
        s.sendall(raw)
        s.close()

    meta = {"version": VERSION, "transport": TRANSPORT, "ipc_mode": IPC_MODE, "fired_tag": tag,
            "fired_data_json": {"text": "héllo", "n": 42, "big": 2**64 - 1, "neg": -(2**63),
                                "f": 1.5, "nested": {"a": [1, "b", None, True], "m": {"k": "v"}},
                                "7": "int key", "bytes": "\u0000\ufffd"},
            "minions": MINIONS}

    publish = {"cmd": "publish", "tgt": "*", "fun": "test.ping", "arg": [], "tgt_type": "glob",
               "ret": "", "jid": "", "user": "root", "kwargs": dict(EAUTH, client="local")}
    if TRANSPORT == "tcp":
        s = socket.create_connection(("127.0.0.1", RET_PORT), timeout=60)
        unp = msgpack.Unpacker(raw=True, strict_map_key=False)

        def tcp_req(load, keep=None):
            s.sendall(msgpack.packb({"head": {"mid": uuid.uuid4().hex},
                                     "body": {"enc": "clear", "load": load, "version": 3}},
                                    use_bin_type=False))
            buf = b""
            while True:
                chunk = s.recv(65536)
                buf += chunk
                unp.feed(chunk)
                for msg in unp:
                    if keep:
                        save(keep, buf)
                    return msg[b"body"]

        tcp_req({"cmd": "ping", "capture": 1}, keep="tcp_reply_ping.bin")
        reply = tcp_req(publish)
        reply = reply.get(b"load", reply)
    else:
        z = Zmtp(RET_PORT)
        save("zmtp_server_hello.bin", z.hello)
        save("reply_ping.bin", z.request(envelope({"cmd": "ping", "capture": 1})))
        raw = z.request(envelope(publish))
        save("reply_publish.bin", raw)
        reply = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        reply = reply.get("load", reply)
        bad = dict(publish, kwargs={"eauth": "no-such-backend", "username": "x", "password": "y"})
        save("reply_auth_error.bin", z.request(envelope(bad)))
        save("reply_exception.bin", z.request(envelope({"cmd": "publish", "kwargs": EAUTH})))
    jid = reply[b"jid" if b"jid" in reply else "jid"]
    jid = jid.decode() if isinstance(jid, bytes) else jid
    meta["jid"] = jid

    # Read until the fired event and every minion's return are in the stream.
    deadline = time.time() + 60
    want = {"salt/job/%s/ret/%s" % (jid, m) for m in MINIONS} | {tag}
    while time.time() < deadline:
        events, framing = split_frames(bytes(stream))
        if want <= {e[1] for e in events}:
            break
        time.sleep(0.2)
    stop.set()
    t.join()
    events, framing = split_frames(bytes(stream))
    missing = want - {e[1] for e in events}
    if missing:
        sys.exit("capture incomplete, not seen: %s" % sorted(missing))
    last = max(end for end, etag, _ in events if etag in want)
    save("pub_stream.bin", bytes(stream[:last]))
    meta["pub_framing"] = framing
    meta["events"] = [etag for end, etag, _ in events if end <= last]
    with open(os.path.join(outdir, "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
    print("captured %d events (%s framing, %d bytes) into %s" % (len(meta["events"]), framing, last, outdir))


if __name__ == "__main__":
    main()
