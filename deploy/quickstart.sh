#!/usr/bin/env bash
# README's "Quick start for two real friends", for real: two Debian systems
# booted with systemd (systemd-nspawn containers), each with its own network
# namespace, joined by a cable (a veth pair), with dnsmasq as the DNS both
# use. Each runs the quick start's commands as written in README.md, in the
# same order (the script checks that each line it runs for "me" is in the
# README): `apt install ./mxfed_<version>_amd64.deb`, then mxfed under the
# package's unit (deploy/mxfed.service) and its hardening.
#
#   deploy/quickstart.sh run    build everything, play the quick start, check
#                               every step, remove it all (exit 0 only if all pass)
#   deploy/quickstart.sh down   remove what a failed run left (MXFED_QS_KEEP=1)
#
#   203.0.113.5   mail.me.example       me's system: Postfix, mxfed under systemd
#   203.0.113.6   mail.friend.example   friend's system: the same
#   203.0.113.53                        dnsmasq (in me's namespace)
#
#   example.org, example.net  MX 0 mail.me.example,     MX 10 mail.friend.example
#   example.com               MX 0 mail.friend.example, MX 10 mail.me.example
#
# Needs root. Installs what is missing (debootstrap, systemd-container,
# dnsmasq-base, iproute2, procps) and builds the Debian system once with
# debootstrap (about a minute; kept in $MXFED_QS_CACHE, default
# /var/cache/mxfed-quickstart), from the Debian mirror this machine's own
# apt sources name for its release (/etc/apt/sources.list and
# sources.list.d; MXFED_QS_MIRROR overrides it). The package is the quick
# start's own `bash deploy/deb.sh`, unless MXFED_DEB names one (the test
# command builds it before cargo test, which holds cargo's build lock).
#
# The one change to what a real admin does: these are documentation
# addresses (TEST-NET-3), which mxfed refuses as next hops unless
# allow_non_public_next_hops = true, so the script sets it after `init`.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

