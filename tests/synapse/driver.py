#!/usr/bin/env python3
"""Client-server side of the Synapse interop test (called by run.sh; stdlib only).

Subcommands:
  setup STATE A_URL B_URL      log in alice@A and bob@B, alice creates a room and invites bob,
                               bob joins, both exchange a message; writes STATE (json)
  send STATE N                 alice sends N messages "offline-1".."offline-N"
  check STATE N TIMEOUT        bob's timeline gets all N, in order, without duplicates
  watch OUT                    append `ss -tnp` snapshots to OUT every 0.2 s until killed
  conns OUT PIDS               check the snapshots: every outbound TCP connection of each
                               Synapse goes to its own sidecar's proxy, never to the other
"""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

PASSWORD = "spore-test-password"


def log(msg):
    print(f"[driver {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def call(base, method, path, token=None, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


def login(base, user):
    status, r = call(base, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": PASSWORD,
    })
    if status != 200:
        raise SystemExit(f"login {user} failed: {status} {r}")
    return r["access_token"], r["user_id"]


def until(what, timeout, fn, every=1.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise SystemExit(f"FAIL: timed out after {timeout}s waiting for {what} (last: {last})")


def timeline(base, token, room):
    """Message bodies in the room, oldest first (whole history, paginated)."""
    bodies, start = [], None
    for _ in range(50):
        q = {"dir": "b", "limit": "100"}
        if start:
            q["from"] = start
        status, r = call(base, "GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages?"
                          + urllib.parse.urlencode(q), token)
        if status != 200:
            return None
        for ev in r.get("chunk", []):
            if ev.get("type") == "m.room.message":
                bodies.append(ev["content"].get("body"))
        if not r.get("end") or not r.get("chunk"):
            break
        start = r["end"]
    return list(reversed(bodies))


def send_text(base, token, room, text):
    txn = f"t{time.time_ns()}"
    status, r = call(base, "PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/{txn}",
                     token, {"msgtype": "m.text", "body": text})
    if status != 200:
        raise SystemExit(f"FAIL: send {text!r}: {status} {r}")


def setup(state_path, a, b):
    ta, alice = login(a, "alice")
    tb, bob = login(b, "bob")
    log(f"logged in {alice} on A and {bob} on B")
    status, r = call(a, "POST", "/_matrix/client/v3/createRoom", ta,
                     {"preset": "private_chat", "name": "spore", "invite": [bob]}, timeout=180)
    if status != 200:
        raise SystemExit(f"FAIL: createRoom + invite over federation: {status} {r}")
    room = r["room_id"]
    log(f"alice created {room} and invited {bob} (the invite went A -> B through the sidecars)")

    def invited():
        s, r = call(b, "GET", "/_matrix/client/v3/sync?timeout=0", tb)
        return s == 200 and room in r.get("rooms", {}).get("invite", {})
    until("bob's invite", 120, invited)
    log("bob sees the invite on B")
    t0 = time.time()
    status, r = until("bob's join", 180, lambda: (lambda s_r: s_r if s_r[0] == 200 else None)(
        call(b, "POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", tb, {}, timeout=180)), every=3)
    log(f"bob joined {room} in {time.time() - t0:.1f}s (make_join/send_join B -> A through the sidecars)")

    send_text(a, ta, room, "hello from A")
    until("A's message on B", 120, lambda: "hello from A" in (timeline(b, tb, room) or []))
    log("B received 'hello from A'")
    send_text(b, tb, room, "hello from B")
    until("B's message on A", 120, lambda: "hello from B" in (timeline(a, ta, room) or []))
    log("A received 'hello from B'")
    json.dump({"a": a, "b": b, "ta": ta, "tb": tb, "room": room}, open(state_path, "w"))


def send_many(state_path, n):
    s = json.load(open(state_path))
    for i in range(1, n + 1):
        send_text(s["a"], s["ta"], s["room"], f"offline-{i}")
    log(f"alice sent offline-1..offline-{n} while B is down")


def check(state_path, n, timeout):
    s = json.load(open(state_path))
    want = [f"offline-{i}" for i in range(1, n + 1)]
    t0 = time.time()

    def complete():
        got = [x for x in (timeline(s["b"], s["tb"], s["room"]) or []) if x and x.startswith("offline-")]
        return got if len(set(got)) >= n else None
    got = until(f"all {n} messages on B", timeout, complete, every=2)
    if got != want:
        raise SystemExit(f"FAIL: B's timeline is {got}, expected {want} (order or duplicates)")
    log(f"B's timeline has all {n} messages in order without duplicates ({time.time() - t0:.1f}s after B came back)")


def watch(out):
    with open(out, "a") as f:
        while True:
            snap = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
            f.write(f"@ {time.time():.3f}\n{snap}")
            f.flush()
            time.sleep(0.2)


def conns(out, pids_file):
    # pids file lines: LABEL PID PROXY_PORT LISTEN_PORT[,LISTEN_PORT...]
    synapses = {}
    for line in open(pids_file):
        label, pid, proxy, listen = line.split()
        synapses[pid] = (label, int(proxy), {int(p) for p in listen.split(",")})
    all_listen = {p: lab for (lab, _, ports) in synapses.values() for p in ports}
    outbound, violations, seen = {}, [], set()
    for line in open(out):
        if line.startswith("@") or "pid=" not in line:
            continue
        parts = line.split()
        local, peer = parts[3], parts[4]
        for pid, (label, proxy, listen) in synapses.items():
            if f"pid={pid}," not in line:
                continue
            lport, pport = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
            if lport in listen:
                continue  # inbound: its own sidecar delivering, or the test's client API calls
            key = (label, local, peer)
            if key in seen:
                continue
            seen.add(key)
            outbound.setdefault(label, set()).add(peer)
            if pport != proxy or not peer.startswith("127.0.0.1:"):
                other = all_listen.get(pport)
                violations.append(f"synapse {label} (pid {pid}) connected to {peer}"
                                  + (f" = synapse {other}'s listener" if other else ""))
    for label in sorted({v[0] for v in synapses.values()}):
        log(f"synapse {label}: outbound TCP connections to {sorted(outbound.get(label, set()))}")
    if violations:
        raise SystemExit("FAIL: direct connections:\n  " + "\n  ".join(violations))
    if not outbound:
        raise SystemExit("FAIL: no outbound connection seen at all (is ss working?)")
    log("OK: every outbound TCP connection of each Synapse went to its own sidecar; none between the Synapses")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "setup":
        setup(*args)
    elif cmd == "send":
        send_many(args[0], int(args[1]))
    elif cmd == "check":
        check(args[0], int(args[1]), int(args[2]))
    elif cmd == "watch":
        watch(args[0])
    elif cmd == "conns":
        conns(args[0], args[1])
    else:
        raise SystemExit(__doc__)
