"""Every test runs the code of the checkout it belongs to, never an installed copy.

``scripts/setup.sh`` installs the package for /usr/bin/python3 (the hooks need it there on
a real node), but a machine may also hold another checkout's install or an RPM's: tests
that imported that copy would prove nothing about this one. So the checkout's ``src``
goes first on ``sys.path`` here, and the integration tests give the hooks they install an
interpreter that does the same (``tests/integration/conftest.py``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
# Subprocesses the tests start themselves (the admin CLI, helpers run as a user) too.
os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
