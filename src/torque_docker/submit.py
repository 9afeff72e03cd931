"""qsub's submit filter: catch a container job's mistakes at qsub, carry the short form.

qsub runs the filter (``SUBMITFILTER`` in ``$PBS_HOME/torque.cfg``) as the submitting
user on every submission, through ``/bin/sh -c`` with its own arguments in single
quotes, the job script on stdin; what the filter prints is what is submitted, exit 255
makes qsub say the job was administratively rejected, any other non-zero that the filter
failed; either way nothing is queued (src/cmds/qsub_functions.c). So:

- A job that asks for no image is copied to stdout byte for byte, after a scan that
  imports nothing beyond the standard library and this package's parsers.
- ``-l image=NAME`` (Torque's built-in ``image`` resource: qsub accepts it and the server
  keeps it, but it never reaches the moms) is the short form of ``-l other=image=NAME``.
  The filter cannot change qsub's arguments, only the script: it adds one directive
  ``#PBS -l other=image=NAME[;the other keys]`` where qsub reads directives, and refuses
  where the script cannot carry it (``-l other=`` given on the command line wins over any
  directive; an empty ``-C`` prefix turns directives off).
- Every mistake the prologue would refuse for the user and that the submit host can see
  is refused here with the same two lines (what is wrong, what to do): the request's
  syntax and values, the image against the site's list, mounts against the allowed
  roots and on disk, the working directory, memory sizes Docker cannot honour.

The nodes check everything again: users can bypass a filter, and a site may have none.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False     # typing itself costs the filter ~10 ms on every qsub

from . import qsubparse
from .errors import RequestError, TorqueDockerError, printable

if TYPE_CHECKING:      # not at run time: the filter runs on every qsub
    from typing import Callable, Dict, List, Optional, Sequence

EXIT_OK, EXIT_ERROR, EXIT_REJECT = 0, 1, 255
_CARRY_REFUSED = set("'\"\\,") | {chr(c) for c in range(32)} | {"\x7f"}


class Verdict:
    """What the filter decided: the script to submit, the request the nodes will see."""

    def __init__(self, script: bytes, request: str = "", resources: Optional[Dict[str, str]] = None,
                 rewritten: bool = False) -> None:
        self.script = script
        self.request = request                # the -l other= value the moms get ('' not a container job)
        self.resources = resources or {}      # every -l resource qsub will send
        self.rewritten = rewritten
        self.notes: List[str] = []            # for qsub's stderr (warnings)
        self.submission: Optional[qsubparse.Submission] = None    # how qsub reads the ORIGINAL script


def mentions_image(data: bytes, args: Sequence[str]) -> bool:
    """Cheap first test: every container request spells ``image`` somewhere, once the
    quotes, backslashes and escaped line ends that qsub's word reading removes are gone
    (``other=ima\\ge=x`` and ``other="ima"ge=x`` are ``image=x`` to qsub)."""
    texts = [data] + [arg.encode("utf-8", "surrogateescape") for arg in args]
    return any(b"image" in _unsplit(text) for text in texts)


def _unsplit(text: bytes) -> bytes:
    return text.replace(b"\\\n", b"").replace(b"\\", b"").replace(b'"', b"").replace(b"'", b"")


def _other_image(other: str) -> Optional[str]:
    for part in other.split(";"):
        key, sep, value = part.partition("=")
        if key.strip() == "image":
            return value.strip() if sep else ""
    return None


def _carried(value: str) -> str:
    """The value written into a directive so that make_argv and add_verify_resources give it
    back unchanged: white space escaped; quotes, backslashes, commas cannot be carried."""
    bad = sorted({ch for ch in value if ch in _CARRY_REFUSED})
    if bad:
        raise RequestError(f"-l other={value} holds {' '.join(repr(ch) for ch in bad)}, which a #PBS line "
                           f"cannot carry to the nodes", "remove them (paths with quotes or commas cannot be mounted)")
    return "".join("\\" + ch if ch in " \t\v\f" else ch for ch in value)


def plan(args: Sequence[str], data: bytes) -> Verdict:
    """The script to submit and the request the nodes will see; raises what to refuse.

    No site policy here (see ``check``): this is what any submit host can know."""
    if not mentions_image(data, args):
        return Verdict(data)
    sub = qsubparse.read_submission(args, data)
    resources = sub.resources
    short = resources.get("image")
    other = resources.get("other", "")
    long_image = _other_image(other)
    if short is None and long_image is None:
        return Verdict(data)
    if sub.script.unparsable:
        return Verdict(data)          # qsub refuses the script itself, with its own message
    if short is None:
        return _read(Verdict(data, request=other, resources=resources), sub)
    short = short.strip()
    if long_image is not None:
        if long_image != short:
            raise RequestError(f"two images are asked for: -l image={short} and -l other=image={long_image}",
                               "give the image once, e.g. -l image=NAME with the other keys in -l other=")
        return _read(Verdict(data, request=other, resources=resources), sub)
    if sub.source("other") == "cmdline":
        raise RequestError(f"-l image={short} cannot reach the nodes: -l other={other} on qsub's command line "
                           f"replaces every #PBS -l other= line",
                           f"put the image into it: qsub -l other=image={short};{other}")
    request = f"image={short}" + (f";{other}" if other.strip() else "")
    prefix = qsubparse.DEFAULT_PREFIX if sub.prefix is None else sub.prefix
    if not prefix:
        raise RequestError(f"-l image={short} cannot reach the nodes: qsub -C '' turns #PBS lines off",
                           f"use qsub -l other=image={short} instead")
    return _read(_carry(Verdict(data, resources=resources), sub, request), sub)


def _read(verdict: Verdict, sub: qsubparse.Submission) -> Verdict:
    verdict.submission = sub
    return verdict


def _carry(verdict: Verdict, sub: qsubparse.Submission, request: str) -> Verdict:
    """The verdict with the original script plus one directive that gives the nodes this request."""
    prefix = qsubparse.DEFAULT_PREFIX if sub.prefix is None else sub.prefix
    verdict.script = _insert_directive(sub.script, f"{prefix} -l other={_carried(request)}")
    verdict.request, verdict.rewritten = request, True
    verdict.resources = dict(verdict.resources, other=request)
    return verdict


def _insert_directive(script: qsubparse.Script, line: str) -> bytes:
    """The script with one more directive after every other one (the last one wins),
    before the first command, and never inside a line: qsub reads lines longer than its
    buffer in pieces, and a piece can be what stops its reading of directives."""
    pieces = list(script.pieces)
    at = script.first_command if script.first_command >= 0 else len(pieces)
    if at < len(pieces):
        while at > 0 and not pieces[at - 1].endswith(b"\n"):
            at -= 1
        if any(d.last >= at for d in script.directives):
            raise RequestError(f"a #PBS line longer than {qsubparse.MAX_LINE_LEN - 1} bytes runs into the job's "
                               "commands, so no line can be added after it", "shorten that line")
    near = pieces[at - 1] if at > 0 else (pieces[0] if pieces else b"")
    eol = b"\r\n" if near.endswith(b"\r\n") else b"\n"
    if at > 0 and not pieces[at - 1].endswith(b"\n"):
        pieces[at - 1] += eol            # the script's last line, at its end
    pieces.insert(at, line.encode("utf-8", "surrogateescape") + eol)
    return b"".join(pieces)


# ----------------------------------------------------------------------------- site checks
def check(verdict: Verdict, cfg, cwd: str) -> None:
    """The prologue's own checks that the submit host can make, with the prologue's words.

    The site's policy ([images], [mounts]) applies only where the site's config file is
    on the submit host: the defaults would refuse mounts the nodes allow."""
    from . import gpus, policy, resources
    from .request import parse_other
    from .torque import parse_nodes_spec

    request = parse_other(verdict.request)
    site = bool(getattr(cfg, "path", "")) and os.path.exists(cfg.path)
    if not site:
        verdict.notes.append(f"no site config at {cfg.path or 'its default path'} on this host: "
                             "only the request's syntax was checked")
    if site:
        choice = policy.resolve_image(request.image, cfg)
        mounts = policy.check_mounts(request.mounts, cfg)
        from . import devices
        policy.container_ulimits(request.ulimits, cfg, devices.is_rdma(cfg.devices_paths))
        for mount in mounts:
            if not (os.path.isdir(mount.source) and os.access(mount.source, os.R_OK | os.X_OK)):
                raise RequestError(f"mount source {mount.source} is not a directory you can read",
                                   "ask for a directory you can read")
    if cwd and os.path.isabs(cwd):
        # Every container mounts the job's working directory (qsub's, PBS_O_WORKDIR).
        real = policy.check_workdir(cwd)
        if not (os.path.isdir(real) and os.access(real, os.R_OK | os.X_OK)):
            raise RequestError(f"the working directory {cwd} cannot be reached by you",
                               "submit from a directory you can read")
    model = request.model or cfg.jobs_default_model
    asked = verdict.resources
    if site:      # without the site's config the nodes' [gpus] decides, in the prologue
        gpus.refuse_requested(asked, cfg.gpus_method, cfg.gpus_sister)
    if asked.get("mem") or asked.get("pmem"):
        per_node = _slots_per_node(asked, parse_nodes_spec)
        for slots in per_node:          # refuses a limit Docker would not take, as the prologues do
            resources.memory_limit(asked, model, slots, len(per_node))
    if site and cfg.images_pin != "off" and not choice.tarball:
        pin_image(verdict, choice.reference, cfg)


def pin_image(verdict: Verdict, reference: str, cfg) -> None:
    """Rewrite the request to ``name:tag@sha256:...`` ([images] pin), or say why not.

    pin = submit: a job that cannot be pinned is submitted as it is, with a warning on
    qsub's stderr; pin = required: it is refused."""
    from . import pin
    from .errors import PolicyError

    if "@sha256:" in reference:
        return                                     # pinned by the user already
    sub = verdict.submission
    digest, why = pin.resolve(reference, cfg.docker_endpoint)
    pinned = pin.pinned(reference, digest) if digest else ""
    if not digest:
        problem, fix = f"cannot resolve {reference} to a digest here ({why})", \
            f"name the digest yourself (image={reference.partition('@')[0]}@sha256:...), or ask the admin"
    elif not cfg.image_allowed(pinned):
        problem, fix = f"the site's [images] allowed has no pattern for {pinned}", \
            f"ask the admin to allow digests, e.g. '{reference}@sha256:*'"
    elif sub is None or sub.source("other") == "cmdline":
        problem, fix = "-l other= on qsub's command line cannot be changed by the submit filter", \
            f"write -l other=image={pinned}, or put the request in the script"
    else:
        parts = [f"image={pinned}" if part.partition("=")[0].strip() == "image" else part
                 for part in verdict.request.split(";")]
        _carry(verdict, sub, ";".join(parts))
        verdict.notes.append(f"image {reference} pinned to {digest}: every node and every requeue runs this build")
        return
    if cfg.images_pin == "required":
        raise PolicyError(f"the site requires pinned images and {problem}", fix)
    verdict.notes.append(f"warning: job submitted unpinned: {problem}")


