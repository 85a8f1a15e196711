#!/usr/bin/env python3
"""Large answers with real Synapse (called by big.sh through run.sh; run with the venv's
python: the /state step signs its request with signedjson, a Synapse dependency).

Subcommands (STATE: a json file this script writes and reads):
  prepare STATE A_URL B_URL N_STATE N_MSG   alice@A creates a room with N_STATE extra state
                               events (org.spore.test, ~300 bytes each) and invites bob@B, then
                               sends N_MSG messages (big-1..big-N, ~600 bytes of text each, so
                               that 100 of them are more than the reply SURBs carry; after 150
                               short ones) before bob joins
  join STATE                   bob joins (make_join, then a send_join whose answer carries the
                               whole room state) and must see every state event
  state STATE PROXY CA KEY     a GET /_matrix/federation/v1/state from hs-b, X-Matrix signed
                               with B's signing key KEY, through B's sidecar proxy (CA: its
                               local CA) to A's Synapse; the answer must hold every state event
  backfill STATE N_MSG TIMEOUT bob pages back (/messages dir=b); B's Synapse backfills from A
                               (at most 100 events per /backfill); all N_MSG must appear, in
                               order, once
  media A_URL B_URL BYTES      alice uploads BYTES random bytes to A; bob downloads them
                               through B (/_matrix/client/v1/media/download, so B fetches
                               /_matrix/federation/v1/media/download from A); sha256 must match

Each step prints one line `BIG step=NAME seconds=S ...` for run.sh's summary.
"""
import base64
from concurrent.futures import ThreadPoolExecutor
import hashlib
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import call, log, login, until  # noqa: E402

STATE_TYPE = "org.spore.test"
PRE_MESSAGES = 150


def q(s):
    return urllib.parse.quote(s, safe="")


def figure(step, seconds, **more):
    extra = " ".join(f"{k}={v}" for k, v in more.items())
    print(f"BIG step={step} seconds={seconds:.1f} {extra}".rstrip(), flush=True)


def load(path):
    return json.load(open(path))


def prepare(state_path, a, b, n_state, n_msg):
    ta, alice = login(a, "alice")
    tb, bob = login(b, "bob")
    t0 = time.time()
    status, r = call(a, "POST", "/_matrix/client/v3/createRoom", ta, {"preset": "private_chat", "name": "big"})
    if status != 200:
        raise SystemExit(f"FAIL: createRoom: {status} {r}")
    room = r["room_id"]

    # One PUT per state event (createRoom's initial_state with 2,000 events did not finish in
    # minutes); a few at a time, as Synapse serialises them per room anyway.
    def put_state(i):
        return i, call(a, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/{STATE_TYPE}/k{i}", ta,
                       {"filler": "x" * 200, "i": i}, timeout=300)
    with ThreadPoolExecutor(4) as pool:
        for i, (st, r) in pool.map(put_state, range(n_state)):
            if st != 200:
                raise SystemExit(f"FAIL: state event {i}: {st} {r}")
    log(f"alice created {room} with {n_state} extra state events in {time.time() - t0:.1f}s")
    t1 = time.time()
    # Messages before big-1: the /messages page that reaches big-1 makes B's Synapse backfill
    # the 100 events before it. Were those alice's 2,000 state events, B would ask A for
    # /state_ids at nearly every one of them (15-30 s each here): pages of messages instead.
    for i in range(1, PRE_MESSAGES + 1):
        status, r = call(a, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/p{i}", ta,
                         {"msgtype": "m.text", "body": f"pre-{i}"})
        if status != 200:
            raise SystemExit(f"FAIL: message pre-{i}: {status} {r}")
    for i in range(1, n_msg + 1):
        # ~450 random base64 characters: as incompressible as chat text gets after zstd, so
        # 100 events (one /backfill) are ~60 KB, more than 32 reply SURBs carry.
        text = f"big-{i} " + base64.b64encode(os.urandom(330)).decode()
        status, r = call(a, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/b{i}", ta,
                         {"msgtype": "m.text", "body": text})
        if status != 200:
            raise SystemExit(f"FAIL: message {i}: {status} {r}")
    log(f"alice sent big-1..big-{n_msg} in {time.time() - t1:.1f}s (bob's server has none of them)")
    status, r = call(a, "POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", ta, {"user_id": bob}, timeout=180)
    if status != 200:
        raise SystemExit(f"FAIL: invite: {status} {r}")
    json.dump({"a": a, "b": b, "ta": ta, "tb": tb, "alice": alice, "bob": bob, "room": room,
               "n_state": n_state}, open(state_path, "w"))
    figure("prepare", time.time() - t0, state_events=n_state, messages=n_msg)


