#!/usr/bin/env bash
# Installs the peers' dependencies: Node `ws` (npm) and Python `websockets` (pip).
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --loglevel=error
python3 -c 'import websockets' 2>/dev/null || pip install -q 'websockets>=13'