def _slots_per_node(asked, parse_nodes_spec) -> List[int]:
    spec = asked.get("nodes", "")
    per_node: List[int] = []
    if spec:
        for _name, count, ppn in parse_nodes_spec(spec):
            per_node.extend([max(ppn, 1)] * max(count, 1))
    elif asked.get("procs", "").isdigit():
        per_node = [max(int(asked["procs"]), 1)]
    return per_node or [1]


# ----------------------------------------------------------------------------- messages
def refusal_lines(error: BaseException) -> str:
    """The prologue's two lines (what is wrong; what to do), said at qsub."""
    if isinstance(error, TorqueDockerError):
        reason, fix = error.message, error.fix
    else:
        reason, fix = f"internal error: {error!r}", "tell the admin; this is a bug in torque-docker"
    lines = [f"torque-docker: job not submitted: {printable(reason)}"]
    if fix:
        lines.append(f"torque-docker: what to do: {printable(fix)}")
    return "\n".join(lines) + "\n"


def exit_code(error: BaseException) -> int:
    """255 (qsub: "administratively rejected") for the user's mistakes, 1 for ours."""
    return EXIT_REJECT if isinstance(error, TorqueDockerError) and error.user_error else EXIT_ERROR


def decide(args: Sequence[str], data: bytes, cwd: str, load_config: Callable[[], object]) -> Verdict:
    verdict = plan(args, data)
    if verdict.request:
        check(verdict, load_config(), cwd)
    return verdict


