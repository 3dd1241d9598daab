# Helpers shared by deploy/lab.sh and deploy/quickstart.sh, which source
# this file and define their own `fail MESSAGE` (it must exit).

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }

# wait_until DESCRIPTION SECONDS COMMAND...: runs COMMAND until it succeeds,
# or fails the script after SECONDS.
wait_until() {
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for: $what"
        sleep 0.3
    done
}

# install_missing COMMAND=PACKAGE...: installs each PACKAGE whose COMMAND is
# not on the PATH, in one apt-get run.
install_missing() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        say "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# SMTP_DIALOG, run as `bash -c "$SMTP_DIALOG" HOST_IP CMDS...` (inside the
# right network namespace): talks SMTP to HOST_IP:25 and prints the last
# line of each reply (the greeting first, then one per command, then QUIT's).
SMTP_DIALOG='
    exec 3<>"/dev/tcp/$0/25" || exit 1
    reply() { local l; while IFS= read -r -t 10 l <&3; do [ "${l:3:1}" = " " ] && { echo "$l"; break; }; done; }
    reply
    for c in "$@"; do printf "%s\r\n" "$c" >&3; reply; done
    printf "QUIT\r\n" >&3; reply
'

# Readers of `mxfed status --json` on stdin.
# status_state DOMAIN: accepted/refused/pending, as judged here.
status_state() {
    tr -d ' \n' | grep -o "{\"domain\":\"$1\",[^}]*}" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}
# status_connected PEER: succeeds if PEER is connected.
status_connected() { grep -A3 "\"name\": \"$1\"" | grep -q '"connected": true'; }
