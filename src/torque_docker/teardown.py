"""Undo a job on this node: the epilogues, a failed prologue, a requeued job's new start and
the sweep all come here.

Every step runs even when another fails, and the errors are returned, not raised: an
epilogue must exit 0 and ``torque-docker gc`` retries what is left. Safe to run any
number of times (pbs_mom may skip or repeat epilogues, docs/torque-facts.md). Its own
module so that the sweep (sweep.py) and the prologue (lifecycle.py) both use it without
importing each other.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, TypeVar, Union

from . import hostpath
from .config import Config
from .errors import NodeFault
from .log import Log
from .state import NodeState, write_in_place
from .torque import safe_jobid

if TYPE_CHECKING:
    from .runtime import Runtime


@dataclass
class Teardown:
    removed: int = 0
    errors: List[str] = field(default_factory=list)


def teardown(cfg: Config, jobid: str, *, runtime: Optional["Runtime"] = None, nodefile: Optional[Path] = None,
             log: Optional[Log] = None) -> Teardown:
    """Remove everything of jobid on this node. Every step runs; the errors are returned."""
    result = Teardown()
    state = NodeState(cfg.paths_state_dir)
    record = state.load_job(jobid)
    host = cfg.node_name()

    def step(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:   # keep going: the next step must still run
            result.errors.append(f"{name}: {exc}")

    def remove_containers() -> None:
        from .runtime import Runtime       # here: importing teardown (the sweep, check) costs no Docker SDK
        rt = runtime or Runtime.from_config(cfg)
        idents = {c.id for c in rt.containers(jobid=jobid, host=host)}
        idents |= {c.id for c in record.containers if c.id}
        if not idents:
            return

        def account_and_remove(ident: str) -> Union[bool, Exception]:
            if log is not None:      # per-container accounting for the admin log, before it is gone
                used = _try(rt.usage, ident)
                if used and not isinstance(used, Exception):
                    log.info(jobid, f"usage {used.name}: cpu={used.cpu_seconds:.2f}s "
                                    f"peak_mem={used.peak_bytes}B wall={used.ended - used.started:.1f}s")
            return _try(rt.remove, ident)

        with ThreadPoolExecutor(max_workers=min(16, len(idents))) as pool:
            outcomes = list(pool.map(account_and_remove, idents))
        result.removed = sum(1 for o in outcomes if o is True)
        failures = [str(o) for o in outcomes if isinstance(o, Exception)]
        if failures:
            raise NodeFault("; ".join(failures))

    step("containers", remove_containers)
    step("ports", lambda: state.release_ports(jobid))
    step("cores", lambda: state.release_cores(jobid))
    step("ssh config", lambda: _unlink(Path(cfg.ssh_include_dir) / f"{safe_jobid(jobid)}.conf"))
    step("ssh groups", lambda: remove_host_groups(Path(cfg.ssh_include_dir), jobid))
    if nodefile is not None:
        pbs_nodefile = Path(nodefile)
        step("nodefile", lambda: _restore_nodefile(state, jobid, pbs_nodefile))
    # The host's view of the job's mounts can go even while a container still runs (each
    # container holds its own); the job directory goes last, and only once its containers
    # are gone (gc retries), never through a mount.
    step("mounts", lambda: hostpath.unstage(stage_dir(state, jobid)))
    if not result.errors:
        step("job directory", lambda: release_job_files(state, jobid))
    if log is not None and result.removed:
        log.info(jobid, f"removed {result.removed} container(s) on {host}")
    return result


def stage_dir(state: NodeState, jobid: str) -> Path:
    """Root-only: where a job's user-chosen directories are bind-mounted for Docker."""
    return state.root / "mnt" / safe_jobid(jobid)


def release_job_files(state: NodeState, jobid: str) -> None:
    """Take the job's mounts on this node down (staging points, the job's tmpfs) and remove
    the job directory; never deletes through a mount."""
    hostpath.unstage(stage_dir(state, jobid))
    job_dir = state.job_dir(jobid)
    if not job_dir.exists():
        return
    hostpath.unmount(state.ctr_dir(jobid))
    left = hostpath.mounts_under(job_dir) + hostpath.mounts_under(stage_dir(state, jobid))
    if left:
        raise NodeFault(f"still mounted: {', '.join(left)}", "unmount them; torque-docker gc retries")
    shutil.rmtree(job_dir)


T = TypeVar("T")


def _try(fn: Callable[[str], T], arg: str) -> Union[T, Exception]:
    try:
        return fn(arg)
    except Exception as exc:
        return exc


def host_group_dir(include_dir: Path, jobid: str) -> Path:
    """The host's group files of a large job's SSH config (render.ssh_config): beside it, in
    a directory that the drop-in's ``Include <include_dir>/*.conf`` does not read."""
    return include_dir / f"{safe_jobid(jobid)}.d"


def remove_host_groups(include_dir: Path, jobid: str) -> None:
    folder = host_group_dir(include_dir, jobid)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _restore_nodefile(state: NodeState, jobid: str, nodefile: Path) -> None:
    saved = state.job_dir(jobid) / "nodefile.orig"
    if saved.exists() and nodefile.exists():
        write_in_place(nodefile, saved.read_text())


def refusal_note(cfg: Config, jobid: str) -> Optional[str]:
    """For the end of a refused job's .o (its only other line is the teardown's): where the reason is.
    Here, not in lifecycle.py, so that an epilogue never imports the set-up's modules."""
    record = NodeState(cfg.paths_state_dir).load_job(jobid)
    if not record.refused:
        return None
    where = record.refusal_file
    return (f"torque-docker: job {jobid} was refused and its script did not run: the reason is in the job's .e file"
            + (f" and in {where}" if where else ""))
