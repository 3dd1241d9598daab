#!/usr/bin/env bash
# README's test command. On a fresh Debian machine with a Rust toolchain, as
# root: installs what the tests use, builds the Debian package that the
# quick-start test installs in its booted systems, then runs the whole
# suite (`cargo test --workspace --locked`). Extra arguments go to
# `cargo test` (e.g. `bash deploy/test.sh -- postfix::`).
#
#   the packages in deploy/test-packages (apt-get; what each is for is there)
#   cargo-deb (cargo install)  builds the package (deploy/deb.sh)
#
# Not root: nothing is installed; the script says what it assumes.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t packages < <(grep -v '^#' deploy/test-packages)
if [ "$(id -u)" = 0 ]; then
    need=()
    for pkg in "${packages[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        echo "deploy/test.sh: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
else
    echo "deploy/test.sh: not root; assuming ${packages[*]} are installed" >&2
fi

# The package the quick-start test installs (`apt install ./mxfed_*.deb`):
# built first, as cargo cannot build while it runs the tests.
bash deploy/deb.sh

exec cargo test --workspace --locked "$@"
