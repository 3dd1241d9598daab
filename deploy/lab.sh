#!/usr/bin/env bash
# The two-friend lab on one machine: the seed's story, for real.
#
#   deploy/lab.sh demo    set everything up, play the whole story, check every
#                         step, tear it all down (exit 0 only if all checks pass)
#   deploy/lab.sh up      set up and pair, and leave it running to explore
#   deploy/lab.sh down    stop everything and remove the lab
#
# Needs root (network namespaces). Installs what is missing: postfix,
# dnsmasq-base, iproute2. Everything runs inside one network namespace
# ($MXFED_LAB_NETNS, default mxfed-lab) with one address per host on its lo:
#
#   198.18.0.1   mail.me.test       me: Postfix (backup MX for friend) + mxfed agent
#   198.18.0.2   mail.friend.test   friend: Postfix (friend.test, friend2.test) + agent
#   198.18.0.3   mail.sender.test   a sender somewhere on the internet: Postfix
#   198.18.0.4   mail.mallory.test  a hostile peer: mxfed agent only
#   198.18.0.53                     dnsmasq: the DNS everyone in the lab uses
#
# DNS is as the seed describes: friend.test MX 0 mail.friend.test, MX 10
# mail.me.test (and the other way round for me.test). State lives in
# $MXFED_LAB (default /tmp/mxfed-lab).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

LAB=${MXFED_LAB:-/tmp/mxfed-lab}
NS=${MXFED_LAB_NETNS:-mxfed-lab}
# MXFED_BIN: use this binary instead of building one (the e2e test does).
MXFED=${MXFED_BIN:-$PWD/target/debug/mxfed}
declare -A IP=([me]=198.18.0.1 [friend]=198.18.0.2 [sender]=198.18.0.3 [mallory]=198.18.0.4 [dns]=198.18.0.53)

