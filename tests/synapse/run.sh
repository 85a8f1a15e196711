#!/usr/bin/env bash
# Three (or two) unmodified Synapse homeservers (from PyPI) federating only through Spore sidecars.
#
#   bash tests/synapse/run.sh
#
# hs-a.spore.test and hs-b.spore.test run on loopback, each with HTTPS_PROXY pointing at its
# own sidecar. There is no DNS for *.spore.test: a Synapse can only reach the other one through
# its sidecar's CONNECT proxy. The script registers alice@A and bob@B, alice creates a room and
# invites bob, bob joins, both exchange a message; then B (Synapse and sidecar) stops, alice
# sends 30 messages, B comes back and all 30 must appear in bob's timeline, in order, once,
# with no get_missing_events request at A; the time from B's Synapse answering /health to the
# last one being visible is printed (the 3 s target is reported, not asserted: 2 shared cores).
# Only A's sidecar lists B under [peers]; B's learns A's address from A's first bundle.
# Throughout, `ss -tnp` snapshots check that each Synapse's outbound connections only ever go
# to its own sidecar.
#
# Environment:
#   SPORE_SYNAPSE_SERVERS=3 (default): a third homeserver, hs-c.spore.test with carol: alice
#                        invites bob and carol, each server's message must show on the other
#                        two, carol (online) gets the 30 messages too; 2: only A and B (the
#                        loopback carrier needs 2)
#   SPORE_SYNAPSE_OFFLINE=N  messages alice sends while B is down (default 30)
#   SPORE_SYNAPSE_VENV   where the venv lives (default: $CARGO_TARGET_DIR or target/, /synapse-venv)
#   SPORE_SYNAPSE_KEEP=1 keep the run directory (logs, configs) after success
#   SPORE_SYNAPSE_EXTRA_STATE=N  N extra state events in the room before bob joins (a bigger
#                        send_join answer through the reply SURBs)
#   SPORE_SYNAPSE_BIG=1  large answers (send_join, /state, backfill, media) instead of the
#                        offline part: run tests/synapse/big.sh, which sets it
#   SPORE_SYNAPSE_REPLY_SURBS=N  reply SURBs per request/response call (the testnet uses 32)
#   SPORE_SYNAPSE_CARRIER=spore (default): a Spore testnet (relays: entry/mailbox + 3 mix
#                        layers) and `spore-sidecar` with `https_proxy_listen`
#   SPORE_SYNAPSE_CARRIER=loopback: the same proxy/keys/delivery code, bundles carried directly
#                        between two `spore-loopback-gateway`s (isolates homeserver issues)
#   SPORE_SYNAPSE_RELAY_LOSS=1 (default with the spore carrier): each server's address names
#                        two mailbox relays, the first a `spore-relay` process of its own; at the
#                        end B's first relay is SIGKILLed and its data deleted (see that block);
#                        0: one mailbox relay each, no such scenario;
#                        SPORE_SYNAPSE_LOSS_BEFORE / _AFTER: messages sent before the kill
#                        (default 10) and while the relay is dead (default 5)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${SPORE_SYNAPSE_VENV:-$TARGET/synapse-venv}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/spore-synapse.XXXXXX")
DRIVER="python3 -B $ROOT/tests/synapse/driver.py"
SECRET=spore-test-shared-secret
OFFLINE=${SPORE_SYNAPSE_OFFLINE:-30}
START=$(date +%s)
# Large answers (send_join, /state, backfill, media): tests/synapse/big.sh.
if [ "${SPORE_SYNAPSE_BIG:-}" = 1 ]; then . "$ROOT/tests/synapse/big.sh"; fi

say() { echo "[run.sh $(date +%H:%M:%S)] $*"; }
loud_skip() {
    echo
    echo "##############################################################################"
    echo "##  SKIPPED: Synapse interop test — $*"
    echo "##############################################################################"
    echo
    exit 0
}

