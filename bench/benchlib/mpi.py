"""The paper's experiment: HPL with 2 ranks natively and in containers, plus an MPI ping-pong.

Every run is a Torque job through the simulator, so native and container runs take the
same path: the same user, the same working directory, the same binaries (built once on
the host, seen by the containers through the bind-mounted working directory), the same
mpirun line. The only difference is the job's ``-l other=image=...`` request:

  native     no image: mpirun on the host (2 local slots, shared memory)
  node       model=node, 1 node x 2 slots: one container, both ranks in it
  process    model=process, 1 node x 2 slots: one container per rank
  node-2x1   model=node, 2 nodes x 1 slot: one container on each simulated node (TCP)
  native-nocma  control: native without Open MPI's single-copy path (ping-pong only)
  pairs      one model=node, run=host job: the ping-pong natively, then in the container,
             back to back, several times (HPL and ping-pong)

Configurations alternate (round r runs them in a rotated order), several rounds each,
so slow phases of this shared machine hit every configuration alike; medians compare.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

from .site import IMAGE, USER, BenchSite

CONFIGS: Dict[str, Dict[str, object]] = {
    "native": {"nodes": [("bnode0", 2)], "other": None, "args": ""},
    "node": {"nodes": [("bnode0", 2)], "other": f"image={IMAGE};model=node", "args": '-hostfile "$PBS_NODEFILE"'},
    "process": {"nodes": [("bnode0", 2)], "other": f"image={IMAGE};model=process",
                "args": '-hostfile "$PBS_NODEFILE"'},
    "node-2x1": {"nodes": [("bnode0", 1), ("bnode1", 1)], "other": f"image={IMAGE};model=node",
                 "args": '-hostfile "$PBS_NODEFILE"'},
    # A control, not a product configuration: native with the single-copy setting container
    # jobs get under Docker's default seccomp profile (it blocks CMA's process_vm_readv), to
    # tell that setting's cost from the container's. Ping-pong only.
    "native-nocma": {"nodes": [("bnode0", 2)], "other": None, "args": "--mca btl_vader_single_copy_mechanism none",
                     "hpl": False},
    # Back-to-back pairs in ONE job (run=host, model=node): the ping-pong natively on the
    # host, then with both ranks in the job's container, seconds apart, order alternating.
    # On this VM the ping-pong flips between a fast and a slow mode within seconds, natively
    # too, so runs a minute apart (separate jobs) compare different modes; pairs this close
    # mostly compare like with like. HPL (both BLAS) and the ping-pong, each pair back to back.
    "pairs": {"nodes": [("bnode0", 2)], "other": f"image={IMAGE};model=node;run=host", "args": "", "hpl": False,
              "pairs": 3},
}
PAIR_SIDES = {"native": "host", "node": "inside-the-bench-image"}

HPL_DAT = """HPLinpack benchmark input file
torque-docker bench
HPL.out      output file name (if any)
8            device out (6=stdout,7=stderr,file)
1            # of problems sizes (N)
{n}          Ns
1            # of NBs
{nb}         NBs
0            PMAP process mapping (0=Row-,1=Column-major)
1            # of process grids (P x Q)
1            Ps
2            Qs
16.0         threshold
1            # of panel fact
2            PFACTs (0=left, 1=Crout, 2=Right)
1            # of recursive stopping criterium
4            NBMINs (>= 1)
1            # of panels in recursion
2            NDIVs
1            # of recursive panel fact.
1            RFACTs (0=left, 1=Crout, 2=Right)
1            # of broadcast
1            BCASTs (0=1rg,1=1rM,2=2rg,3=2rM,4=Lng,5=LnM)
1            # of lookahead depth
1            DEPTHs (>=0)
2            SWAP (0=bin-exch,1=long,2=mix)
64           swapping threshold
0            L1 in (0=transposed,1=no-transposed) form
0            U  in (0=transposed,1=no-transposed) form
1            Equilibration (0=no,1=yes)
8            memory alignment in double (> 0)
"""

SCRIPT = """#!/bin/bash
cd "$PBS_O_WORKDIR/{rundir}" || exit 3
MPI="mpirun -np 2 {args}"
echo "BENCH section where"
$MPI sh -c 'echo "BENCH rank=$OMPI_COMM_WORLD_RANK in=$(cat /etc/torque-docker-test-marker 2>/dev/null || echo host) cpus=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
{sections}
echo "BENCH section done"
"""
SECTION_HPL = """echo "BENCH section {name}"
(cd {name} && $MPI --report-bindings -x OPENBLAS_NUM_THREADS=1 ../../bin/{binary})
"""
SECTION_PINGPONG = """echo "BENCH section pingpong"
$MPI ../bin/pingpong {max_bytes}
"""

PAIRS_SCRIPT = """#!/bin/bash
cd "$PBS_O_WORKDIR/{rundir}" || exit 3
native() {{ env -u OMPI_MCA_orte_default_hostfile mpirun -np 2 --host localhost:2 "$@"; }}
node() {{ mpirun -np 2 -hostfile "$PBS_NODEFILE" "$@"; }}
echo "BENCH section where"
for side in native node; do
    $side sh -c 'echo "BENCH rank=$OMPI_COMM_WORLD_RANK in=$(cat /etc/torque-docker-test-marker 2>/dev/null || echo host) cpus=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
