#!/usr/bin/env bash
# Large answers with real Synapse: answers far above the reply-SURB budget, through Spore.
#
#   bash tests/synapse/big.sh
#
# Runs tests/synapse/run.sh with SPORE_SYNAPSE_BIG=1 (two servers unless
# SPORE_SYNAPSE_SERVERS says otherwise). run.sh sources this file for the functions below and,
# after its usual set-up (room, invite, join, a message each way), runs big_scenario instead of
# the offline catch-up part:
#   1. send_join: alice@A creates a room with 2,000 extra state events and sends 500 messages;
#      bob@B joins (the send_join answer carries the whole state, ~1 MB of JSON) and must see
#      every state event and both members;
#   2. /state: a GET /_matrix/federation/v1/state signed as hs-b (B's signing key) goes through
#      B's sidecar proxy to A's Synapse; the answer must hold every state event;
#   3. backfill: bob pages back through the 500 messages sent before he joined; B's Synapse
#      backfills them from A (100 per /backfill, each answer larger than the reply SURBs);
#   4. media: alice uploads 5 MiB of random bytes; bob downloads them through B (authenticated
#      federation media from A) and the sha256 must match.
# Each step's time is printed (BIG step=... lines, and a summary), as are the answers A's
# sidecar sent by store-and-forward (their fragment counts).
#
# Rates and timeouts (see docs/synapse.md "Large answers with real Synapse"): A's sidecar,
# which sends the big answers, runs at lambda_P = SPORE_SYNAPSE_BIG_LAMBDA_P (default 300
# packets/s; B pulls its mailbox with bulk catch-up pulls). 5 MiB of media is 16,384 packets,
# each acked: at 300/s that is 55 s at the very least, and on 2 shared cores much longer, over
# Synapse's federation client timeout (60 s). So both Synapses' `federation.client_timeout`
# and the sidecars' caller timeout for `media` are raised to SPORE_SYNAPSE_BIG_TIMEOUT (default
# 900 s). Every other endpoint keeps Synapse's own 60 s in the sidecars (request_timeout_secs
# = 60), so a call whose answer is lost (reply SURBs are not acked) gets its 502 after 60 s
# as it would without this change, not after 900.
#
# Environment (besides run.sh's):
#   SPORE_SYNAPSE_BIG_STATE=N     extra state events (default 2000)
#   SPORE_SYNAPSE_BIG_MESSAGES=N  messages bob's server must backfill (default 500)
#   SPORE_SYNAPSE_BIG_MEDIA=BYTES media size (default 5242880, 5 MiB)
#   SPORE_SYNAPSE_BIG_LAMBDA_P=R  A's sidecar packets/s (default 300)
#   SPORE_SYNAPSE_BIG_STEPS="..." which steps run (default "join state backfill media"; state
#                                 and backfill need join; the room is always prepared)
#   SPORE_SYNAPSE_BIG_TIMEOUT=S   Synapse's federation client timeout and the sidecars' caller
#                                 timeout for media (default 900; Synapse's own is 60)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    export SPORE_SYNAPSE_BIG=1
    export SPORE_SYNAPSE_SERVERS=${SPORE_SYNAPSE_SERVERS:-2}
    exec bash "$(dirname "$0")/run.sh"
fi

BIG_STATE=${SPORE_SYNAPSE_BIG_STATE:-2000}
BIG_MESSAGES=${SPORE_SYNAPSE_BIG_MESSAGES:-500}
BIG_MEDIA=${SPORE_SYNAPSE_BIG_MEDIA:-5242880}
BIG_LAMBDA_P=${SPORE_SYNAPSE_BIG_LAMBDA_P:-300}
BIG_TIMEOUT=${SPORE_SYNAPSE_BIG_TIMEOUT:-900}
BIG_STEPS=${SPORE_SYNAPSE_BIG_STEPS:-join state backfill media}

