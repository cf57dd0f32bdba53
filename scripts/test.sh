#!/usr/bin/env bash
# Installs what the tests need (kcat from Debian, Python Kafka clients in a venv) and runs
# every test: formatting, lints, unit tests, and the compat suite against the real broker.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shale-target}"
venv="${SHALE_TEST_VENV:-$HOME/.cache/shale-venv}"

if ! command -v kcat >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kcat >/dev/null
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt

cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo build --release --locked
cargo test --release --locked --workspace
SHALE_BIN="$CARGO_TARGET_DIR/release/shale" "$venv/bin/pytest" -q
