#!/usr/bin/python3
"""What the submit filter adds to every qsub: wall time of one filter run, as qsub runs it.

    /usr/bin/python3 bench/submit_filter.py [--runs N] [--json FILE]

qsub runs ``/bin/sh -c "FILTER 'arg' ... >TMP"`` with the script on stdin, once per
submission (src/cmds/qsub_functions.c). Measured, interleaved so that machine load hits
all alike, N runs each of:

- ``sh -c cat``: what any filter costs at the least (a shell and one process);
- ``python3 -IS -c pass``: the interpreter alone, as the filter starts it;
- the filter on a job WITHOUT an image (the common case: every other job of the cluster);
- the filter on a container job in the short form (``-l image=``: parsing, the site's
  config and policy, the script rewritten).

The filter is this checkout's, installed the way ``torque-docker install --submit-filter``
does into a scratch PBS_HOME, with a site config that allows the image. No root needed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from torque_docker import submitadmin  # noqa: E402

PLAIN = b"#!/bin/bash\n#PBS -l nodes=2:ppn=4,walltime=01:00:00\n#PBS -N solver\ncd $PBS_O_WORKDIR\nmpirun ./solver\n"
CONTAINER = (b"#!/bin/bash\n#PBS -l nodes=2:ppn=4,walltime=01:00:00\n#PBS -l image=lab/openfoam:11\n"
             b"#PBS -l other=model=process\ncd $PBS_O_WORKDIR\nmpirun simpleFoam -parallel\n")


def time_one(command: str, script: bytes, cwd: str, env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(["/bin/sh", "-c", command], input=script, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=cwd, env=env, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: {command!r} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="td-bench-filter-"))
    try:
        conf = root / "torque-docker.conf"
        conf.write_text("[images]\nallowed = lab/* debian:*\n")
        filt = root / submitadmin.FILTER_NAME
        filt.write_text(submitadmin.filter_text("/usr/bin/python3", submitadmin.package_dir()))
        filt.chmod(0o755)
        env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(conf), "HOME": str(root)}
        cases = {
            "sh -c cat (any filter, at the least)": ("cat", PLAIN),
            "python3 -IS -c pass (the interpreter)": ("/usr/bin/python3 -IS -c pass", PLAIN),
            "filter, job without an image": (f"{filt} '-q' 'batch' '-l' 'walltime=1:00:00'", PLAIN),
            "filter, -l image= (checked, rewritten)": (f"{filt} '-q' 'batch'", CONTAINER),
        }
        for command, script in cases.values():     # warm the page cache
            time_one(command, script, str(root), env)
        times = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, (command, script) in cases.items():
                times[name].append(time_one(command, script, str(root), env))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"submit filter cost per qsub, {args.runs} interleaved runs each, load average {load:.2f}, "
          f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}\n")
    print("| what qsub runs | median ms | p90 ms | min ms |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        ordered = sorted(values)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(f"| {name} | {statistics.median(values) * 1000:.1f} | {p90 * 1000:.1f} | {ordered[0] * 1000:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": args.runs, "load": load, "seconds": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