# Called by run.sh once the testnet has written the sidecar configs, before any sidecar or
# Synapse starts.
big_configure() {
    [ "$CARRIER" != loopback ] || { say "SPORE_SYNAPSE_BIG needs the spore carrier"; exit 1; }
    sed -i "s/^request_timeout_secs = .*/request_timeout_secs = 60/" "$RUN"/net/*/sidecar.toml
    local toml
    for toml in "$RUN"/net/*/sidecar.toml; do
        printf '\n[request_timeouts]\nmedia = %s\n' "$BIG_TIMEOUT" >>"$toml"
    done
    sed -i "s/^federation: {/federation: {client_timeout: ${BIG_TIMEOUT}s, /" "$A/spore.yaml" "$B/spore.yaml"
    grep -q "client_timeout: ${BIG_TIMEOUT}s" "$A/spore.yaml" || { say "FAIL: could not set Synapse's federation client_timeout"; exit 1; }
    sed -i "s/^lambda_p = .*/lambda_p = $BIG_LAMBDA_P.0/" "$RUN/net/hs-a.spore.test/sidecar.toml"
    # The responder logs each answer it sends by store-and-forward, with its fragment count.
    export RUST_LOG="${RUST_LOG:-info},spore_client::transport=debug"
    say "big answers: A's sidecar at lambda_P = $BIG_LAMBDA_P packets/s; Synapse's federation client timeout and the sidecars' media timeout $BIG_TIMEOUT s, other calls 60 s"
}

# Called by run.sh after the set-up; ends the run.
big_scenario() {
    local py="$VENV/bin/python -B $ROOT/tests/synapse/big.py" st="$RUN/big.json" out="$RUN/big.out"
    local t0
    t0=$(date +%s)
    : >"$out"
    $py prepare "$st" "http://127.0.0.1:$A_CLIENT" "http://127.0.0.1:$B_CLIENT" "$BIG_STATE" "$BIG_MESSAGES" | tee -a "$out"
    case " $BIG_STEPS " in *" join "*)
        $py join "$st" | tee -a "$out"
        case " $BIG_STEPS " in *" state "*)
            $py state "$st" "127.0.0.1:$B_PROXY" "$B/sidecar/ca.pem" "$B/hs-b.spore.test.signing.key" | tee -a "$out" ;; esac
        case " $BIG_STEPS " in *" backfill "*) $py backfill "$st" "$BIG_MESSAGES" 1800 | tee -a "$out" ;; esac ;;
    esac
    # Media last: after its 16,384 fragments, A's sidecar answered everything else 2-10 times
    # more slowly for minutes (docs/synapse.md, run 3).
    case " $BIG_STEPS " in *" media "*) $py media "http://127.0.0.1:$A_CLIENT" "http://127.0.0.1:$B_CLIENT" "$BIG_MEDIA" | tee -a "$out" ;; esac
    $DRIVER conns "$RUN/ss.log" "$RUN/pids"
    say "answers A's sidecar sent by store-and-forward (fragments each):"
    grep -h "sent to the requester's mailbox" "$RUN/hs-a.spore.test.sidecar.log" \
        | grep -oE "fragments=[0-9]+" | sort -t= -k2 -n | uniq -c | sed 's/^/    /'
    local n
    n=$(grep -c "sent to the requester's mailbox" "$RUN/hs-a.spore.test.sidecar.log" || true)
    [ "$n" -ge 1 ] || { say "FAIL: no answer went back by store-and-forward"; exit 1; }
    say "B's sidecar, answers per endpoint:"
    grep -h "request answered through spore\|request not answered" "$RUN/hs-b.spore.test.sidecar.log" \
        | grep -oE "endpoint=\"?[a-z_]+|request not answered" | sort | uniq -c | sed 's/^/    /'
    say "big answers summary (load average: $(cut -d' ' -f1-3 /proc/loadavg)):"
    grep "^BIG " "$out" | sed 's/^/    /'
    say "PASS (big answers) in $(( $(date +%s) - START ))s, big scenario $(( $(date +%s) - t0 ))s"
}