WORK=${MXFED_QS_DIR:-/var/tmp/mxfed-quickstart}
CACHE=${MXFED_QS_CACHE:-/var/cache/mxfed-quickstart}
TAG=${MXFED_QS_TAG:-mxqs}
# The Debian release to boot: the host's, so the host-built binary runs there.
SUITE=${MXFED_QS_SUITE:-$(. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}")}
MIRROR=${MXFED_QS_MIRROR:-}
declare -A IP=([me]=203.0.113.5 [friend]=203.0.113.6)
DNS=203.0.113.53
PATHS=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# shellcheck source=deploy/lib.sh
. "$(dirname "$SELF")/lib.sh"
fail() {
    printf '\n\033[31mQUICK START CHECK FAILED: %s\033[0m\n' "$*" >&2
    for who in me friend; do
        [ -f "$WORK/$who.pid" ] || continue
        echo "--- $who: systemctl status mxfed; journalctl -u mxfed -u postfix@-" >&2
        on "$who" systemctl --no-pager status mxfed >&2 2>&1 || true
        on "$who" journalctl --no-pager -n 40 -u mxfed -u postfix@- >&2 2>&1 || true
    done
    exit 1
}

need_root() { [ "$(id -u)" = 0 ] || { echo "deploy/quickstart.sh needs root (containers, namespaces)" >&2; exit 1; }; }
# apt_mirror SUITE: the Debian mirror this machine's apt sources name for
# SUITE. First apt's own view of them (the index targets of Debian's
# archive for that codename, once `apt-get update` has run); else the
# sources files themselves (deb822 .sources, then one-line .list files), a
# URI listed for SUITE itself. Only http(s) URIs (debootstrap's); the first.
apt_mirror() {
    local suite=$1 f
    {
        apt-get indextargets --format '$(REPO_URI)' 'Origin: Debian' "Codename: $suite" \
            'Identifier: Packages' 2>/dev/null || true
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" } {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^#/ || index($i, ":") == 0) continue
                    k = tolower(substr($i, 1, index($i, ":") - 1))
                    v = substr($i, index($i, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", v)
                    if (k == "types") types = v; else if (k == "uris") uris = v
                    else if (k == "suites") suites = v; else if (k == "enabled") enabled = tolower(v)
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                if ((" " suites " ") ~ (" " s " ")) { n = split(uris, u, " "); for (j = 1; j <= n; j++) print u[j] }
            }' "$f"
        done
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            # deb [option=value ...] URI SUITE COMPONENT...
            awk -v s="$suite" '$1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) print $i
            }' "$f"
        done
    } | awk '/^https?:\/\// && !found++ { print }' # reads to the end: no SIGPIPE upstream
}

need_mirror() {
    [ -n "$MIRROR" ] || MIRROR=$(apt_mirror "$SUITE")
    [ -n "$MIRROR" ] || fail "this machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) name no http(s) Debian mirror for $SUITE; set MXFED_QS_MIRROR to one"
}

need_suite() {
    [ -n "$SUITE" ] || { echo "deploy/quickstart.sh: this host is not Debian; set MXFED_QS_SUITE to a Debian release whose glibc runs the mxfed binary (e.g. trixie)" >&2; exit 1; }
}

install_prereqs() {
    install_missing debootstrap=debootstrap systemd-nspawn=systemd-container dnsmasq=dnsmasq-base \
        ip=iproute2 nsenter=util-linux pgrep=procps
}

# The Debian system both friends start from: systemd as init, and Postfix
# as Debian's package configures it.
ROOTFS="$CACHE/$SUITE"
rootfs() {
    local root=$ROOTFS
    mkdir -p "$CACHE"
    # One build at a time (concurrent runs share the cache).
    exec 9>"$CACHE/.lock"
    flock 9
    if [ ! -f "$root/.complete" ]; then
        need_mirror
        say "building a Debian $SUITE system with systemd and postfix (debootstrap, once, from $MIRROR)"
        rm -rf "$root.partial"
        debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,postfix,iproute2 \
            "$SUITE" "$root.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
            { tail -n 20 "$CACHE/debootstrap.log" >&2; fail "debootstrap $SUITE from $MIRROR (log: $CACHE/debootstrap.log)"; }
        touch "$root.partial/.complete"
        rm -rf "$root"
        mv "$root.partial" "$root"
    fi
    flock -u 9
}

# on WHO CMD...: runs CMD inside WHO's booted system, as its root, in /src
# (where the package is).
on() {
    local who=$1; shift
    nsenter -t "$(leader "$who")" -a -r -w \
        /usr/bin/env -i PATH=$PATHS HOME=/root LANG=C.UTF-8 bash -c 'cd /src && "$@"' on "$@"
}
leader() { pgrep -P "$(cat "$WORK/$1.pid")" -x systemd; }

# qs WHO LINE: runs one quick-start line in WHO's system, echoing it. For me
# the line must appear as written in README.md.
qs() {
    if [ "$1" = me ] && ! grep -qF -- "$2" README.md; then
        fail "README.md no longer has the quick-start line: $2"
    fi
    step "$@"
}

# step WHO LINE: runs LINE in WHO's system, echoing it and its output.
step() {
    local who=$1 line=$2
    printf '   %s# %s\n' "$who" "$line"
    on "$who" bash -c "$line" 2>&1 | sed "s/^/   $who> /" || fail "$who: \`$line\` failed"
}

# rcpt_code FROM TO_IP ADDRESS: the reply code to RCPT TO, from FROM's namespace.
rcpt_code() {
    ip netns exec "$TAG-$1" bash -c "$SMTP_DIALOG" "$2" "EHLO probe.test" "MAIL FROM:<probe@probe.test>" "RCPT TO:<$3>" |
        sed -n '4p' | cut -c1-3
}

state_of() { on "$1" mxfed status --json | status_state "$2"; } # WHO DOMAIN -> accepted/refused/pending
list_apply() { # WHO -> applied/failed: the newest apply of a friend's list in mxfed history
    on "$1" mxfed history --json | tr -d '\n' | grep -o '"trigger": *"[^"]*list v[^"]*", *"result": *"[a-z]*"' |
        head -n 1 | sed 's/.*"result": *"//; s/"$//'
}
connected() { on "$1" mxfed status --json | status_connected "$2"; }

network() {
    say "two network namespaces joined by a veth pair; dnsmasq on $DNS"
    for who in me friend; do ip netns add "$TAG-$who"; ip netns exec "$TAG-$who" ip link set lo up; done
    ip link add "$TAG-me0" netns "$TAG-me" type veth peer name "$TAG-fr0" netns "$TAG-friend"
    ip netns exec "$TAG-me" ip addr add "${IP[me]}/24" dev "$TAG-me0"
    ip netns exec "$TAG-me" ip addr add "$DNS/24" dev "$TAG-me0"
    ip netns exec "$TAG-friend" ip addr add "${IP[friend]}/24" dev "$TAG-fr0"
    ip netns exec "$TAG-me" ip link set "$TAG-me0" up
    ip netns exec "$TAG-friend" ip link set "$TAG-fr0" up
    ip netns exec "$TAG-me" dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
        --listen-address="$DNS" --pid-file="$WORK/dnsmasq.pid" --local=/example/ --local=/example.org/ \
        --local=/example.net/ --local=/example.com/ --local-ttl=0 \
        --mx-host=example.org,mail.me.example,0 --mx-host=example.org,mail.friend.example,10 \
        --mx-host=example.net,mail.me.example,0 --mx-host=example.net,mail.friend.example,10 \
        --mx-host=example.com,mail.friend.example,0 --mx-host=example.com,mail.me.example,10 \
        --host-record=mail.me.example,"${IP[me]}" --host-record=mail.friend.example,"${IP[friend]}"
}

# boot WHO PACKAGE: a copy of the Debian system, named and addressed as
# WHO, with the package in /src, booted.
boot() {
    local who=$1 deb=$2 root="$WORK/$1"
    cp -a --reflink=auto "$ROOTFS" "$root"
    echo "$who" >"$root/etc/hostname"
    echo "mail.$who.example" >"$root/etc/mailname"
    echo "nameserver $DNS" >"$root/etc/resolv.conf"
    chroot "$root" postconf -e "myhostname = mail.$who.example" "mydestination = localhost" \
        "inet_protocols = ipv4" "mynetworks = 127.0.0.0/8"
    mkdir -p "$root/src"
    cp "$deb" "$root/src/"
    systemd-nspawn -q -D "$root" -b --register=no --keep-unit -M "$TAG-$who" \
        --network-namespace-path="/run/netns/$TAG-$who" --resolv-conf=off \
        >"$WORK/$who.console" 2>&1 &
    echo $! >"$WORK/$who.pid"
    local state deadline=$((SECONDS + 60))
    while :; do
        state=$(on "$who" systemctl is-system-running 2>/dev/null) || true
        case "$state" in
            running) break ;;
            degraded) fail "$who's system booted degraded: $(on "$who" systemctl --failed --no-legend)" ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || fail "$who's system did not finish booting in 60s (state: ${state:-no answer})"
        sleep 0.3
    done
    ok "$who: $(on "$who" systemctl is-system-running), $(on "$who" systemctl is-active postfix@-) postfix, systemd $(on "$who" systemctl --version | head -n 1 | cut -d' ' -f2)"
}

