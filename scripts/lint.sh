#!/bin/bash
# Static checks, run by scripts/test.sh before the tests (and alone: bash scripts/lint.sh).
# pyflakes: unused imports and names, undefined names, in everything Python we ship or run.
# mypy: the type hints of the package (settings in setup.cfg). Both from Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python_files=(src tests bench scripts)
for hook in src/torque_docker/hooks/*; do
    python_files+=("$hook")                  # the mom_priv hooks: Python without a .py name
done
/usr/bin/python3 -m pyflakes "${python_files[@]}"
/usr/bin/python3 -m mypy --cache-dir=/dev/null src/torque_docker