def state_events(s, token_key, base_key):
    status, r = call(s[base_key], "GET", f"/_matrix/client/v3/rooms/{q(s['room'])}/state", s[token_key], timeout=600)
    return r if status == 200 and isinstance(r, list) else None


def join(state_path):
    s = load(state_path)
    b, tb, room = s["b"], s["tb"], s["room"]

    def invited():
        st, r = call(b, "GET", "/_matrix/client/v3/sync?timeout=0", tb)
        return st == 200 and room in r.get("rooms", {}).get("invite", {})
    until("bob's invite", 120, invited)
    t0 = time.time()
    status, r = call(b, "POST", f"/_matrix/client/v3/join/{q(room)}", tb, {}, timeout=1800)
    joined = time.time() - t0
    if status != 200:
        raise SystemExit(f"FAIL: bob's join of a room with {s['n_state']} state events: {status} {r}")
    log(f"bob joined in {joined:.1f}s (make_join, then send_join with the room's whole state)")
    # The join is a partial-state one (Synapse asks to omit members); the room state is
    # complete once B's Synapse has resynced it. Bob must see every one of alice's events.
    want = s["n_state"]

    def complete():
        evs = state_events(s, "tb", "b") or []
        ours = [e for e in evs if e.get("type") == STATE_TYPE]
        members = [e for e in evs if e.get("type") == "m.room.member"
                   and e.get("content", {}).get("membership") == "join"]
        return (len(ours), len(members)) if len(ours) == want and len(members) == 2 else None
    n, members = until(f"bob seeing all {want} state events", 600, complete, every=2)
    last = call(b, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/{STATE_TYPE}/k{want - 1}", tb)
    if last[0] != 200 or last[1].get("i") != want - 1:
        raise SystemExit(f"FAIL: state event k{want - 1} on B: {last}")
    total = time.time() - t0
    log(f"bob sees all {n} {STATE_TYPE} state events and {members} joined members "
        f"{total:.1f}s after asking to join")
    figure("send_join", joined, state_events=n, state_complete_s=f"{total:.1f}")


def fed_state(state_path, proxy, ca, key_path):
    """GET /_matrix/federation/v1/state as hs-b would send it, through B's sidecar."""
    from signedjson.key import read_signing_keys
    from signedjson.sign import sign_json

    s = load(state_path)
    # An event of A's that B is allowed to see the state at: a message after bob joined.
    status, r = call(s["a"], "PUT", f"/_matrix/client/v3/rooms/{q(s['room'])}/send/m.room.message/after-join",
                     s["ta"], {"msgtype": "m.text", "body": "after bob's join"})
    if status != 200:
        raise SystemExit(f"FAIL: message after join: {status} {r}")
    event_id = r["event_id"]
    origin, destination = "hs-b.spore.test", "hs-a.spore.test"
    uri = f"/_matrix/federation/v1/state/{q(s['room'])}?event_id={q(event_id)}"
    key = read_signing_keys(open(key_path))[0]
    signed = sign_json({"method": "GET", "uri": uri, "origin": origin, "destination": destination}, origin, key)
    key_id = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][key_id]
    auth = f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{sig}"'
    ctx = ssl.create_default_context(cafile=ca)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": f"http://{proxy}"}),
        urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(f"https://{destination}:8448{uri}", headers={"Authorization": auth})
    t0 = time.time()
    try:
        with opener.open(req, timeout=1800) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"FAIL: /state through B's sidecar: {e.code} {e.read()[:300]!r}")
    took = time.time() - t0
    body = json.loads(raw)
    ours = [p for p in body.get("pdus", []) if p.get("type") == STATE_TYPE]
    if len(ours) != s["n_state"]:
        raise SystemExit(f"FAIL: /state answer has {len(ours)} {STATE_TYPE} events, expected {s['n_state']}")
    log(f"/state through B's sidecar: {len(body['pdus'])} state events and {len(body.get('auth_chain', []))} "
        f"auth events, {len(raw)} bytes, in {took:.1f}s")
    figure("state", took, bytes=len(raw), pdus=len(body["pdus"]))