# shellcheck source=deploy/lib.sh
. "$(dirname "$SELF")/lib.sh"
fail() {
    printf '\n\033[31mLAB CHECK FAILED: %s\033[0m\n' "$*" >&2
    for f in "$LAB"/*/agent.log "$LAB"/*/maillog; do
        [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
inns() { ip netns exec "$NS" "$@"; }
as() { local who=$1; shift; inns "$MXFED" --config "$LAB/$who/mxfed.toml" "$@"; }

need_root() { [ "$(id -u)" = 0 ] || { echo "deploy/lab.sh needs root (network namespaces)" >&2; exit 1; }; }

install_prereqs() { install_missing postfix=postfix dnsmasq=dnsmasq-base ip=iproute2; }

# smtp HOST_IP CMDS... : talks SMTP from inside the lab (see SMTP_DIALOG).
smtp() { inns bash -c "$SMTP_DIALOG" "$@"; }

# rcpt_code BACKUP_IP ADDRESS: the reply code to RCPT TO from outside mynetworks.
rcpt_code() {
    smtp "$1" "EHLO lab.test" "MAIL FROM:<probe@sender.test>" "RCPT TO:<$2>" | sed -n '4p' | cut -c1-3
}

send_mail() { # TO SUBJECT: submitted to the sender's Postfix, which looks up MX
    smtp "${IP[sender]}" "EHLO lab.test" "MAIL FROM:<alice@sender.test>" "RCPT TO:<$1>" "DATA" \
        "Subject: $2" "" "sent through the lab at $(date -u +%T)" "." >/dev/null
}

inbox() { ls "$LAB/$1/mail/inbox/new" 2>/dev/null | wc -l; }

postfix_up() { # WHO DOMAINS
    local who=$1 domains=$2 dir="$LAB/$1/pf"
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data" "$LAB/$who/mail"
    chown postfix "$dir/data"
    chown 65534:65534 "$LAB/$who/mail"
    cp /etc/postfix/master.cf "$dir/etc/"
    # Each domain's real users (bob and postmaster), all into one mailbox: a
    # table mxfed can list, so friends' backups accept these and no others.
    : >"$dir/etc/vmailbox"
    for d in ${domains//,/ }; do
        printf 'bob@%s inbox/\npostmaster@%s inbox/\n' "$d" "$d" >>"$dir/etc/vmailbox"
    done
    postmap "hash:$dir/etc/vmailbox"
    cat >"$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
inet_interfaces = ${IP[$who]}
inet_protocols = ipv4
myhostname = mail.$who.test
mydestination = localhost
mynetworks = $([ "$who" = sender ] && echo "198.18.0.0/24" || echo "127.0.0.0/8")
maillog_file = $LAB/$who/maillog
maillog_file_prefixes = $LAB
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
bounce_queue_lifetime = 10d
maximal_queue_lifetime = 10d
virtual_mailbox_domains = $domains
virtual_mailbox_base = $LAB/$who/mail
virtual_mailbox_maps = hash:$dir/etc/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
EOF
    postconf -c "$dir/etc" -F '*/*/chroot = n' >/dev/null
    inns postfix -c "$dir/etc" start >/dev/null 2>&1 || inns postfix -c "$dir/etc" start
}

postfix_down() { inns postfix -c "$LAB/$1/pf/etc" stop >/dev/null 2>&1 || true; }

agent_init() { # WHO [POSTFIX_DIR]
    local who=$1
    mkdir -p "$LAB/$who"
    as "$who" init --name "$who" --mail-host "mail.$who.test" --listen "${IP[$who]}:7787" \
        --data-dir "$LAB/$who/data" --postfix-config-dir "${2:-$LAB/$who/nopostfix}" \
        --control-socket "$LAB/$who/control.sock" >/dev/null
    # The lab's addresses are in 198.18.0.0/15 (benchmarking), a
    # special-purpose range mxfed refuses as next hops unless told.
    sed -i 's/^allow_non_public_next_hops = false$/allow_non_public_next_hops = true/' "$LAB/$who/mxfed.toml"
    # All agents share one machine: each serves Postfix's policy requests
    # on a socket of its own (the lab's Postfix runs without chroot).
    sed -i "s|^policy_listen = .*|policy_listen = \"unix:$LAB/$who/policy.sock\"|" "$LAB/$who/mxfed.toml"
    grep -qx "policy_listen = \"unix:$LAB/$who/policy.sock\"" "$LAB/$who/mxfed.toml" || fail "$who: could not set policy_listen"
    grep -qx 'allow_non_public_next_hops = true' "$LAB/$who/mxfed.toml" || fail "$who: could not set allow_non_public_next_hops"
}

agent_start() {
    local who=$1
    inns "$MXFED" --config "$LAB/$who/mxfed.toml" agent >>"$LAB/$who/agent.log" 2>&1 &
    echo $! >"$LAB/$who/agent.pid"
    wait_until "agent $who" 15 as "$who" status
}

agent_stop() {
    local pidfile="$LAB/$1/agent.pid"
    [ -f "$pidfile" ] || return 0
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
}

connected() { as "$1" status --json | status_connected "$2"; }
state_of() { as "$1" status --json | status_state "$3"; } # WHO PEER DOMAIN -> accepted/refused/pending

up() {
    need_root
    install_prereqs
    down quiet
    if [ -z "${MXFED_BIN:-}" ]; then
        say "building mxfed"
        cargo build --locked -q -p mxfed
    fi
    say "network namespace $NS: one address per host on its lo"
    ip netns add "$NS"
    inns ip link set lo up
    for h in "${!IP[@]}"; do inns ip addr add "${IP[$h]}/32" dev lo; done
    mkdir -p "$LAB" "/etc/netns/$NS"
    echo "nameserver ${IP[dns]}" >"/etc/netns/$NS/resolv.conf"
    say "DNS (dnsmasq on ${IP[dns]}): each domain MX 0 its own server, MX 10 the friend's"
    inns dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
        --listen-address="${IP[dns]}" --pid-file="$LAB/dnsmasq.pid" --local=/test/ --local-ttl=0 \
        --mx-host=me.test,mail.me.test,0 --mx-host=me.test,mail.friend.test,10 \
        --mx-host=friend.test,mail.friend.test,0 --mx-host=friend.test,mail.me.test,10 \
        --mx-host=friend2.test,mail.friend.test,0 --mx-host=friend2.test,mail.me.test,10 \
        --mx-host=sender.test,mail.sender.test,0 --mx-host=mallory.test,mail.mallory.test,0 \
        --host-record=mail.me.test,"${IP[me]}" --host-record=mail.friend.test,"${IP[friend]}" \
        --host-record=mail.sender.test,"${IP[sender]}" --host-record=mail.mallory.test,"${IP[mallory]}"
    say "Postfix for me (me.test), friend (friend.test, friend2.test) and a sender"
    postfix_up me me.test
    postfix_up friend "friend.test, friend2.test"
    postfix_up sender sender.test
    say "mxfed init, postfix setup and start, for me and friend"
    agent_init me "$LAB/me/pf/etc"
    agent_init friend "$LAB/friend/pf/etc"
    as me postfix setup | sed 's/^/   /'
    as friend postfix setup >/dev/null
    agent_start me
    agent_start friend
    say "1. pair: me runs \`mxfed invite\`, friend runs \`mxfed join TOKEN\`"
    local token
    token=$(as me invite --ttl 10m)
    echo "   token: $token"
    as friend join "$token" | sed 's/^/   /'
    wait_until "me and friend connected" 30 connected me friend
    ok "paired and connected"
}

demo() {
    # Leave nothing behind if a step fails (set MXFED_LAB_KEEP=1 to look around).
    trap 'rc=$?; if [ $rc -ne 0 ] && [ -z "${MXFED_LAB_KEEP:-}" ]; then down quiet; fi' EXIT
    up
    say "2. friend publishes its domains: \`mxfed domains add friend.test friend2.test\`"
    as friend domains add friend.test friend2.test | sed 's/^/   /'
    wait_until "me accepts friend.test" 30 env MXFED_BIN=$MXFED bash -c "[ \"\$(MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _state me friend friend.test)\" = accepted ]"
    say "3. me relays for them, and for nothing else (RCPT TO from the internet)"
    wait_until "RCPT friend.test 250 at me" 30 env MXFED_BIN=$MXFED bash -c "[ \"\$(MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _rcpt ${IP[me]} bob@friend.test)\" = 250 ]"
    ok "RCPT TO:<bob@friend.test> at mail.me.test: 250"
    local c
    c=$(rcpt_code "${IP[me]}" someone@other.test)
    [ "$c" = 554 ] || fail "relay for other.test answered $c, not 554"
    ok "RCPT TO:<someone@other.test> at mail.me.test: 554 (relay access denied)"
    # friend's agent publishes its real users (read from its Postfix), so me
    # refuses a made-up address now instead of bouncing it to a forged
    # sender later.
    wait_until "RCPT nobody@friend.test 550 at me" 30 env MXFED_BIN=$MXFED bash -c "[ \"\$(MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _rcpt ${IP[me]} nobody@friend.test)\" = 550 ]"
    ok "RCPT TO:<nobody@friend.test> at mail.me.test: 550 (not one of friend's recipients)"
    echo; as me status | sed 's/^/   me> /'

    say "4. friend's mail server and agent go down"
    agent_stop friend
    postfix_down friend
    ok "friend is down"
    say "5. a sender on the internet mails bob@friend.test: MX 0 is down, so it lands at MX 10 (me)"
    send_mail bob@friend.test "held while friend was down"
    wait_until "the mail to be held at me" 60 env MXFED_BIN=$MXFED bash -c "MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _queue me | grep -q '\"messages\": 1,'"
    say "6. both sides show the depth"
    as me queue | sed 's/^/   me> /'
    agent_start friend
    wait_until "friend to hear what me holds" 60 env MXFED_BIN=$MXFED bash -c "MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _status friend | tr -d ' \n' | grep -q '\"held_by_peer\":{\"messages\":1,'"
    as friend status | sed 's/^/   friend> /'
    ok "me holds 1 message for friend, and friend sees it"

    say "7. friend's mail server comes back: the held mail is flushed at once"
    local t0=$SECONDS
    postfix_up friend "friend.test, friend2.test"
    wait_until "the held mail in friend's mailbox" 60 env MXFED_BIN=$MXFED bash -c "[ \"\$(ls $LAB/friend/mail/inbox/new 2>/dev/null | wc -l)\" -ge 1 ]"
    ok "delivered to friend's mailbox $((SECONDS - t0))s after its server came back (Postfix alone would wait up to 300s)"
    grep -h "Subject:" "$LAB"/friend/mail/inbox/new/* | sed 's/^/   friend mailbox: /'

    say "8. a removal and an unpair each take the relay away"
    as friend domains remove friend2.test | sed 's/^/   /'
    wait_until "friend2.test no longer relayed" 30 env MXFED_BIN=$MXFED bash -c "[ \"\$(MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _rcpt ${IP[me]} x@friend2.test)\" = 554 ]"
    ok "after \`domains remove friend2.test\`: RCPT x@friend2.test at me is 554"
    as friend unpair me | sed 's/^/   /'
    wait_until "friend.test no longer relayed" 30 env MXFED_BIN=$MXFED bash -c "[ \"\$(MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _rcpt ${IP[me]} bob@friend.test)\" = 554 ]"
    ok "after \`unpair\`: RCPT bob@friend.test at me is 554"
    as me history | sed 's/^/   me> /'

    say "9. a hostile peer pairs with me and squats on friend.test, pointing it at friend's own server"
    # friend.test's MX names me and mail.friend.test, so a check that only
    # asked whether the MX names me and the next hop would let mallory take
    # it. mallory is not at mail.friend.test and no _mxfed record names it.
    agent_init mallory
    agent_start mallory
    token=$(as me invite --ttl 10m)
    as mallory join "$token" | sed 's/^/   /'
    as mallory domains add friend.test --next-hop mail.friend.test | sed 's/^/   /'
    wait_until "me to judge mallory's claim" 30 env MXFED_BIN=$MXFED bash -c "[ -n \"\$(MXFED_LAB=$LAB MXFED_LAB_NETNS=$NS $SELF _state me mallory friend.test)\" ]"
    [ "$(state_of me mallory friend.test)" = refused ] || fail "mallory's claim was $(state_of me mallory friend.test)"
    st=$(as me status --json)
    grep -q 'no proof that this peer speaks for friend.test' <<<"$st" || fail "mallory's claim was not refused for want of proof"
    c=$(rcpt_code "${IP[me]}" bob@friend.test)
    [ "$c" = 554 ] || fail "relay for friend.test answered $c after mallory's claim"
    ok "refused: $(as me status --json | tr -d '\n' | grep -o '"domain": "friend.test"[^}]*"reason": "[^"]*"' | sed 's/.*"reason": //')"
    as me status | sed 's/^/   me> /'
    down
    say "ALL CHECKS PASSED"
}

down() {
    if ip netns list 2>/dev/null | grep -qw "$NS"; then
        for who in me friend mallory; do agent_stop "$who"; done
        for who in me friend sender; do postfix_down "$who"; done
        [ -f "$LAB/dnsmasq.pid" ] && kill "$(cat "$LAB/dnsmasq.pid")" 2>/dev/null || true
        # Anything left in the namespace goes with it.
        for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$NS"
    fi
    rm -rf "/etc/netns/$NS" "$LAB"
    [ "${1:-}" = quiet ] || echo "lab removed"
}

case "${1:-}" in
    demo) need_root; demo ;;
    up) up; echo; echo "running; try: ip netns exec $NS $MXFED --config $LAB/me/mxfed.toml status" ;;
    down) need_root; down ;;
    # Helpers the demo runs in subshells.
    _state) state_of "$2" "$3" "$4" ;;
    _rcpt) rcpt_code "$2" "$3" ;;
    _queue) as "$2" queue --json ;;
    _status) as "$2" status --json ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
esac