# ---------------------------------------------------------------- Synapse from PyPI, in a venv
if ! [ -x "$VENV/bin/synapse_homeserver" ]; then
    if ! python3 -c "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/matrix-synapse/', timeout=15)" 2>/dev/null; then
        loud_skip "PyPI is unreachable, cannot install matrix-synapse"
    fi
    say "installing matrix-synapse into $VENV (first run only)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q matrix-synapse
fi
say "synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)')"

# ---------------------------------------------------------------- the sidecars
CARRIER=${SPORE_SYNAPSE_CARRIER:-spore}
say "building the sidecar ($CARRIER)"
(cd "$ROOT" && cargo build -q -p spore-sidecar --bin spore-sidecar \
    && cargo build -q -p spore-tests --bin spore-loopback-gateway --bin spore-testnet \
    && cargo build -q -p spore-relay --bin spore-relay)
GATEWAY="$TARGET/debug/spore-loopback-gateway"
SIDECAR="$TARGET/debug/spore-sidecar"
TESTNET="$TARGET/debug/spore-testnet"

# Ports: a block chosen from the PID so parallel runs do not collide, below the kernel's
# ephemeral range (32768 and up by default), where any outgoing connection on the machine
# may hold a port and make a Synapse fail to listen.
BASE=$((10000 + ($$ % 1500) * 15))
A_CLIENT=$((BASE + 0)); A_FED=$((BASE + 1)); A_PROXY=$((BASE + 2)); A_BUNDLE=$((BASE + 3))
B_CLIENT=$((BASE + 5)); B_FED=$((BASE + 6)); B_PROXY=$((BASE + 7)); B_BUNDLE=$((BASE + 8))
C_CLIENT=$((BASE + 10)); C_FED=$((BASE + 11)); C_PROXY=$((BASE + 12))
RELAY_LOSS=${SPORE_SYNAPSE_RELAY_LOSS:-1}; [ "$CARRIER" = loopback ] && RELAY_LOSS=0
SERVERS=${SPORE_SYNAPSE_SERVERS:-3}
[ "$CARRIER" = loopback ] && SERVERS=${SPORE_SYNAPSE_SERVERS:-2}
case "$SERVERS" in 2) ;; 3) [ "$CARRIER" != loopback ] || { say "SPORE_SYNAPSE_SERVERS=3 needs the spore carrier"; exit 1; } ;;
    *) say "SPORE_SYNAPSE_SERVERS must be 2 or 3"; exit 1 ;; esac

PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ $rc -ne 0 ]; then
        say "FAILED (exit $rc); logs kept in $RUN"
        for f in "$RUN"/*/homeserver.log; do echo "--- tail $f"; grep -E "WARNING|ERROR" "$f" | tail -15 || true; done
        for f in "$RUN"/*.sidecar.log; do echo "--- tail $f"; tail -15 "$f"; done
    elif [ "${SPORE_SYNAPSE_KEEP:-}" = 1 ]; then
        say "run directory kept: $RUN"
    else
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT

start_sidecar() { # NAME DIR PROXY BUNDLE FED PEER_NAME PEER_BUNDLE
    if [ "$CARRIER" = loopback ]; then
        RUST_LOG="${RUST_LOG:-info},spore_sidecar::proxy=debug" NO_COLOR=1 "$GATEWAY" --server-name "$1" --data-dir "$2/sidecar" \
            --homeserver "http://127.0.0.1:$5" --proxy-listen "127.0.0.1:$3" \
            --bundle-listen "127.0.0.1:$4" --peer "$6=http://127.0.0.1:$7" \
            >>"$RUN/$1.sidecar.log" 2>&1 &
        CA="$2/sidecar/ca.pem"
    else
        RUST_LOG="${RUST_LOG:-info},spore_sidecar::proxy=debug,spore_sidecar::sidecar=debug,spore_sidecar::inbox=debug" NO_COLOR=1 "$SIDECAR" run -c "$RUN/net/$1/sidecar.toml" \
            >>"$RUN/$1.sidecar.log" 2>&1 &
        CA="$RUN/net/$1/data/ca/ca.pem"
    fi
    PIDS+=($!)
    LAST_PID=$!
    echo "$([ "$CARRIER" = loopback ] && echo gateway || echo sidecar) ${1%%.*} $LAST_PID" >>"$RUN/pids"
    for _ in $(seq 300); do
        if [ -f "$CA" ]; then
            mkdir -p "$2/sidecar"
            [ "$CA" -ef "$2/sidecar/ca.pem" ] || ln -sf "$CA" "$2/sidecar/ca.pem"
            return 0
        fi
        kill -0 $LAST_PID 2>/dev/null || break
        sleep 0.1
    done
    say "sidecar $1 did not start"; tail -20 "$RUN/$1.sidecar.log"; exit 1
}

# ---------------------------------------------------------------- the homeservers
configure() { # NAME DIR CLIENT FED
    mkdir -p "$2"
    # (from inside DIR: the generated log config puts homeserver.log in the working directory)
    (cd "$2" && "$VENV/bin/python" -m synapse.app.homeserver --server-name "$1" \
        --config-path "$2/base.yaml" --data-directory "$2" --generate-config --report-stats=no >/dev/null)
    cat >"$2/spore.yaml" <<EOF
listeners:
  - port: $3
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources: [{names: [client], compress: false}]
  - port: $4
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources: [{names: [federation], compress: false}]
registration_shared_secret: "$SECRET"
enable_registration: false
# Federation leaves only through HTTPS_PROXY (the sidecar), whose local CA signs every
# destination's certificate; no notary: peer keys come from the sidecar's verified cache.
federation_verify_certificates: true
federation_custom_ca_list: ["$2/sidecar/ca.pem"]
trusted_key_servers: []
suppress_key_server_warning: true
ip_range_whitelist: ['127.0.0.1']
# Small and quiet for 2 cores.
caches: {global_factor: 0.2}
presence: {enabled: false}
url_preview_enabled: false
rc_message: {per_second: 1000, burst_count: 1000}
rc_joins: {local: {per_second: 1000, burst_count: 1000}, remote: {per_second: 1000, burst_count: 1000}}
rc_invites: {per_room: {per_second: 1000, burst_count: 1000}, per_user: {per_second: 1000, burst_count: 1000}}
rc_login: {address: {per_second: 1000, burst_count: 1000}, account: {per_second: 1000, burst_count: 1000}}
# A failed request (a slow answer on loaded shared cores) must not shut a destination out
# for Synapse's default 10 minutes: retry after seconds, as a test run lasts minutes.
federation: {destination_min_retry_interval: 2s, destination_retry_multiplier: 1.5, destination_max_retry_interval: 20s}
rc_federation: {window_size: 1000, sleep_limit: 1000, sleep_delay: 1, reject_limit: 1000, concurrent: 100}
EOF
}

start_synapse() { # LABEL DIR CLIENT FED PROXY
    HTTPS_PROXY="http://127.0.0.1:$5" https_proxy="http://127.0.0.1:$5" NO_PROXY= no_proxy= \
        "$VENV/bin/python" -m synapse.app.homeserver -c "$2/base.yaml" -c "$2/spore.yaml" \
        >>"$2/stdout.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    LAST_PID=$pid
    echo "synapse $1 $pid" >>"$RUN/pids"
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$3/health" >/dev/null 2>&1 && { UP_AT=$(date +%s.%N); say "synapse $1 up (pid $pid)"; return 0; }
        kill -0 $pid 2>/dev/null || { say "synapse $1 died"; tail -20 "$2/stdout.log"; exit 1; }
        sleep 0.2
    done
    say "synapse $1 did not come up"; exit 1
}

register() { # USER CLIENT
    "$VENV/bin/register_new_matrix_user" -u "$1" -p spore-test-password --no-admin -k "$SECRET" \
        "http://127.0.0.1:$2" >/dev/null
}

A=$RUN/hs-a; B=$RUN/hs-b; C=$RUN/hs-c
NAMES="hs-a.spore.test hs-b.spore.test"; [ "$SERVERS" = 3 ] && NAMES="$NAMES hs-c.spore.test"
for name in $NAMES; do
    if getent hosts "$name" >/dev/null 2>&1; then
        say "FAIL: $name resolves on this machine; the test needs it not to"; exit 1
    fi
done
say "$NAMES do not resolve: the only way between them is the sidecars"
configure hs-a.spore.test "$A" $A_CLIENT $A_FED
configure hs-b.spore.test "$B" $B_CLIENT $B_FED
[ "$SERVERS" = 3 ] && configure hs-c.spore.test "$C" $C_CLIENT $C_FED

$DRIVER watch "$RUN/ss.log" & PIDS+=($!)

if [ "$CARRIER" != loopback ]; then
    say "starting a Spore testnet (2 entry/mailbox relays, 3 mix layers$([ "$RELAY_LOSS" = 1 ] && echo "; each server also has a mailbox relay process of its own, the first of its two"))"
    "$TESTNET" --dir "$RUN/net" \
        --homeserver "hs-a.spore.test,http://127.0.0.1:$A_FED,127.0.0.1:$A_PROXY" \
        --homeserver "hs-b.spore.test,http://127.0.0.1:$B_FED,127.0.0.1:$B_PROXY" \
        --omit-peer hs-b.spore.test=hs-a.spore.test \
        $([ "$SERVERS" = 3 ] && echo --homeserver "hs-c.spore.test,http://127.0.0.1:$C_FED,127.0.0.1:$C_PROXY") \
        $([ "$RELAY_LOSS" = 1 ] && echo --relay-processes) \
        >>"$RUN/testnet.log" 2>&1 &
    PIDS+=($!)
    echo "testnet - $!" >>"$RUN/pids"
    for _ in $(seq 300); do [ -f "$RUN/net/ready" ] && break; sleep 0.1; done
    [ -f "$RUN/net/ready" ] || { say "testnet did not start"; cat "$RUN/testnet.log"; exit 1; }
    for f in "$RUN"/net/relays/*/pid; do # each server's own mailbox relay process
        [ -f "$f" ] || continue
        PIDS+=("$(cat "$f")"); n=$(basename "$(dirname "$f")"); echo "testnet relay-${n%%.*} $(cat "$f")" >>"$RUN/pids"
    done
    if [ -n "${SPORE_SYNAPSE_REPLY_SURBS:-}" ]; then
        sed -i "s/^reply_surbs = .*/reply_surbs = $SPORE_SYNAPSE_REPLY_SURBS/" "$RUN"/net/*/sidecar.toml
    fi
    if [ "${SPORE_SYNAPSE_BIG:-}" = 1 ]; then big_configure; fi
fi

start_sidecar hs-a.spore.test "$A" $A_PROXY $A_BUNDLE $A_FED hs-b.spore.test $B_BUNDLE
start_sidecar hs-b.spore.test "$B" $B_PROXY $B_BUNDLE $B_FED hs-a.spore.test $A_BUNDLE
B_SIDECAR=$LAST_PID
[ "$SERVERS" = 3 ] && start_sidecar hs-c.spore.test "$C" $C_PROXY - $C_FED - -
start_synapse hs-a "$A" $A_CLIENT $A_FED $A_PROXY
start_synapse hs-b "$B" $B_CLIENT $B_FED $B_PROXY
B_SYNAPSE=$LAST_PID
[ "$SERVERS" = 3 ] && start_synapse hs-c "$C" $C_CLIENT $C_FED $C_PROXY
say "$SERVERS Synapses up $(( $(date +%s) - START ))s after the start"
register alice $A_CLIENT
register bob $B_CLIENT
[ "$SERVERS" = 3 ] && register carol $C_CLIENT
C_URL=; [ "$SERVERS" = 3 ] && C_URL="http://127.0.0.1:$C_CLIENT"

# ---------------------------------------------------------------- online: invite, join, talk
peer_source() { # NODE PEER: configured, learned or nothing
    "$SIDECAR" peers -c "$RUN/net/$1/sidecar.toml" | awk -v p="$2" '$1 == p { print $2 }'
}
if [ "$CARRIER" != loopback ]; then
    # Peers without a table: only A's sidecar lists B; B's has no entry for A.
    [ "$(peer_source hs-a.spore.test hs-b.spore.test)" = configured ] && [ -z "$(peer_source hs-b.spore.test hs-a.spore.test)" ] \
        || { say "FAIL: expected [peers] on A's side only"; exit 1; }
    say "[peers]: A's sidecar lists B; B's sidecar has no entry for A"
fi
SETUP0=$(date +%s)
$DRIVER setup "$RUN/state.json" "http://127.0.0.1:$A_CLIENT" "http://127.0.0.1:$B_CLIENT" $C_URL
say "room set up, everyone joined and heard from everyone in $(( $(date +%s) - SETUP0 ))s"
if [ "$CARRIER" != loopback ]; then
    [ "$(peer_source hs-b.spore.test hs-a.spore.test)" = learned ] \
        || { say "FAIL: B's sidecar did not learn A's address"; "$SIDECAR" peers -c "$RUN/net/hs-b.spore.test/sidecar.toml"; exit 1; }
    say "B's sidecar learned A's Spore address from A's first bundle (spore-sidecar peers: learned); B -> A worked without configuration"
fi
if [ "${SPORE_SYNAPSE_BIG:-}" = 1 ]; then big_scenario; exit 0; fi

# ---------------------------------------------------------------- B offline: store and forward
say "stopping B (Synapse and sidecar)"
kill $B_SYNAPSE $B_SIDECAR
while kill -0 $B_SYNAPSE 2>/dev/null || kill -0 $B_SIDECAR 2>/dev/null; do sleep 0.2; done
count() { grep -c "$1" "$RUN/hs-a.spore.test.sidecar.log" || true; }
QUEUED0=$(count "transaction queued through spore"); ACKED0=$(count "stored at its recipient's mailbox relay")
$DRIVER profile "$RUN/state.json"
$DRIVER send "$RUN/state.json" $OFFLINE
if [ "$CARRIER" != loopback ]; then
    # Hold B down until every transaction A queued meanwhile is stored in B's mailbox relay.
    for _ in $(seq 600); do
        Q=$(( $(count "transaction queued through spore") - QUEUED0 ))
        K=$(( $(count "stored at its recipient's mailbox relay") - ACKED0 ))
        [ "$Q" -gt 0 ] && [ "$K" -ge "$Q" ] && break
        sleep 0.1
    done
    say "while B was offline: A's sidecar queued $Q transaction(s)$([ "$SERVERS" = 3 ] && echo " (for B and C)"); $K stored at their recipient's mailbox relay (SURB-acks)"
    [ "$Q" -gt 0 ] && [ "$K" -ge "$Q" ] || { say "FAIL: not everything reached B's mailbox"; exit 1; }
else
    sleep 2
fi
say "restarting B"
gme() { cat "$A/homeserver.log" $([ "$SERVERS" = 3 ] && echo "$C/homeserver.log") | grep -c "get_missing_events" || true; }
GME0=$(gme)
start_sidecar hs-b.spore.test "$B" $B_PROXY $B_BUNDLE $B_FED hs-a.spore.test $A_BUNDLE
start_synapse hs-b "$B" $B_CLIENT $B_FED $B_PROXY
$DRIVER check "$RUN/state.json" $OFFLINE 300 "$UP_AT" | tee "$RUN/check.out"
# Ordered hand-over: B gets A's transactions in send order, so it has no gap to repair.
GME=$(( $(gme) - GME0 ))
say "get_missing_events requests A's$([ "$SERVERS" = 3 ] && echo " and C's") Synapse saw during B's catch-up: $GME"
[ "$GME" -eq 0 ] || { say "FAIL: B asked A for missing events while catching up"; exit 1; }
# B's sidecar restarted: the address it learned for A is still there (data/peers.json).
$DRIVER say "$RUN/state.json" b a "back from B"
if [ "$SERVERS" = 3 ]; then
    # Carol was online all along: she has the 30 too, in order, once.
    $DRIVER check "$RUN/state.json" $OFFLINE 120 "" c
fi
if [ "$CARRIER" != loopback ]; then
    STALE=$(grep -c "caller has stopped waiting" "$RUN/hs-b.spore.test.sidecar.log" || true)
    [ "$STALE" -ge 1 ] || { say "FAIL: the profile query A gave up on was delivered to B late"; exit 1; }
    say "B's sidecar dropped $STALE request(s) whose caller had stopped waiting (the profile query), instead of delivering them late"
fi

# ---------------------------------------------------------------- losing a mailbox relay (issue 17)
# B's address names two mailbox relays: its own `spore-relay` process (the first, also B's
# entry relay) and one in the testnet process. B goes offline and alice sends LOSS_BEFORE
# messages; once A's sidecar says every copy is stored at both relays (its outbox is empty),
# B's first relay is SIGKILLed and its data folder deleted. Alice sends LOSS_AFTER more while
# it is dead (A's sidecar stores them at the second relay and keeps the copies owed to the
# first in its outbox). B comes back with its first relay still dead: all of them must show
# in bob's timeline, in order, once. One more A -> B message while it is dead; then the relay
# restarts with an empty disk (same keys and port): A's outbox drains, B sends again (its
# entry relay is back), and bob's timeline still has each message once.
if [ "$RELAY_LOSS" = 1 ]; then
    LOSS_BEFORE=${SPORE_SYNAPSE_LOSS_BEFORE:-10}; LOSS_AFTER=${SPORE_SYNAPSE_LOSS_AFTER:-5}
    B_RELAY=$RUN/net/relays/hs-b.spore.test
    last_pid() { awk -v k="$1" -v n="$2" '$1 == k && $2 == n { p = $3 } END { print p }' "$RUN/pids"; }
    since() { awk -v t="$1" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - t }'; }
    # A's outbox is empty and nothing was queued after it emptied: every copy of everything
    # A sent is stored at each of its recipient's mailbox relays.
    a_all_stored() {
        awk '/transaction queued through spore/ { q = 1 } /outbox empty/ { q = 0; e = 1 } END { exit !(e && !q) }' \
            "$RUN/hs-a.spore.test.sidecar.log"
    }
    wait_stored_once() { # Q0 K0: each transaction A queued since is stored at one relay at least
        for _ in $(seq 600); do
            Q=$(( $(count "transaction queued through spore") - $1 ))
            K=$(( $(count "stored at its recipient's mailbox relay") - $2 ))
            [ "$Q" -gt 0 ] && [ "$K" -ge "$Q" ] && return 0
            sleep 0.1
        done
        say "FAIL: A's sidecar queued $Q transaction(s), $K stored"; exit 1
    }
    say "losing a mailbox relay: B's address names two; stopping B again"
    B_SYN=$(last_pid synapse hs-b); B_SC=$(last_pid sidecar hs-b)
    kill "$B_SYN" "$B_SC"
    while kill -0 "$B_SYN" 2>/dev/null || kill -0 "$B_SC" 2>/dev/null; do sleep 0.2; done
    Q0=$(count "transaction queued through spore"); K0=$(count "stored at its recipient's mailbox relay")
    $DRIVER send "$RUN/state.json" "$LOSS_BEFORE" relayloss
    T0=$(date +%s.%N)
    wait_stored_once "$Q0" "$K0"
    for _ in $(seq 1200); do a_all_stored && break; sleep 0.1; done
    a_all_stored || { say "FAIL: A's outbox did not empty (a copy is not stored at both relays)"; exit 1; }
    say "$Q transaction(s) stored at both of B's mailbox relays (A's outbox empty) $(since "$T0")s after the last message was sent"
    DEAD=$(cat "$B_RELAY/pid")
    kill -9 "$DEAD"
    while ps -o stat= -p "$DEAD" 2>/dev/null | grep -qv Z; do sleep 0.05; done
    rm -rf "$B_RELAY/data"
    say "B's first mailbox relay SIGKILLed (pid $DEAD) and its data folder deleted"
    Q0=$(count "transaction queued through spore"); K0=$(count "stored at its recipient's mailbox relay")
    $DRIVER send "$RUN/state.json" "$LOSS_AFTER" relayloss $((LOSS_BEFORE + 1))
    T0=$(date +%s.%N)
    wait_stored_once "$Q0" "$K0"
    say "sent while B's first relay is dead: $Q transaction(s) stored at the second $(since "$T0")s after the last message was sent"
    a_all_stored && { say "FAIL: A's outbox is empty although copies are owed to the dead relay"; exit 1; }
    say "A's outbox keeps the copies owed to the dead relay"
    GME0=$(gme)
    start_sidecar hs-b.spore.test "$B" $B_PROXY $B_BUNDLE $B_FED hs-a.spore.test $A_BUNDLE
    start_synapse hs-b "$B" $B_CLIENT $B_FED $B_PROXY
    $DRIVER check "$RUN/state.json" $((LOSS_BEFORE + LOSS_AFTER)) 300 "$UP_AT" b relayloss | tee "$RUN/relayloss.out"
    GME=$(( $(gme) - GME0 ))
    say "get_missing_events requests during this catch-up: $GME"
    [ "$GME" -eq 0 ] || { say "FAIL: B asked for missing events while catching up through its second relay"; exit 1; }
    $DRIVER say "$RUN/state.json" a b "A to B while B's first relay is dead"
    "$TARGET/debug/spore-relay" run --config "$B_RELAY/relay.toml" >>"$B_RELAY/relay.log" 2>&1 &
    PIDS+=($!); echo "testnet relay-hs-b $!" >>"$RUN/pids"
    T0=$(date +%s.%N)
    say "B's first mailbox relay restarted with an empty disk (pid $!)"
    for _ in $(seq 1800); do a_all_stored && break; sleep 0.1; done
    a_all_stored || { say "FAIL: A's outbox did not empty after the relay came back"; exit 1; }
    say "A's outbox emptied $(since "$T0")s after the relay restarted (the owed copies are stored there)"
    $DRIVER say "$RUN/state.json" b a "B sends again through its first relay"
    $DRIVER check "$RUN/state.json" $((LOSS_BEFORE + LOSS_AFTER)) 30 "" b relayloss
    say "losing B's first mailbox relay and its disk lost nothing and delivered nothing twice"
fi

# ---------------------------------------------------------------- no direct route
$DRIVER conns "$RUN/ss.log" "$RUN/pids"
say "sidecar log summary (all sidecars, whole run):"
grep -hE "queued through spore|answered through spore|answered from the verified cache|fetched through spore|delivered|not answered|not verify|stopped waiting|mailbox relay\$" \
    "$RUN"/*.sidecar.log | sed -E 's/^\S+ +//; s/^(DEBUG|INFO|WARN) +//' | sort | uniq -c | sed 's/^/    /'
say "PASS in $(( $(date +%s) - START ))s"
