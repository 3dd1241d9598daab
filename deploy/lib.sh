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