def backfill(state_path, n_msg, timeout):
    s = load(state_path)
    want = [f"big-{i}" for i in range(1, n_msg + 1)]
    t0 = time.time()
    pages = 0

    def all_there():
        nonlocal pages
        got, start = [], None
        for _ in range(200):
            qs = {"dir": "b", "limit": "100"}
            if start:
                qs["from"] = start
            status, r = call(s["b"], "GET", f"/_matrix/client/v3/rooms/{q(s['room'])}/messages?"
                             + urllib.parse.urlencode(qs), s["tb"], timeout=300)
            pages += 1
            if status != 200:
                return None
            got += [ev["content"].get("body", "").split(" ")[0] for ev in r.get("chunk", [])
                    if ev.get("type") == "m.room.message" and ev["content"].get("body", "").startswith("big-")]
            if len(got) >= n_msg or not r.get("end") or not r.get("chunk"):
                break
            start = r["end"]
        return list(reversed(got)) if len(got) >= n_msg else None
    got = until(f"all {n_msg} earlier messages on B", timeout, all_there, every=1)
    took = time.time() - t0
    if got != want:
        raise SystemExit(f"FAIL: bob's history has {len(got)} messages, not big-1..big-{n_msg} in order once")
    log(f"bob paged back through all {n_msg} messages sent before he joined, in order, once "
        f"({pages} /messages calls) in {took:.1f}s")
    figure("backfill", took, messages=n_msg, pages=pages)


def media(a, b, size):
    s = {"a": a, "b": b, "ta": login(a, "alice")[0], "tb": login(b, "bob")[0]}
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(s["a"] + "/_matrix/media/v3/upload?filename=big.bin", data=data, method="POST",
                                 headers={"Authorization": "Bearer " + s["ta"],
                                          "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=300) as r:
        mxc = json.loads(r.read())["content_uri"]
    server, media_id = mxc[len("mxc://"):].split("/", 1)
    log(f"alice uploaded {size} random bytes to A: {mxc}")
    # timeout_ms: how long B waits for media still being uploaded (at most 60 s); the
    # federation request itself has Synapse's federation client timeout.
    url = f"{s['b']}/_matrix/client/v1/media/download/{server}/{media_id}?timeout_ms=60000"
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + s["tb"]})
    t0 = time.time()
    try:
        with urllib.request.urlopen(req, timeout=1800) as r:
            got = r.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"FAIL: bob's download through B after {time.time() - t0:.1f}s: {e.code} {e.read()[:300]!r}")
    took = time.time() - t0
    if len(got) != size or hashlib.sha256(got).hexdigest() != digest:
        raise SystemExit(f"FAIL: bob got {len(got)} bytes, sha256 {hashlib.sha256(got).hexdigest()}, "
                         f"expected {size}, {digest}")
    log(f"bob downloaded the {size} bytes through B (federation media from A through Spore) in {took:.1f}s; "
        f"sha256 matches")
    figure("media", took, bytes=size, sha256=digest[:16])


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prepare":
        prepare(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "join":
        join(args[0])
    elif cmd == "state":
        fed_state(*args)
    elif cmd == "backfill":
        backfill(args[0], int(args[1]), int(args[2]))
    elif cmd == "media":
        media(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(__doc__)
