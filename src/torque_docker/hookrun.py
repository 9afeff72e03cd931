"""What one mom_priv hook does for a container job, between pbs_mom's argv and the exit
code cli.py gives it: load the config, count the attempt, set up or tear down, and decide
what a failed mother superior prologue means for the job.

pbs_mom requeues an MS prologue exit > 1 at once and forever (docs/torque-facts.md), so
attempts are counted per job on the node before any work (a prologue killed at
``$prologalarm`` never runs code after its work), forgotten when the job starts or is
refused, and past ``[jobs] max_attempts`` the fault is explained to the user like a
refusal (and stays in the admin log).
"""
from __future__ import annotations

import sys
import time
from typing import Mapping, Optional, Sequence

from . import config, torque
from .config import Config
from .errors import ConfigError, NodeFault, TorqueDockerError
from .log import NULL, Log
from .state import NodeState

#: What a failed MS prologue becomes (cli.py maps each to pbs_mom's exit code).
REQUEUE = "requeue"              # a node fault with attempts left
REFUSED_TO_STARTER = "starter"   # the job starter prints the reason to the .e and exits 1
REFUSED = "refused"              # no starter: abort the job, the reason in the spool .ER


class Hook:
    """One run of one hook; ``cfg`` and ``log`` are there for the failure path even when
    the config did not load."""

    def __init__(self, kind: str, argv: Sequence[str], environ: Mapping[str, str]) -> None:
        self.kind, self.argv, self.environ = kind, list(argv), environ
        self.jobid, self.user = torque.job_and_user(argv)
        self.cfg: Optional[Config] = None
        self.log: Log = NULL
        self.attempt: Optional[int] = None

    def run(self) -> None:
        """Set the job up or tear it down on this node; raises what went wrong."""
        try:
            self.cfg = config.load()
        except ConfigError:
            # The site's mistake stops the hook as a node fault; what could be read still
            # names the admin log and the state directory (attempts, the refusal).
            self.cfg = config.lenient()
            self.log = Log(self.cfg.log_destination, self.cfg.node_name())
            raise
        cfg = self.cfg
        self.log = Log(cfg.log_destination, cfg.node_name())
        ctx = torque.context_from(self.kind, self.argv, self.environ)
        if ctx.is_prologue:
            self.prologue(ctx, cfg)
        else:
            self.epilogue(ctx, cfg)

    def prologue(self, ctx: torque.HookContext, cfg: Config) -> None:
        from . import lifecycle
        from .sweep import hook_running
        if ctx.is_ms:
            self.attempt = count_attempt(cfg, ctx.jobid, self.log)
            if self.attempt > cfg.jobs_max_attempts:
                raise NodeFault(f"the set-up of this job failed or was stopped {self.attempt - 1} times on this "
                                f"node ({cfg.node_name()})", "tell the admin: the torque-docker log of that node says why")
        with hook_running(cfg, ctx.jobid):      # no sweep removes the job while it is set up
            setup = lifecycle.prologue(ctx, cfg, self.log)
        if ctx.is_ms:
            NodeState(cfg.paths_state_dir).forget_attempts(ctx.jobid)
            print(setup.summary, flush=True)

    def epilogue(self, ctx: torque.HookContext, cfg: Config) -> None:
        from .teardown import refusal_note, teardown      # not lifecycle: the set-up's imports cost ~20 ms
        started = time.monotonic()
        note = refusal_note(cfg, ctx.jobid) if ctx.is_ms else None
        if note:
            print(note, flush=True)
        result = teardown(cfg, ctx.jobid, nodefile=ctx.nodefile if ctx.is_ms else None, log=self.log)
        for problem in result.errors:
            self.log.error(ctx.jobid, f"{self.kind}: {problem} (torque-docker gc will retry)")
        if ctx.is_ms:
            status = "with errors, see the admin log" if result.errors else "cleanly"
            print(f"torque-docker: job {ctx.jobid}: teardown on {cfg.node_name()} finished {status} "
                  f"({result.removed} container(s) removed) in {time.monotonic() - started:.1f} s", flush=True)

    def ms_prologue_failed(self, error: BaseException) -> str:
        """Requeue a node fault a bounded number of times; refuse everything else where the
        user sees it. Returns REQUEUE, REFUSED_TO_STARTER or REFUSED."""
        from . import lifecycle, refusal
        cfg, log, jobid = self.cfg or config.defaults(), self.log, self.jobid
        user_error = isinstance(error, TorqueDockerError) and error.user_error
        attempts = 0
        if not user_error:
            if self.attempt is None:     # failed before it could count (e.g. the config): count now
                try:
                    attempts = NodeState(cfg.paths_state_dir).count_attempt(jobid)
                except Exception as exc:   # cannot count: do not loop blindly
                    log.error(jobid, f"cannot count attempts: {exc}")
                    attempts = cfg.jobs_max_attempts
            else:
                attempts = self.attempt
            if attempts < cfg.jobs_max_attempts:
                log.warning(jobid, f"node fault, attempt {attempts} of {cfg.jobs_max_attempts}: requeued")
                return REQUEUE
        try:                             # refused: it does not come back
            NodeState(cfg.paths_state_dir).forget_attempts(jobid)
        except Exception as exc:
            log.error(jobid, f"cannot forget attempts: {exc}")
        text = refusal.explanation(jobid, error, attempts)
        ctx = torque.context_from("prologue", self.argv[:9], self.environ)
        where = refusal.write_as_user(self.user, ctx.workdir, refusal.file_name(jobid), text)
        log.info(jobid, f"refused ({'user error' if user_error else 'node fault'}): {error}; "
                        f"explanation in {where or 'nowhere: could not write it'}")
        try:
            if torque.MomConfig.of(ctx.pbs_home).starter_is_ours():
                lifecycle.record_refusal(cfg, jobid, self.user, text, refusal_file=where)
                return REFUSED_TO_STARTER
        except Exception as exc:
            log.error(jobid, f"cannot hand the refusal to the job starter: {exc}")
        sys.stderr.write(text)        # lands in the spool .ER, which Torque keeps on the node
        return REFUSED


def count_attempt(cfg: Config, jobid: str, log: Log) -> int:
    """Count this start of the job on this node BEFORE any work (see the module docstring).
    Past ``[jobs] max_attempts`` the job is refused at once, without trying again."""
    try:
        state = NodeState(cfg.paths_state_dir)
        state.ensure()
        return state.count_attempt(jobid)
    except Exception as exc:   # cannot count: one try, never a blind loop
        log.error(jobid, f"cannot count attempts: {exc}")
        return cfg.jobs_max_attempts
