#!/usr/bin/python3
"""torque-docker benchmarks: one command, side by side, ratios.

    bash bench/run.sh [--quick]          # installs what the bench needs, builds, then runs this
    /usr/bin/python3 bench/run.py [--quick] [--only startup|mpi] [--rounds N] [--reps N]

1. Start-up/teardown through the real hooks (tests/momsim.py plays pbs_mom on two
   simulated nodes bnode0/bnode1), model=node and model=process, 1..16 slots per node,
   against a floor measured in the same run (bare `docker run -d` until sshd answers,
   `docker rm -f`).
2. The paper's experiment: HPL with 2 ranks natively and in containers (OpenBLAS and the
   reference BLAS), plus an MPI ping-pong; configurations alternate, several rounds.

Prints markdown tables; writes results/<run id>/ (raw.json, CSVs, summary.md, chart.png).
Must run as root (it plays pbs_mom). Needs the bench image and binaries: run.sh makes them.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from benchlib import mpi, report, startup  # noqa: E402
from benchlib.site import IMAGE, BenchSite  # noqa: E402

CACHE = Path(os.environ.get("TD_BENCH_CACHE", "/var/tmp/td-bench-cache"))
MODES = {
    # rounds of the MPI configurations, HPL (N, NB) per BLAS, ping-pong max size;
    # repetitions of the start-up jobs, slot counts, variants
    "full": dict(rounds=7, configs=["native", "node", "process", "native-nocma", "pairs"],
                 hpl={"openblas": (8000, 192), "refblas": (3000, 64)}, pingpong_max=4 << 20,
                 reps=2, slots=[1, 2, 4, 8, 16], variants=["node", "process", "node*"]),
    "quick": dict(rounds=3, configs=["native", "node", "process", "native-nocma", "pairs"],
                  hpl={"openblas": (6000, 192)}, pingpong_max=4 << 20,
                  reps=1, slots=[1, 2, 4, 8, 16], variants=["node", "process"]),
}


def say(text: str) -> None:
    print(text, flush=True)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


def package_versions(image: bool) -> dict:
    names = ["libopenmpi3", "openmpi-bin", "libopenblas0-pthread", "libblas3"]
    argv = ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *names]
    if image:
        argv = ["docker", "run", "--rm", "--network", "none", IMAGE, *argv]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def preflight(need_mpi: bool) -> dict:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the simulator plays pbs_mom); see bench/run.sh")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        sys.exit(f"bench: image {IMAGE} missing: run bench/run.sh (it builds it)")
    info = {"host_packages": package_versions(False), "image_packages": package_versions(True)}
    if need_mpi:
        missing = [n for n in ("xhpl-openblas", "xhpl-refblas", "pingpong") if not (CACHE / "bin" / n).exists()]
        if missing:
            sys.exit(f"bench: {', '.join(missing)} missing in {CACHE / 'bin'}: run bench/run.sh (it builds them)")
        differ = {k: (v, info["image_packages"].get(k)) for k, v in info["host_packages"].items()
                  if info["image_packages"].get(k) != v}
        if differ:
            sys.exit(f"bench: host and image packages differ, native and container runs would not run the same "
                     f"code: {differ}")
    return info


#: The integration tests' lock (tests/integration/conftest.py): other checkouts' integration
#: runs on this machine wait while the benchmark holds it. On 2 cores one busy process
#: beside a 2-rank ping-pong halves its bandwidth or worse, which made results bimodal.
RUN_LOCK = "/var/tmp/torque-docker-integration.lock"


def quiet_machine(wait: float = 3600.0):
    """Take the integration lock (waiting at most ``wait`` s); returns (fd, seconds waited)."""
    fd = os.open(RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    start, waited_once = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, time.monotonic() - start
        except BlockingIOError:
            if time.monotonic() - start > wait:
                os.close(fd)
                raise SystemExit(f"bench: {RUN_LOCK} held by another run for {wait:.0f} s")
            if not waited_once:
                say(f"waiting for {RUN_LOCK} (an integration run of another checkout)")
                waited_once = True
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (about 5 minutes)")
    parser.add_argument("--only", choices=["startup", "mpi"], help="run one part only")
    parser.add_argument("--rounds", type=int, help="MPI rounds (each configuration once per round)")
    parser.add_argument("--configs", help="MPI configurations, comma-separated (default: all)")
    parser.add_argument("--reps", type=int, help="repetitions of every start-up job")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<run id>)")
    parser.add_argument("--render", type=Path, metavar="DIR",
                        help="only redo summary.md, summary.json and chart.png from DIR/raw.json")
    args = parser.parse_args()
    if args.render:
        say(finish(args.render, json.loads((args.render / "raw.json").read_text())))
        return 0
    mode = "quick" if args.quick else "full"
    plan = dict(MODES[mode])
    if args.rounds:
        plan["rounds"] = args.rounds
    if args.configs:
        plan["configs"] = args.configs.split(",")
    if args.reps:
        plan["reps"] = args.reps
    do_startup = args.only in (None, "startup")
    do_mpi = args.only in (None, "mpi")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or BENCH / "results" / run_id
    out.mkdir(parents=True, exist_ok=True)
    info = preflight(do_mpi)
    dirty = bool(git("status", "--porcelain", "--", "src", "hooks", "templates"))
    meta = {"loadavg_start": os.getloadavg(), "run_id": run_id, "mode": mode, "plan": plan, "commit": git("rev-parse", "--short", "HEAD")
            + ("+dirty-src" if dirty else ""), "host_cpus": os.cpu_count(), "image": IMAGE,
            "seccomp_profile": "packaging/seccomp-cma.json (node, process)",
            "docker": subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True,
                                     text=True).stdout.strip(), **info}
    say(f"# torque-docker benchmarks, {mode} run {run_id} (commit {meta['commit']}), results in {out}")
    lock_fd, waited = quiet_machine()
    meta["waited_for_lock_s"] = round(waited, 1)
    t0 = time.monotonic()
    raw: dict = {"meta": meta}
    site = BenchSite()
    try:
        if do_startup:
            say(f"\n## start-up/teardown: {plan['reps']} rep(s) x slots {plan['slots']} x {plan['variants']}")
            raw["startup"] = startup.run(site, run_id, plan["slots"], plan["reps"], plan["variants"], say=say)
        if do_mpi:
            say(f"\n## MPI: {plan['rounds']} round(s) x {plan['configs']}, HPL {plan['hpl']}")
            raw["mpi"] = mpi.run(site, CACHE / "bin", plan["configs"], plan["rounds"], plan["hpl"],
                                 plan["pingpong_max"], say=say)
    finally:
        site.close()
        meta["wall_minutes"] = (time.monotonic() - t0) / 60
        meta["loadavg_end"] = os.getloadavg()
        report.write_raw(out, raw)
        os.close(lock_fd)
    text = finish(out, raw)
    meta = raw["meta"]
    say("\n" + text)
    say(f"results: {out} (summary.md, chart.png, raw.json, *.csv); {meta['wall_minutes']:.1f} min")
    latest = BENCH / "results" / "latest"
    if out.parent == BENCH / "results":
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    return 0


def finish(out: Path, raw: dict) -> str:
    """summary.json, summary.md and chart.png from the raw numbers; returns the markdown."""
    meta = raw["meta"]
    st = report.summarize_startup(raw["startup"]) if raw.get("startup") else None
    mp = report.summarize_mpi(raw["mpi"]) if raw.get("mpi") else None
    goals = report.targets(st, mp)
    profile = (raw.get("startup") or {}).get("profile")
    summary = {"meta": meta, "startup": st, "mpi": mp, "targets": goals, "profile": profile}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    text = report.markdown(meta, st, mp, goals)
    if profile:
        text += "\n**Fixed costs** (median seconds, measured separately): " + ", ".join(
            f"{k} {v:.3f}" for k, v in profile.items() if isinstance(v, float)) + "\n"
    failed = [f"{h['variant']}/{h['slots']}" for h in (st or {}).get("hooks", []) if h["ok"] < h["runs"]]
    failed += [c for c, s in (mp or {}).items() if s["ok"] < s["runs"]]
    if failed:
        text += f"\nSome runs failed (their errors are in summary.json): {', '.join(failed)}\n"
    (out / "summary.md").write_text(text)
    report.chart(out / "chart.png", st, mp, f"torque-docker bench {meta['run_id']} ({meta['mode']}), "
                 f"commit {meta['commit']}, {meta['host_cpus']} CPUs")
    return text


if __name__ == "__main__":
    sys.exit(main())
