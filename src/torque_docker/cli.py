"""The one place that maps exceptions to exit codes and one-line messages.

pbs_mom gives exit codes a meaning (docs/torque-facts.md):
- MS prologue: 0 runs the job, 1 aborts it (user errors), anything else requeues it;
- sister prologue.parallel: any non-zero rejects the join AND marks the node down, so a
  sister fails only for a proven fault of the node itself (``errors.is_node_fault``);
  whatever the job or another user may have caused is left to the MS, which finds the
  sister's container missing;
- epilogues: the code is only logged; we exit 0 and log what failed.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from .errors import NotOurs, TorqueDockerError, is_node_fault
from .request import is_container_job
from .torque import resource_list_of

EXIT_OK, EXIT_ABORT, EXIT_REQUEUE = 0, 1, 2


def _say(message: str) -> None:
    print(f"torque-docker: {message}", file=sys.stderr, flush=True)


def hook_exit_code(kind: str, error: Optional[BaseException]) -> int:
    if error is None or isinstance(error, NotOurs) or kind.startswith("epilogue"):
        return EXIT_OK
    user_error = isinstance(error, TorqueDockerError) and error.user_error
    if kind == "prologue":
        return EXIT_ABORT if user_error else EXIT_REQUEUE
    return EXIT_REQUEUE if is_node_fault(error) else EXIT_OK   # prologue.parallel: non-zero = node DOWN


def _sister_note(kind: str, error: BaseException) -> str:
    """What a sister's failure does to the node, for the admin log."""
    if kind != "prologue.parallel":
        return ""
    if is_node_fault(error):
        return " (a fault of this node: pbs_mom marks it down)"
    return " (not a fault of this node: left to the mother superior, which reports it to the job)"


def skip_distutils_shim() -> None:
    """setuptools installs (from a .pth file, at interpreter start) a finder that answers
    ``import distutils`` with its own copy: the Docker SDK's one version check then costs
    0.3 s of every hook's run (measured by the start-up benchmark). The standard library's
    distutils (Python < 3.12) does the same job."""
    if sys.version_info < (3, 12):
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != "_distutils_hack"]


def run_hook(kind: str, argv: Sequence[str]) -> int:
    """Entry of every mom_priv hook. Never raises; returns the exit code for pbs_mom."""
    if not is_container_job(resource_list_of(kind, argv)):
        return EXIT_OK                      # not ours: touch nothing, import nothing heavy
    skip_distutils_shim()
    from .hookrun import REFUSED, REFUSED_TO_STARTER, REQUEUE, Hook

    hook = Hook(kind, argv, os.environ)
    jobid = hook.jobid
    error: Optional[BaseException] = None
    try:
        hook.run()
    except NotOurs:
        return EXIT_OK
    except TorqueDockerError as exc:
        error = exc
        hook.log.error(jobid, f"{kind}: {exc}{_sister_note(kind, exc)}")
        if kind != "prologue":    # the MS prologue explains itself in ms_prologue_failed
            _say(f"job {jobid}: {exc}")
    except Exception as exc:  # a bug: say so in one line, keep the trace for the admin
        error = exc
        import traceback      # here: its imports cost every hook ~10 ms
        hook.log.error(jobid, f"{kind}: internal error: {exc!r}{_sister_note(kind, exc)}\n{traceback.format_exc()}")
        _say(f"job {jobid}: internal error in {kind}: {exc!r}; please report it to the admin")
    if kind == "prologue" and error is not None:
        # Requeued; refused, the job starter tells the user (the job "runs" and fails); refused
        # without a starter: abort.
        return {REQUEUE: EXIT_REQUEUE, REFUSED_TO_STARTER: EXIT_OK, REFUSED: EXIT_ABORT}[hook.ms_prologue_failed(error)]
    return hook_exit_code(kind, error)


def main(argv: Optional[List[str]] = None) -> int:
    """``torque-docker`` admin command."""
    skip_distutils_shim()
    from . import admin
    try:
        return admin.main(argv if argv is not None else sys.argv[1:])
    except TorqueDockerError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
