#!/usr/bin/env python3
"""Client-server side of the Synapse interop test (called by run.sh; stdlib only).

Subcommands:
  setup STATE A_URL B_URL [C_URL]  log in alice@A and bob@B (and carol@C), alice creates a
                               room and invites bob (and carol), they join, each sends a
                               message that every other server shows; writes STATE (json)
  send STATE N [PREFIX [FIRST]]  alice sends N messages "offline-1".."offline-N"
                               ("PREFIX-FIRST".."PREFIX-(FIRST+N-1)")
  check STATE N TIMEOUT [UP_AT [WHO [PREFIX]]]  bob's (WHO's: a, b, c) timeline gets all N
                               (offline- or PREFIX-), in order, without duplicates;
                               reports the time from UP_AT (epoch s) and the arrival order
  say STATE FROM TO TEXT       FROM's user (a/b) sends TEXT, TO's user sees it
  watch OUT                    append `ss -tnp` snapshots to OUT every 0.2 s until killed
  conns OUT PIDS               check the snapshots: every outbound TCP connection of each
                               Synapse goes to its own sidecar's proxy, never to the other
"""
import json
import os
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


def join_invited(url, token, user, room):
    """USER sees the invite on its server and joins (make_join/send_join through the sidecars)."""
    def invited():
        s, r = call(url, "GET", "/_matrix/client/v3/sync?timeout=0", token)
        return s == 200 and room in r.get("rooms", {}).get("invite", {})
    until(f"{user}'s invite", 120, invited)
    log(f"{user} sees the invite")
    t0 = time.time()
    until(f"{user}'s join", 180, lambda: (lambda s_r: s_r if s_r[0] == 200 else None)(
        call(url, "POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", token, {}, timeout=180)), every=3)
    log(f"{user} joined {room} in {time.time() - t0:.1f}s (make_join/send_join -> A through the sidecars)")


def setup(state_path, a, b, c=None):
    ta, alice = login(a, "alice")
    tb, bob = login(b, "bob")
    tc, carol = login(c, "carol") if c else (None, None)
    log(f"logged in {alice} on A and {bob} on B" + (f" and {carol} on C" if c else ""))
    invite = [bob] + ([carol] if c else [])
    status, r = call(a, "POST", "/_matrix/client/v3/createRoom", ta,
                     {"preset": "private_chat", "name": "spore", "invite": invite}, timeout=180)
    if status != 200:
        raise SystemExit(f"FAIL: createRoom + invite over federation: {status} {r}")
    room = r["room_id"]
    log(f"alice created {room} and invited {', '.join(invite)} (the invites went from A through the sidecars)")
    # Optional: a bigger room state, to probe how large a send_join response Spore can carry.
    extra = int(os.environ.get("SPORE_SYNAPSE_EXTRA_STATE", "0"))
    for i in range(extra):
        st, r = call(a, "PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/state/org.spore.test/k{i}",
                     ta, {"filler": "x" * 200, "i": i})
        if st != 200:
            raise SystemExit(f"FAIL: state event {i}: {st} {r}")
    if extra:
        log(f"alice added {extra} extra state events (~300 bytes each) before bob joins")

    join_invited(b, tb, "bob", room)
    if c:
        join_invited(c, tc, "carol", room)
    state = {"a": a, "b": b, "ta": ta, "tb": tb, "room": room}
    if c:
        state.update({"c": c, "tc": tc})
    servers = [k for k in "abc" if k in state]
    for frm in servers:
        text = f"hello from {frm.upper()}"
        t0 = time.time()
        send_text(state[frm], state["t" + frm], room, text)
        for to in servers:
            if to != frm:
                until(f"{text!r} on {to.upper()}", 120,
                      lambda: text in (timeline(state[to], state["t" + to], room) or []), every=0.5)
                log(f"{to.upper()} received {text!r} ({time.time() - t0:.1f}s after it was sent)")
    json.dump(state, open(state_path, "w"))


def send_many(state_path, n, prefix="offline", first=1):
    s = json.load(open(state_path))
    last = first + n - 1
    for i in range(first, last + 1):
        send_text(s["a"], s["ta"], s["room"], f"{prefix}-{i}")
    log(f"alice sent {prefix}-{first}..{prefix}-{last} while B is down")


def profile(state_path):
    """While B is offline: a request/response call A -> B must fail with a Matrix error."""
    s = json.load(open(state_path))
    t0 = time.time()
    status, r = call(s["a"], "GET", "/_matrix/client/v3/profile/" + urllib.parse.quote("@bob:hs-b.spore.test"),
                     s["ta"], timeout=120)
    log(f"alice asked for bob's profile while B is offline: {status} {r.get('errcode')} "
        f"after {time.time() - t0:.1f}s")
    if status < 400 or "errcode" not in r:
        raise SystemExit(f"FAIL: expected a Matrix error, got {status} {r}")


