"""The one place that maps exceptions to exit codes and one-line messages.

pbs_mom gives exit codes a meaning (torque-facts.md):
- MS prologue: 0 runs the job, 1 aborts it (user errors), anything else requeues it;
- sister prologue.parallel: any non-zero rejects the join AND marks the node down, so a
  sister fails only for a real node fault; the MS catches users' mistakes;
- epilogues: the code is only logged; we exit 0 and log what failed.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import List, Optional, Sequence

from .errors import NotOurs, TorqueDockerError
from .request import is_container_job

EXIT_OK, EXIT_ABORT, EXIT_REQUEUE = 0, 1, 2


def _say(message: str) -> None:
    print(f"torque-docker: {message}", file=sys.stderr, flush=True)


def hook_exit_code(kind: str, error: Optional[BaseException]) -> int:
    if error is None or isinstance(error, NotOurs) or kind.startswith("epilogue"):
        return EXIT_OK
    user_error = isinstance(error, TorqueDockerError) and error.user_error
    if kind == "prologue":
        return EXIT_ABORT if user_error else EXIT_REQUEUE
    return EXIT_OK if user_error else EXIT_REQUEUE   # prologue.parallel


def run_hook(kind: str, argv: Sequence[str]) -> int:
    """Entry of every mom_priv hook. Never raises; returns the exit code for pbs_mom."""
    args = list(argv) + [""] * 12
    resource_list = args[5] if kind.startswith("prologue") else args[6]
    if not is_container_job(resource_list):
        return EXIT_OK                      # not ours: touch nothing, import nothing heavy
    from . import config, lifecycle, torque
    from .log import Log, NULL

    jobid, log, error = args[1], NULL, None
    try:
        cfg = config.load()
        log = Log(cfg.log_destination, cfg.node_name())
        ctx = torque.context_from(kind, argv, os.environ)
        if kind.startswith("prologue"):
            setup = lifecycle.prologue(ctx, cfg, log)
            if ctx.is_ms:
                print(setup.summary, flush=True)
        else:
            started = time.monotonic()
            result = lifecycle.teardown(cfg, ctx.jobid, nodefile=ctx.nodefile if ctx.is_ms else None, log=log)
            for problem in result.errors:
                log.error(jobid, f"{kind}: {problem} (torque-docker gc will retry)")
            if ctx.is_ms:
                status = "with errors, see the admin log" if result.errors else "cleanly"
                print(f"torque-docker: job {jobid}: teardown on {cfg.node_name()} finished {status} "
                      f"({result.removed} container(s) removed) in {time.monotonic() - started:.1f} s", flush=True)
    except NotOurs:
        return EXIT_OK
    except TorqueDockerError as exc:
        error = exc
        log.error(jobid, f"{kind}: {exc}")
        _say(f"job {jobid}: {exc}")
    except Exception as exc:  # a bug: say so in one line, keep the trace for the admin
        error = exc
        log.error(jobid, f"{kind}: internal error: {exc!r}\n{traceback.format_exc()}")
        _say(f"job {jobid}: internal error in {kind}: {exc!r}; please report it to the admin")
    return hook_exit_code(kind, error)


def main(argv: Optional[List[str]] = None) -> int:
    """``torque-docker`` admin command."""
    from . import admin
    try:
        return admin.main(argv if argv is not None else sys.argv[1:])
    except TorqueDockerError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
