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
import time
import traceback
from typing import List, Optional, Sequence

from .errors import ConfigError, NotOurs, TorqueDockerError, is_node_fault
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
    args = list(argv) + [""] * 12
    resource_list = args[5] if kind.startswith("prologue") else args[6]
    if not is_container_job(resource_list):
        return EXIT_OK                      # not ours: touch nothing, import nothing heavy
    skip_distutils_shim()
    from . import config, lifecycle, torque
    from .log import Log, NULL

    jobid, log, cfg = args[1], NULL, None
    error: Optional[BaseException] = None
    attempt: Optional[int] = None
    try:
        try:
            cfg = config.load()
        except ConfigError:
            # The site's mistake stops the hook as a node fault; what could be read still
            # names the admin log and the state directory (attempts, the refusal).
            cfg = config.lenient()
            log = Log(cfg.log_destination, cfg.node_name())
            raise
        log = Log(cfg.log_destination, cfg.node_name())
        ctx = torque.context_from(kind, argv, os.environ)
        if kind == "prologue":
            attempt = count_attempt(cfg, jobid, log)
            if attempt > cfg.jobs_max_attempts:
                from .errors import NodeFault
                raise NodeFault(f"the set-up of this job failed or was stopped {attempt - 1} times on this node "
                                f"({cfg.node_name()})", "tell the admin: the torque-docker log of that node says why")
        if kind.startswith("prologue"):
            from .sweep import hook_running
            with hook_running(cfg, ctx.jobid):      # no sweep removes the job while it is set up
                setup = lifecycle.prologue(ctx, cfg, log)
            if ctx.is_ms:
                print(setup.summary, flush=True)
        else:
            started = time.monotonic()
            note = lifecycle.refusal_note(cfg, ctx.jobid) if ctx.is_ms else None
            if note:
                print(note, flush=True)
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
        log.error(jobid, f"{kind}: {exc}{_sister_note(kind, exc)}")
        if kind != "prologue":    # the MS prologue explains itself in ms_prologue_failed
            _say(f"job {jobid}: {exc}")
    except Exception as exc:  # a bug: say so in one line, keep the trace for the admin
        error = exc
        log.error(jobid, f"{kind}: internal error: {exc!r}{_sister_note(kind, exc)}\n{traceback.format_exc()}")
        _say(f"job {jobid}: internal error in {kind}: {exc!r}; please report it to the admin")
    if kind == "prologue" and error is not None:
        return ms_prologue_failed(args, cfg or config.defaults(), error, log, attempt)
    return hook_exit_code(kind, error)


def count_attempt(cfg, jobid: str, log) -> int:
    """Count this start of the job on this node BEFORE any work: a prologue that pbs_mom kills
    at $prologalarm never runs the code after its work, and Torque requeues it at once
    (docs/torque-facts.md), so an attempt counted only on failure would let it loop forever.
    Past ``[jobs] max_attempts`` the job is refused at once, without trying again."""
    from .state import NodeState
    try:
        state = NodeState(cfg.paths_state_dir)
        state.ensure()
        return state.count_attempt(jobid)
    except Exception as exc:   # cannot count: one try, never a blind loop
        log.error(jobid, f"cannot count attempts: {exc}")
        return cfg.jobs_max_attempts


def ms_prologue_failed(args: Sequence[str], cfg, error: BaseException, log, attempt: Optional[int] = None) -> int:
    """Requeue a node fault a bounded number of times; refuse everything else where the user sees it.

    Torque requeues an MS prologue exit > 1 at once and forever (docs/torque-facts.md), so
    attempts are counted per job on the node (before the work: count_attempt); past
    ``[jobs] max_attempts`` the fault is explained to the user like a refusal (and stays in
    the admin log).
    """
    from . import lifecycle, refusal, torque
    from .state import NodeState

    jobid, user = args[1], args[2]
    user_error = isinstance(error, TorqueDockerError) and error.user_error
    attempts = 0
    if not user_error:
        if attempt is None:          # failed before it could count (e.g. the config): count now
            try:
                attempts = NodeState(cfg.paths_state_dir).count_attempt(jobid)
            except Exception as exc:   # cannot count: do not loop blindly
                log.error(jobid, f"cannot count attempts: {exc}")
                attempts = cfg.jobs_max_attempts
        else:
            attempts = attempt
        if attempts < cfg.jobs_max_attempts:
            log.warning(jobid, f"node fault, attempt {attempts} of {cfg.jobs_max_attempts}: requeued")
            return EXIT_REQUEUE
    try:                             # refused: it does not come back
        NodeState(cfg.paths_state_dir).forget_attempts(jobid)
    except Exception as exc:
        log.error(jobid, f"cannot forget attempts: {exc}")
    text = refusal.explanation(jobid, error, attempts)
    ctx = torque.context_from("prologue", args[:9], os.environ)
    where = refusal.write_as_user(user, ctx.workdir, refusal.file_name(jobid), text)
    log.info(jobid, f"refused ({'user error' if user_error else 'node fault'}): {error}; "
                    f"explanation in {where or 'nowhere: could not write it'}")
    try:
        if lifecycle.starter_installed(ctx.pbs_home):
            lifecycle.record_refusal(cfg, jobid, user, text, refusal_file=where)
            return EXIT_OK        # the starter prints the reason to the .e and exits 1
    except Exception as exc:
        log.error(jobid, f"cannot hand the refusal to the job starter: {exc}")
    sys.stderr.write(text)        # lands in the spool .ER, which Torque keeps on the node
    return EXIT_ABORT


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