def check(state_path, n, timeout, up_at=None, who="b", prefix="offline"):
    """Polls bob's timeline every 0.25 s until all N offline messages are there.

    Reports the catch-up time counted from UP_AT (when B's Synapse first answered /health),
    the time the first one showed up, and the order in which they became visible (each poll's
    new arrivals as a group); fails on a wrong final order or a duplicate.
    """
    s = json.load(open(state_path))
    want = [f"{prefix}-{i}" for i in range(1, n + 1)]
    t0 = float(up_at) if up_at else time.time()
    seen, groups, first = set(), [], None

    def complete():
        nonlocal first
        got = [x for x in (timeline(s[who], s["t" + who], s["room"]) or []) if x and x.startswith(prefix + "-")]
        new = [x for x in got if x not in seen]
        if new:
            if first is None:
                first = time.time() - t0
            groups.append((time.time() - t0, new))
            seen.update(new)
        return got if len(set(got)) >= n else None
    got = until(f"all {n} messages on {who.upper()}", timeout, complete, every=0.25)
    took = time.time() - t0
    if got != want:
        raise SystemExit(f"FAIL: {who.upper()}'s timeline is {got}, expected {want} (order or duplicates)")
    if who != "b" or not up_at:
        log(f"{who.upper()}'s timeline has all {n} messages in order without duplicates")
        return
    order = "; ".join(f"+{t:.1f}s: {x[0].split('-')[1]}" + (f"..{x[-1].split('-')[1]}" if len(x) > 1 else "")
                      for t, x in groups)
    log(f"arrival order on B (new messages per 0.25 s poll, seconds after B's Synapse was up): {order}")
    log(f"B's timeline has all {n} messages in order without duplicates")
    print(f"CATCHUP n={n} first={first:.2f}s all={took:.2f}s", flush=True)
    log(f"catch-up: first visible {first:.2f}s, all {n} visible {took:.2f}s after B's Synapse "
        f"answered /health (target: 3 s; not asserted)")


def say_and_hear(state_path, frm, to, text):
    """FROM (a or b) sends TEXT, TO's user sees it (a message the other way after a restart)."""
    s = json.load(open(state_path))
    t0 = time.time()
    send_text(s[frm], s["t" + frm], s["room"], text)
    until(f"{text!r} on {to}", 120, lambda: text in (timeline(s[to], s["t" + to], s["room"]) or []), every=0.5)
    log(f"{frm.upper()} -> {to.upper()}: {text!r} visible after {time.time() - t0:.1f}s")


def watch(out):
    with open(out, "a") as f:
        while True:
            conns = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
            listens = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True).stdout
            f.write(f"@ {time.time():.3f}\n{conns}" + "".join("L " + l + "\n" for l in listens.splitlines()))
            f.flush()
            time.sleep(0.2)


def _pid(line):
    i = line.find("pid=")
    return line[i + 4:line.index(",", i)] if i >= 0 else None


def _port(addr):
    return int(addr.rsplit(":", 1)[1])


def conns(out, pids_file):
    """Checks, from the snapshots, who each process opened connections to.

    PIDS lines: KIND NODE PID, KIND one of synapse, sidecar, gateway (loopback stand-in, not
    checked), testnet (the relays).
    - a Synapse's outbound connections all go to a listening port of its own sidecar;
    - a sidecar's outbound connections all go to its own Synapse or to a relay.
    """
    procs = {}
    for line in open(pids_file):
        kind, node, pid = line.split()
        procs[pid] = (kind, node)
    listening = {}  # pid -> ports
    lines = [l for l in open(out) if not l.startswith("@")]
    for line in lines:
        if line.startswith("L "):
            if line.count("pid=") > 1:
                continue  # a child between fork and exec holds its parent's sockets for a moment
            parts = line[2:].split()
            pid = _pid(line)
            if pid in procs and len(parts) >= 4:
                listening.setdefault(pid, set()).add(_port(parts[3]))

    def ports_of(kind, node=None):
        return {p for pid, (k, n) in procs.items() if k == kind and (node is None or n == node)
                for p in listening.get(pid, set())}
    owner_of_port = {p: f"{k} {n}" for pid, (k, n) in procs.items() for p in listening.get(pid, set())}
    outbound, violations, seen = {}, [], set()
    for line in lines:
        if line.startswith("L ") or "pid=" not in line:
            continue
        parts = line.split()
        local, peer = parts[3], parts[4]
        pid = _pid(line)
        if pid not in procs:
            continue
        kind, node = procs[pid]
        if _port(local) in listening.get(pid, set()):
            continue  # accepted, not opened by this process
        if (pid, local, peer) in seen:
            continue
        seen.add((pid, local, peer))
        who = owner_of_port.get(_port(peer), "unknown")
        outbound.setdefault((kind, node), {}).setdefault(who, set()).add(peer)
        if kind == "synapse":
            allowed = ports_of("sidecar", node) | ports_of("gateway", node)
        elif kind == "sidecar":
            allowed = ports_of("synapse", node) | ports_of("testnet")
        else:
            continue
        if _port(peer) not in allowed or not peer.startswith("127.0.0.1:"):
            violations.append(f"{kind} {node} (pid {pid}) connected to {peer} ({who})")
    for (kind, node), peers in sorted(outbound.items()):
        if kind in ("synapse", "sidecar", "gateway"):
            summary = ", ".join(f"{who}: {len(addrs)} connection(s)" for who, addrs in sorted(peers.items()))
            log(f"{kind} {node} opened TCP connections to -> {summary}")
    if violations:
        raise SystemExit("FAIL: forbidden connections:\n  " + "\n  ".join(violations))
    if not any(k == "synapse" for (k, _) in outbound):
        raise SystemExit("FAIL: no outbound Synapse connection seen at all (is ss working?)")
    log("OK: each Synapse only ever connected to its own sidecar"
        + ("; each sidecar only to its own Synapse and the relays" if any(k == "sidecar" for (k, _) in outbound) else "")
        + "; no connection between the Synapses")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "setup":
        setup(*args)
    elif cmd == "send":
        send_many(args[0], int(args[1]), *args[2:3], *[int(a) for a in args[3:4]])
    elif cmd == "profile":
        profile(args[0])
    elif cmd == "check":
        check(args[0], int(args[1]), int(args[2]), *args[3:6])
    elif cmd == "say":
        say_and_hear(*args)
    elif cmd == "watch":
        watch(args[0])
    elif cmd == "conns":
        conns(args[0], args[1])
    else:
        raise SystemExit(__doc__)