run() {
    need_root
    install_prereqs
    down quiet
    # Leave nothing behind if a step fails (set MXFED_QS_KEEP=1 to look around).
    trap 'rc=$?; if [ $rc -ne 0 ] && [ -z "${MXFED_QS_KEEP:-}" ]; then down quiet; fi' EXIT
    mkdir -p "$WORK"
    local deb=${MXFED_DEB:-}
    if [ -z "$deb" ]; then
        say "bash deploy/deb.sh (the quick start's build line)"
        deb=$(bash deploy/deb.sh | tail -n 1)
    fi
    [ -f "$deb" ] || fail "no package at ${deb:-(none)}"
    local debname
    debname=$(basename "$deb")
    rootfs
    network
    say "boot both systems with systemd"
    boot me "$deb"
    boot friend "$deb"

    say "on each server: install the package, init, postfix setup, enable the unit"
    qs me "apt install ./$debname"
    qs friend "apt install ./$debname"
    local state
    for who in me friend; do
        # The package installs everything, and starts nothing before init.
        on "$who" test -x /usr/bin/mxfed || fail "$who: no /usr/bin/mxfed"
        for f in /usr/lib/systemd/system/mxfed.service /etc/mxfed/mxfed.toml.example \
            /usr/share/man/man1/mxfed.1.gz /usr/share/man/man1/mxfed-init.1.gz /usr/share/man/man5/mxfed.toml.5.gz \
            /usr/share/bash-completion/completions/mxfed /usr/share/zsh/vendor-completions/_mxfed \
            /usr/share/fish/vendor_completions.d/mxfed.fish; do
            on "$who" test -s "$f" || fail "$who: the package did not install $f"
        done
        on "$who" test -d /var/lib/mxfed || fail "$who: the package did not make /var/lib/mxfed"
        [ "$(on "$who" stat -c %a /var/lib/mxfed)" = 700 ] || fail "$who: /var/lib/mxfed is not 0700"
        state=$(on "$who" systemctl is-active mxfed || true)
        [ "$state" = inactive ] || fail "$who: mxfed is $state right after install, before mxfed init"
        ok "$who: $(on "$who" mxfed --version); unit, example config, man pages, completions; not started"
    done
    qs me "mxfed init --name me --mail-host mail.me.example --advertise 203.0.113.5:7787"
    qs friend "mxfed init --name friend --mail-host mail.friend.example --advertise 203.0.113.6:7787"
    for who in me friend; do
        echo "   $who: allow_non_public_next_hops = true (TEST-NET-3 addresses)"
        on "$who" sed -i 's/^allow_non_public_next_hops = false$/allow_non_public_next_hops = true/' /etc/mxfed/mxfed.toml
        on "$who" grep -qx 'allow_non_public_next_hops = true' /etc/mxfed/mxfed.toml || fail "$who: could not set allow_non_public_next_hops"
        # me follows the README's order; friend starts the agent before
        # `postfix setup`, the other order an admin may take.
        if [ "$who" = me ]; then
            qs "$who" "mxfed postfix setup --dry-run"
            qs "$who" "mxfed postfix setup"
        fi
        qs "$who" "systemctl enable --now mxfed"
        if [ "$who" = friend ]; then
            wait_until "$who: mxfed answering under systemd" 30 on "$who" mxfed status
            qs "$who" "mxfed postfix setup --dry-run"
            qs "$who" "mxfed postfix setup"
        fi
        wait_until "$who: mxfed answering under systemd" 30 on "$who" mxfed status
        [ "$(on "$who" systemctl is-active mxfed)" = active ] || fail "$who: mxfed.service is not active"
        local pid
        pid=$(on "$who" systemctl show -P MainPID mxfed)
        on "$who" grep -qE '^NoNewPrivs:[[:space:]]+1$' "/proc/$pid/status" || fail "$who: the agent runs without NoNewPrivileges"
        ok "$who: mxfed.service active (pid $pid in its system), NoNewPrivileges, $(on "$who" grep -E '^CapBnd' "/proc/$pid/status" | tr -s '\t' ' ')"
        # The policy service's socket, made by the sandboxed agent in
        # Postfix's private/, for root and the postfix group only.
        wait_until "$who: the policy socket" 30 on "$who" test -S /var/spool/postfix/private/mxfed-policy
        perms=$(on "$who" stat -c '%a %U:%G' /var/spool/postfix/private/mxfed-policy)
        [ "$perms" = "660 root:postfix" ] || fail "$who: policy socket is $perms, not 660 root:postfix"
        ok "$who: policy socket /var/spool/postfix/private/mxfed-policy ($perms)"
    done

    say "pair: me invites, friend joins"
    local token
    printf '   me# mxfed invite\n'
    grep -qF 'mxfed invite ' README.md || fail "README.md no longer has the quick-start line: mxfed invite"
    token=$(on me mxfed invite) || fail "me: mxfed invite failed"
    echo "   me> $token"
    grep -qF 'mxfed join mxfed1-...' README.md || fail "README.md no longer has the quick-start line: mxfed join mxfed1-..."
    qs friend "mxfed join $token"
    wait_until "me and friend connected" 30 connected me friend
    wait_until "friend and me connected" 30 connected friend me
    qs me "mxfed status"
    ok "paired and connected"

    say "each side lists the domains it hosts"
    qs me "mxfed domains add example.org example.net"
    qs friend "mxfed domains add example.com"
    wait_until "friend to accept example.org" 30 bash -c "[ \"\$(MXFED_QS_DIR=$WORK MXFED_QS_TAG=$TAG $SELF _state friend example.org)\" = accepted ]"
    wait_until "friend to accept example.net" 30 bash -c "[ \"\$(MXFED_QS_DIR=$WORK MXFED_QS_TAG=$TAG $SELF _state friend example.net)\" = accepted ]"
    wait_until "me to accept example.com" 30 bash -c "[ \"\$(MXFED_QS_DIR=$WORK MXFED_QS_TAG=$TAG $SELF _state me example.com)\" = accepted ]"
    qs me "mxfed status"
    qs friend "mxfed status"

    say "the agents, sandboxed by the unit, rewrote the maps and reloaded Postfix"
    for who in me friend; do
        wait_until "$who's apply of its friend's list" 30 bash -c "[ -n \"\$(MXFED_QS_DIR=$WORK MXFED_QS_TAG=$TAG $SELF _applied $who)\" ]"
        [ "$(list_apply "$who")" = applied ] ||
            fail "$who: the apply failed under the unit: $(on "$who" mxfed history | grep 'list v' | head -n 1)"
    done
    wait_until "RCPT x@example.org at mail.friend.example to be 250" 30 \
        bash -c "[ \"\$(MXFED_QS_DIR=$WORK MXFED_QS_TAG=$TAG $SELF _rcpt me ${IP[friend]} x@example.org)\" = 250 ]"
    ok "RCPT TO:<x@example.org> at mail.friend.example: 250"
    wait_until "RCPT x@example.com at mail.me.example to be 250" 30 \
        bash -c "[ \"\$(MXFED_QS_DIR=$WORK MXFED_QS_TAG=$TAG $SELF _rcpt friend ${IP[me]} x@example.com)\" = 250 ]"
    ok "RCPT TO:<x@example.com> at mail.me.example: 250"
    local c
    c=$(rcpt_code me "${IP[friend]}" x@other.example)
    case "$c" in 454 | 554) ok "RCPT TO:<x@other.example> at mail.friend.example: $c (not relayed)" ;;
        *) fail "relay for other.example at friend answered $c" ;; esac
    local mode
    mode=$(on friend stat -c %a /etc/postfix/mxfed)
    [ "$mode" = 755 ] || fail "friend: /etc/postfix/mxfed (made by the unit before the agent started) has mode $mode, not 755"
    qs friend "postconf relay_domains transport_maps"
    qs friend "mxfed history"
    [ "$(list_apply friend)" = applied ] || fail "friend: no successful apply of me's list in mxfed history"
    qs friend "mxfed queue"
    on friend mxfed queue --json | tr -d ' \n' | grep -q '"known":true' || fail "friend: mxfed queue could not read the queue under the unit's sandbox"
    qs me "mxfed doctor"
    qs friend "mxfed doctor"

    say "under systemd: notify, watchdog, journald fields, reload"
    for who in me friend; do
        [ "$(on "$who" systemctl show -P Type mxfed)" = notify ] || fail "$who: the unit is not Type=notify"
        [ "$(on "$who" systemctl show -P WatchdogUSec mxfed)" != 0 ] || fail "$who: no watchdog"
    done
    wait_until "me: a journal line with PEER=friend" 30 on me bash -c '[ -n "$(journalctl -u mxfed -q -o cat PEER=friend)" ]'
    wait_until "friend: a journal line with STEP=apply" 30 on friend bash -c '[ -n "$(journalctl -u mxfed -q -o cat STEP=apply)" ]'
    wait_until "friend: a journal line with DOMAIN=example.org" 30 on friend bash -c '[ -n "$(journalctl -u mxfed -q -o cat DOMAIN=example.org)" ]'
    ok "Type=notify, watchdog $(on me systemctl show -P WatchdogUSec mxfed); journal fields, e.g. PEER=friend: $(on me journalctl -u mxfed -q -o cat PEER=friend | head -n 1)"
    local pid_before
    pid_before=$(on me systemctl show -P MainPID mxfed)
    on me cp /etc/mxfed/mxfed.toml /etc/mxfed/mxfed.toml.orig
    on me sed -i -e 's/^recheck_interval = .*/recheck_interval = "4m"/' -e 's/^listen = .*/listen = "0.0.0.0:7788"/' /etc/mxfed/mxfed.toml
    qs me "systemctl reload mxfed"
    wait_until "me: the reload in the journal" 30 on me bash -c 'journalctl -u mxfed -q -o cat STEP="config reload" | grep "in force now"'
    local reloaded
    reloaded=$(on me journalctl -u mxfed -q -o cat STEP="config reload")
    grep "in force now" <<<"$reloaded" | grep recheck_interval >/dev/null ||
        fail "me: the reload did not apply recheck_interval: $reloaded"
    grep "take a restart" <<<"$reloaded" | grep '"listen"' >/dev/null ||
        fail "me: the reload did not name listen as needing a restart: $reloaded"
    echo "$reloaded" | sed "s/^/   me> /"
    [ "$(on me systemctl show -P MainPID mxfed)" = "$pid_before" ] || fail "me: the reload restarted the agent"
    [ "$(on me systemctl is-active mxfed)" = active ] || fail "me: mxfed is not active after the reload"
    connected me friend || fail "me: the session to friend dropped on reload"
    ok "reload: recheck_interval in force, listen named for a restart, same process, still connected"
    on me mv /etc/mxfed/mxfed.toml.orig /etc/mxfed/mxfed.toml

    say "the agents stay paired across restarts"
    step me "systemctl stop mxfed"
    qs me "systemctl start mxfed"
    wait_until "me back and connected to friend" 60 connected me friend
    step friend "systemctl restart mxfed"
    wait_until "friend back and connected to me" 60 connected friend me
    ok "stopped, started and restarted; paired and connected again"
    for who in me friend; do
        [ "$(on "$who" systemctl show -P NRestarts mxfed)" = 0 ] || fail "$who: mxfed.service restarted on its own"
        if on "$who" journalctl --no-pager -q -o cat -u mxfed -p err | grep .; then
            fail "$who: errors in the agent's journal (above)"
        fi
        if on "$who" journalctl --no-pager -q -o cat -u mxfed |
            grep -E 'fatal:|denied|Read-only file system|not permitted|not supported'; then
            fail "$who: the unit's sandbox got in the agent's way (above)"
        fi
    done
    ok "no restarts, no errors and no permission errors in either journal"

    say "the package: an upgrade keeps the config, purge removes it"
    step friend "apt install --reinstall ./$debname"
    on friend test -f /etc/mxfed/mxfed.toml || fail "friend: the upgrade lost /etc/mxfed/mxfed.toml"
    wait_until "friend back and connected to me after the upgrade" 60 connected friend me
    ok "reinstalled: config kept, agent restarted and connected"
    step friend "apt remove -y mxfed"
    on friend test -f /etc/mxfed/mxfed.toml || fail "friend: apt remove took /etc/mxfed/mxfed.toml"
    state=$(on friend systemctl is-active mxfed || true)
    [ "$state" != active ] || fail "friend: mxfed still running after apt remove"
    step friend "apt purge -y mxfed"
    if on friend test -e /etc/mxfed || on friend test -e /var/lib/mxfed; then
        fail "friend: apt purge left /etc/mxfed or /var/lib/mxfed"
    fi
    on friend test -f /etc/postfix/mxfed/relay_domains || fail "friend: purge removed the maps main.cf names"
    [ "$(on friend systemctl is-active postfix@-)" = active ] || fail "friend: Postfix is not running after the purge"
    ok "removed: config kept; purged: /etc/mxfed and /var/lib/mxfed gone, the maps and Postfix untouched"
    down quiet
    say "ALL QUICK START CHECKS PASSED"
}

down() {
    for who in me friend; do
        if [ -f "$WORK/$who.pid" ]; then
            local pid
            pid=$(cat "$WORK/$who.pid")
            # Only ever our own container (the file may be stale).
            [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd-nspawn ] || continue
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    [ -f "$WORK/dnsmasq.pid" ] && kill "$(cat "$WORK/dnsmasq.pid")" 2>/dev/null || true
    for who in me friend; do
        if ip netns list 2>/dev/null | grep -qw "$TAG-$who"; then
            for pid in $(ip netns pids "$TAG-$who" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$TAG-$who"
        fi
    done
    rm -rf "$WORK"
    [ "${1:-}" = quiet ] || echo "quick start lab removed"
}

case "${1:-}" in
    run) need_suite; run ;;
    down) need_root; down ;;
    # Helpers run in subshells by wait_until.
    _on) shift; on "$@" ;;
    _state) state_of "$2" "$3" ;;
    _rcpt) rcpt_code "$2" "$3" "$4" ;;
    _applied) list_apply "$2" ;;
    *) sed -n '2,29p' "$0"; exit 2 ;;
esac