# ----------------------------------------------------------------------------- entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    """The filter's entry: qsub's arguments in argv, the script on stdin."""
    args = list(sys.argv[1:] if argv is None else argv)
    data = sys.stdin.buffer.read()
    out, err = sys.stdout.buffer, sys.stderr
    try:
        data = run_chained(args, data)
    except ChainFailed as failed:
        return failed.code
    try:
        verdict = decide(args, data, _cwd(), _load_config)
    except Exception as exc:     # every refusal and every bug: two lines, nothing queued
        err.write(refusal_lines(exc))
        err.flush()
        return exit_code(exc)
    for note in verdict.notes:
        err.write(f"torque-docker: {printable(note)}\n")
    out.write(verdict.script)
    out.flush()
    return EXIT_OK


def _load_config():
    from . import config
    return config.load()


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


# ----------------------------------------------------------------------------- chaining
CHAIN_FILE = "submit-filter.chain"
CHAIN_TIMEOUT = 120.0


class ChainFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


#: config.py's ENV_VAR and DEFAULT_PATH (a test keeps them equal): importing config.py
#: costs every qsub several milliseconds, and a job without an image never needs it.
CONFIG_ENV, CONFIG_DEFAULT = "TORQUE_DOCKER_CONF", "/etc/torque-docker/torque-docker.conf"


