#!/usr/bin/env bash
# Installs and builds the peer servers of `sessiond-bench peers`:
#   node-ws.mjs       Node `ws`            (npm, package.json)
#   socketio.mjs      Node `socket.io`     (npm, package.json; WebSocket transport only)
#   py_websockets.py  Python `websockets`  (pip)
#   fastwebsockets/   Rust, its own cargo project (release build) of two binaries:
#                     fastwebsockets-peer (`fastwebsockets` on hyper 1) and axum-peer (axum's
#                     WebSocket with sessiond's buffer sizes: `axum-tuned` in --peers)
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --loglevel=error
python3 -c 'import websockets' 2>/dev/null || pip install -q 'websockets>=13'
cargo build --release --locked --manifest-path fastwebsockets/Cargo.toml
