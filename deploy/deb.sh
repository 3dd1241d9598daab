#!/usr/bin/env bash
# Builds the Debian package: target/debian/mxfed_<version>_amd64.deb.
#
#   1. cargo build --release --locked
#   2. the man pages (mxfed(1), one per subcommand, mxfed.toml(5)) and the
#      bash, zsh and fish completions, generated from the code by the
#      binary just built (`mxfed generate-docs`, hidden) into
#      target/release/assets/
#   3. cargo deb --no-build --locked (the layout is [package.metadata.deb]
#      in cli/Cargo.toml), which prints the package's path last
#
# Installs cargo-deb (cargo install --locked) if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
    echo "deploy/deb.sh: installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)" >&2
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi

cargo build --release --locked
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
assets="${target_dir:-target}/release/assets"
rm -rf "$assets"
"${target_dir:-target}/release/mxfed" generate-docs --out "$assets" >/dev/null
# Man pages are shipped compressed, as Debian's are (man reads them so).
gzip -9n "$assets"/man/man*/*
# cargo deb prints the package's path: the last line of this script's output.
cargo deb --no-build --locked -p mxfed
