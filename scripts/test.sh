#!/bin/bash
# The project's test command (the README's, and what CI runs): set-up, then every test,
# unit and integration (real Docker, real sshd, real mpirun), with the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh            # a finding fails the run before any test
exec /usr/bin/python3 -m pytest -p no:cacheprovider "$@"
