#!/bin/bash
# The main job: set-up, then a real containerised 2-node MPI job through the hooks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec /usr/bin/python3 scripts/demo.py
