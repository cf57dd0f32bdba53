#!/usr/bin/env bash
# Installs what the tests need (kcat, Node.js, Go and Sarama from Debian, Python Kafka clients
# in venvs (current and older releases, and two stream-processing frameworks), KafkaJS from
# npm) and runs every test: formatting, lints, unit tests, and the compat suite against the
# real broker.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shale-target}"
venv="${SHALE_TEST_VENV:-$HOME/.cache/shale-venv}"

missing=()
command -v kcat >/dev/null || missing+=(kcat)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v go >/dev/null || missing+=(golang-go)
[ -d /usr/share/gocode/src/github.com/Shopify/sarama ] || missing+=(golang-github-shopify-sarama-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
# Older releases of the Python clients need a venv of their own (they conflict).
older="${SHALE_TEST_OLDER_VENV:-$HOME/.cache/shale-venv-older}"
[ -x "$older/bin/python" ] || python3 -m venv "$older"
"$older/bin/pip" install -q --disable-pip-version-check -r tests/compat/older/requirements.txt
export SHALE_TEST_OLDER_PYTHON="$older/bin/python"
# Stream-processing frameworks (Quix Streams, Faust) pin client releases of their own.
frameworks="${SHALE_TEST_FRAMEWORKS_VENV:-$HOME/.cache/shale-venv-frameworks}"
[ -x "$frameworks/bin/python" ] || python3 -m venv "$frameworks"
"$frameworks/bin/pip" install -q --disable-pip-version-check -r tests/compat/frameworks/requirements.txt
export SHALE_TEST_FRAMEWORKS_PYTHON="$frameworks/bin/python"
# KafkaJS, pinned by tests/compat/kafkajs/package-lock.json, installed outside the checkout.
node_dir="${SHALE_TEST_NODE:-$HOME/.cache/shale-node}"
mkdir -p "$node_dir"
if ! cmp -s tests/compat/kafkajs/package-lock.json "$node_dir/package-lock.json" || [ ! -d "$node_dir/node_modules" ]; then
  cp tests/compat/kafkajs/package.json tests/compat/kafkajs/package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --silent --no-audit --no-fund)
fi
export SHALE_TEST_NODE_MODULES="$node_dir/node_modules"
# Sarama comes from Debian as Go source (no module proxy here), built in GOPATH mode.
go_dir="${SHALE_TEST_GO:-$HOME/.cache/shale-go}"
(cd tests/compat/sarama && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$go_dir/build" \
  CGO_CFLAGS=-Wno-deprecated-declarations go build -o "$go_dir/sarama-scenarios" .)
export SHALE_TEST_SARAMA="$go_dir/sarama-scenarios"

cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo build --release --locked
cargo test --release --locked --workspace
SHALE_BIN="$CARGO_TARGET_DIR/release/shale" "$venv/bin/pytest" -q
