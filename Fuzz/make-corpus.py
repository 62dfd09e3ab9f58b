#!/usr/bin/env python3
"""Writes the seed corpora in Fuzz/corpus/ (committed; run again to regenerate)."""
import os, shutil
here = os.path.dirname(os.path.abspath(__file__))
def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80]); n >>= 7
    return out + bytes([n])
def field(num, wire, value):
    tag = varint(num << 3 | wire)
    if wire == 0: return tag + varint(value)
    if wire == 2: return tag + varint(len(value)) + value
    if wire == 1: return tag + value[:8].ljust(8, b"\0")
    if wire == 5: return tag + value[:4].ljust(4, b"\0")
def envelope(dt=b"metrics", version=0, key=b"host-7", source=b"api", seq=1, payload=b"hello"):
    e = field(1, 2, dt)
    if version: e += field(2, 0, version)
    if key: e += field(3, 2, key)
    return e + field(4, 2, source) + field(5, 0, seq) + field(7, 2, payload)
def frame(body): return varint(len(body)) + body
def write(target, name, data):
    d = os.path.join(here, "corpus", target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)
bodies = {
    "plain": envelope(), "versioned": envelope(version=2), "nokey": envelope(key=b""),
    "unknown-fields": envelope() + field(99, 1, b"12345678") + field(100, 5, b"1234"),
    "big-payload": envelope(payload=b"x" * 700),
}
for name, body in bodies.items():
    write("envelope", name, body)
    write("frame", name, bytes([60, 63, 7]) + frame(body) + frame(body))  # max-frame selector, read-size selector, chunk size, bytes
write("frame", "stream", bytes([255, 63, 13]) + b"".join(frame(envelope(seq=i, key=b"k%d" % i)) for i in range(20)))
write("frame", "oversized", bytes([0, 63, 5]) + varint(4 << 30) + b"junk")
write("frame", "malformed-length", bytes([10, 63, 3]) + b"\xff" * 11)
write("frame", "bad-body", bytes([10, 63, 3]) + frame(b"\x0b\x0c"))
write("envelope", "group", b"\x0b\x0c")
write("envelope", "truncated", envelope()[:-3])
write("envelope", "wrong-wire-type", field(1, 0, 5) + field(3, 5, b"abcd"))
# Control requests, as ControlTests sends them: Request{id=1, get_pipe_name{data_type, shard_key, service}}.
call = field(1, 2, b"metrics") + field(2, 2, b"A") + field(3, 2, b"api")
req = field(1, 0, 1) + field(4, 2, call)
write("message", "get-pipe-name", bytes([0, 5]) + frame(req) + frame(req))
write("message", "register", bytes([0, 60]) + frame(field(1, 0, 2) + field(2, 2, field(1, 2, b"api") + field(2, 2, b"metrics"))))
write("message", "oversized", bytes([1, 4]) + varint(1 << 20) + b"zz")
write("message", "garbage", bytes([0, 6]) + b"\x05\xff\xff\xff\xff\xff")
# Specs: the example, and bad ones.
root = os.path.dirname(here)
shutil.copy(os.path.join(root, "mesh.yaml.example"), os.path.join(here, "corpus", "spec", "mesh.yaml.example"))
bad = {
    "empty.yaml": "",
    "not-a-mapping.yaml": "- a\n- b\n",
    "wrong-types.yaml": "apiVersion: pmm/v1\nkind: Mesh\nname: x\nroot: /srv/p\nservices:\n  api:\n    uid: collector\n    replicas: -3\n",
    "unknown-ref.yaml": "apiVersion: pmm/v1\nkind: Mesh\nname: x\nroot: /srv/p\ndataTypes: {m: {shards: 5000}}\nservices:\n  a: {uid: 1, produces: [{dataType: m}]}\nroutes:\n  m: {targets: [{service: colector, weight: 0}]}\n",
    "alias-bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
    "duplicate-keys.yaml": "apiVersion: pmm/v1\napiVersion: pmm/v1\nkind: Mesh\nname: ../etc\nroot: /proc/x\n",
    "bad-syntax.yaml": "apiVersion: [pmm/v1\nkind: : Mesh\n\t- x\n",
}
for name, text in bad.items(): write("spec", name, text.encode())