def chain_path(config: Optional[str] = None) -> str:
    """Where ``install --submit-filter`` records the site's own filter (next to the config)."""
    return os.path.join(os.path.dirname(config or os.environ.get(CONFIG_ENV) or CONFIG_DEFAULT), CHAIN_FILE)


def chained_filter(config: Optional[str] = None) -> str:
    try:
        with open(chain_path(config), encoding="utf-8") as handle:
            return handle.readline().strip()
    except OSError:
        return ""


def run_chained(args: Sequence[str], data: bytes) -> bytes:
    """The site's own filter first, as qsub would run it; its output is what we filter."""
    previous = chained_filter()
    if not previous:
        return data
    import subprocess
    try:
        done = subprocess.run([previous, *args], input=data, stdout=subprocess.PIPE, timeout=CHAIN_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(refusal_lines(TorqueDockerError(
            f"the site's own submit filter {previous} failed: {exc}", "tell the admin")))
        raise ChainFailed(EXIT_ERROR) from None
    if done.returncode != 0:
        raise ChainFailed(done.returncode & 0xFF if done.returncode > 0 else EXIT_ERROR)
    return done.stdout


# ----------------------------------------------------------------------------- lint
def lint(script_path: str, qsub_args: Sequence[str], out=sys.stdout) -> int:
    """``torque-docker lint SCRIPT [qsub args]``: the filter's verdict without submitting."""
    try:
        if script_path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(script_path, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        out.write(refusal_lines(RequestError(f"cannot read {script_path}: {exc.strerror}", "give a readable job script")))
        return EXIT_ERROR
    args = list(qsub_args) + ([] if script_path == "-" else [script_path])
    try:
        verdict = decide(args, data, _cwd(), _load_config)
    except Exception as exc:
        out.write(refusal_lines(exc))
        return EXIT_ERROR
    for note in verdict.notes:
        out.write(f"torque-docker: {printable(note)}\n")
    if not verdict.request:
        out.write("torque-docker: no container request (no -l image= or -l other=image=): "
                  "qsub submits the script unchanged and it runs on the host\n")
        return EXIT_OK
    out.write(f"torque-docker: ok: the nodes will see -l other={printable(verdict.request)}\n")
    if verdict.rewritten:
        added = [line for line in verdict.script.split(b"\n") if line not in data.split(b"\n")]
        for line in added:
            out.write(f"torque-docker: qsub's filter adds the line: {printable(line.decode('utf-8', 'replace'))}\n")
    return EXIT_OK