done
for i in $(seq 1 {pairs}); do
    if [ $((i % 2)) = 1 ]; then order="native node"; else order="node native"; fi
    for side in $order; do
        echo "BENCH pair $i $side"
{hpl}        $side ../bin/pingpong {max_bytes} || exit 4
    done
done
echo "BENCH section done"
"""
PAIR_HPL = """        echo "BENCH pairhpl {blas}"
        (cd hpl-{blas} && $side -x OPENBLAS_NUM_THREADS=1 ../../bin/xhpl-{blas}) || exit 4
"""
PAIR = re.compile(r"BENCH pair (\d+) (\S+)")

XHPL = re.compile(r"XHPL N=(\d+) NB=(\d+) P=(\d+) Q=(\d+) time=([\d.]+) gflops=([\d.]+) passed=(\d)")
PINGPONG = re.compile(r"PINGPONG bytes=(\d+) iters=(\d+) lat_us=([\d.]+) bw_MBps=([\d.]+)"
                      r"(?: lat_min_us=([\d.]+) bw_max_MBps=([\d.]+))?")
RANK = re.compile(r"BENCH rank=(\d+) in=(\S+) cpus=(\S*)")
BOUND = re.compile(r"MCW rank (\d+) (bound to .*|is not bound.*)")


def prepare(site: BenchSite, binaries: Path) -> Path:
    bindir = site.workdir / "bin"
    site.install_dir(bindir)
    for name in ("xhpl-openblas", "xhpl-refblas", "pingpong"):
        shutil.copy2(binaries / name, bindir / name)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(bindir)], check=True)
    return bindir


def parse_output(stdout: str, stderr: str) -> Dict[str, object]:
    out: Dict[str, object] = {"hpl": {}, "pingpong": [], "ranks": [], "bindings": [], "pairs": []}
    section = ""
    target = out["pingpong"]
    for line in stdout.splitlines():
        if line.startswith("BENCH section "):
            section = line.split()[-1]
            continue
        m = PAIR.match(line)
        if m:
            out["pairs"].append({"pair": int(m.group(1)), "side": m.group(2), "pingpong": [], "hpl": {}})  # type: ignore
            target = out["pairs"][-1]["pingpong"]  # type: ignore[index]
            continue
        if line.startswith("BENCH pairhpl "):
            section = "pairhpl-" + line.split()[-1]
            continue
        m = XHPL.search(line)
        if m and section.startswith("pairhpl-") and out["pairs"]:
            out["pairs"][-1]["hpl"][section[8:]] = {  # type: ignore[index]
                "N": int(m.group(1)), "NB": int(m.group(2)), "seconds": float(m.group(5)),
                "gflops": float(m.group(6)), "passed": m.group(7) == "1"}
            continue
        m = XHPL.search(line)
        if m and section.startswith("hpl-"):
            out["hpl"][section[4:]] = {"N": int(m.group(1)), "NB": int(m.group(2)), "seconds": float(m.group(5)),
                                       "gflops": float(m.group(6)), "passed": m.group(7) == "1"}
        m = PINGPONG.search(line)
        if m:
            target.append({"bytes": int(m.group(1)), "lat_us": float(m.group(3)),
                                    "bw_MBps": float(m.group(4)), "lat_min_us": float(m.group(5) or m.group(3)),
                                    "bw_max_MBps": float(m.group(6) or m.group(4))})
        m = RANK.search(line)
        if m:
            out["ranks"].append({"rank": int(m.group(1)), "in": m.group(2), "cpus": m.group(3)})
    for line in stderr.splitlines():
        m = BOUND.search(line)
        if m:
            out["bindings"].append(f"rank {m.group(1)} {m.group(2).strip()}")
    return out


def one_run(site: BenchSite, config: str, rnd: int, hpl_sizes: Dict[str, Sequence[int]],
            pingpong_max: int) -> Dict[str, object]:
    spec = CONFIGS[config]
    rundir = f"{config}-r{rnd}"
    base = site.workdir / rundir
    site.install_dir(base)
    sections = []
    for blas, (n, nb) in (hpl_sizes.items() if spec.get("hpl", True) else ()):
        site.install_dir(base / f"hpl-{blas}")
        (base / f"hpl-{blas}" / "hpccinf.txt").write_text(HPL_DAT.format(n=n, nb=nb))
        sections.append(SECTION_HPL.format(name=f"hpl-{blas}", binary=f"xhpl-{blas}"))
    sections.append(SECTION_PINGPONG.format(max_bytes=pingpong_max))
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(base)], check=True)
    script = SCRIPT.format(rundir=rundir, args=spec["args"], sections="".join(sections))
    if spec.get("pairs"):
        for blas, (n, nb) in hpl_sizes.items():
            site.install_dir(base / f"hpl-{blas}")
            (base / f"hpl-{blas}" / "hpccinf.txt").write_text(HPL_DAT.format(n=n, nb=nb))
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(base)], check=True)
        script = PAIRS_SCRIPT.format(rundir=rundir, pairs=spec["pairs"], max_bytes=pingpong_max,
                                     hpl="".join(PAIR_HPL.format(blas=blas) for blas in hpl_sizes))
    job = site.job(script, spec["nodes"], spec["other"], name=f"mpi-{config}")  # type: ignore[arg-type]
    result = site.cluster.run(job)
    row: Dict[str, object] = {"config": config, "round": rnd, "jobid": job.jobid,
                              "exit_status": result.exit_status, "loadavg_1min": os.getloadavg()[0]}
    row.update(parse_output(result.stdout, result.stderr))
    expected_in = "host" if spec["other"] is None else "inside-the-bench-image"
    ranks = row["ranks"]
    if spec.get("pairs"):     # the native pair's ranks on the host, then the container's
        row["placement_ok"] = [r["in"] for r in ranks] == ["host", "host"] + [PAIR_SIDES["node"]] * 2  # type: ignore
    else:
        row["placement_ok"] = len(ranks) == 2 and all(r["in"] == expected_in for r in ranks)  # type: ignore[index]
    hpl_ok = all(blas in row["hpl"] and row["hpl"][blas]["passed"]  # type: ignore[index]
                 for blas in (hpl_sizes if spec.get("hpl", True) else ()))
    measured = (len(row["pairs"]) == 2 * int(spec["pairs"])  # type: ignore
                and all(p["pingpong"] and all(p["hpl"].get(b, {}).get("passed") for b in hpl_sizes)  # type: ignore
                        for p in row["pairs"])  # type: ignore
                if spec.get("pairs") else bool(row["pingpong"]))
    row["ok"] = result.exit_status == 0 and row["placement_ok"] and hpl_ok and measured
    if not row["ok"]:
        row["error"] = (result.stderr.strip() + "\n" + result.stdout.strip())[-1500:]
    row["leftover_containers"] = len(site.containers_of(job.jobid))
    return row


def run(site: BenchSite, binaries: Path, configs: Sequence[str], rounds: int, hpl_sizes: Dict[str, Sequence[int]],
        pingpong_max: int, say=print) -> List[Dict[str, object]]:
    prepare(site, binaries)
    rows = []
    for rnd in range(rounds):
        order = list(configs[rnd % len(configs):]) + list(configs[:rnd % len(configs)])
        for config in order:
            row = one_run(site, config, rnd, hpl_sizes, pingpong_max)
            rows.append(row)
            hpl = row["hpl"]
            desc = ", ".join(f"HPL {b} {v['gflops']:.2f} GFLOPS" for b, v in hpl.items())  # type: ignore[union-attr]
            small = next((p for p in row["pingpong"] if p["bytes"] == 4), None)  # type: ignore[union-attr]
            big = row["pingpong"][-1] if row["pingpong"] else None  # type: ignore[index]
            pp = (f", ping-pong 4 B {small['lat_us']:.2f} us, {big['bytes'] >> 20} MiB {big['bw_MBps']:.0f} MB/s"
                  if small and big else "")
            for p in row["pairs"]:  # type: ignore[union-attr]
                last = p["pingpong"][-1] if p["pingpong"] else None
                first = next((x for x in p["pingpong"] if x["bytes"] == 4), None)
                hpl_text = "".join(f"HPL {b} {v['gflops']:.2f}, " for b, v in p["hpl"].items())
                if first and last:
                    pp += (f"\n      pair {p['pair']} {p['side']:6s}: {hpl_text}"
                           f"4 B {first['lat_us']:.2f} us, 4 MiB {last['bw_MBps']:.0f} MB/s")
            status = "" if row["ok"] else f"  FAILED: {str(row.get('error', ''))[-300:]}"
            say(f"  MPI round {rnd + 1}/{rounds} {config:8s}: {desc}{pp}{status}")
    return rows
