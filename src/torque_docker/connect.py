"""The mother superior's connect step: find every sister container, write the job's SSH
files, hand the sisters what they need, rewrite the nodefile.

Split from lifecycle.py because this is the one step of a prologue whose work grows with
the job's size (every sister container is probed, named in the SSH config and the nodefile).
"""
from __future__ import annotations

import math
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from . import gpus, keys, plan, probe, render
from .config import Config, resolve_address
from .errors import ContainerFault, NodeFault
from .identity import UserInfo
from .records import StartedContainer
from .request import parse_resource_list
from .state import NodeState, ensure_dir, write_file, write_in_place
from .teardown import host_group_dir, remove_host_groups
from .torque import HookContext, safe_jobid

CTR_DIR = "/run/torque-docker"   # where the job's per-node files appear inside containers


class Steps(Protocol):
    """What connect_job reports its step times to (lifecycle.Timer)."""

    def step(self, name: str) -> None: ...


def node_hosts() -> str:
    """The node's own /etc/hosts (root's), for the containers' /etc/hosts."""
    try:
        return Path("/etc/hosts").read_text(errors="replace")
    except OSError:
        return ""


def image_tag(image_id: str) -> str:
    """Short form of an image id for the sshd banner (``sha256:`` dropped)."""
    return image_id.split(":")[-1][:16]


# --------------------------------------------------------------------------- MS: connect the nodes
def connect_job(ctx: HookContext, cfg: Config, state: NodeState, user: UserInfo, nodes: Sequence[plan.NodePlan],
                local_started: Sequence[StartedContainer], address: str, secrets_: keys.JobSecrets,
                timer: Steps, image_id: str = "", image: str = "", *, assigned: Sequence[str]) -> int:
    """Find where every sister container listens, write the SSH files, push them, rewrite the
    nodefile. Returns how many ssh logins the push took from here."""
    assert ctx.nodefile is not None                       # the MS's
    endpoints: Dict[str, Tuple[str, int]] = {c.alias: (address, c.port) for c in local_started}
    targets: Dict[str, Tuple[str, Sequence[int], str]] = {}
    for node in nodes[1:]:
        node_address = resolve_address(node.host)
        for container in node.containers:
            targets[container.alias] = (node_address, container.candidates,
                                        probe.container_token(secrets_.token, node.index, container.slot))
    if targets:
        # Sisters answered before their prologue.parallel ended, and all ended before this
        # one began, so nearly all answer at once; the rest (a slow network or node) are
        # waited for together, up to [ssh] ready_timeout: a slow sister costs its delay once.
        found = probe.find_ports(targets, time.monotonic() + cfg.ssh_ready_timeout,
                                 host_key=secrets_.host_key.public_openssh)
        missing = sorted(set(targets) - set(found))
        if missing:
            hosts = sorted({n.host for n in nodes[1:] for c in n.containers if c.alias in missing})
            named = ", ".join(hosts[:20]) + (f" and {len(hosts) - 20} other node(s)" if len(hosts) > 20 else "")
            # A sister leaves what the job may have caused to this node (its exit would have
            # taken the node down): the cause is in that node's admin log.
            raise ContainerFault(f"the job's container on {named} did not start "
                                 f"(its torque-docker log says why)"
                                 + gpus.sister_hint(cfg, parse_resource_list(ctx.resource_list)),
                                 "if it happens again, ask the admin to look at that node's torque-docker log")
        # Every node must run exactly the MS's image: the sisters announce theirs in the banner.
        mine = image_tag(image_id)
        for alias, (port, theirs) in found.items():
            if mine and theirs and theirs != mine:
                host = next(n.host for n in nodes[1:] for c in n.containers if c.alias == alias)
                raise NodeFault(f"{host} runs image {theirs} for {image}, this node {mine}",
                                f"stage the same image on every node ('torque-docker stage {image}') "
                                f"or ask for it by digest")
            endpoints[alias] = (targets[alias][0], port)
    timer.step("probe")

    ordered: List[Dict[str, Any]] = [{"alias": c.alias, "address": endpoints[c.alias][0], "port": endpoints[c.alias][1]}
               for n in nodes for c in n.containers]
    ctr = state.ctr_dir(ctx.jobid)
    include_dir = Path(cfg.ssh_include_dir)
    ensure_dir(include_dir, 0o755)
    host_config = include_dir / f"{safe_jobid(ctx.jobid)}.conf"
    host_groups = host_group_dir(include_dir, ctx.jobid)
    host_ssh = render.ssh_config(ctx.jobid, user.name, ordered, identity_file=str(ctr / "id_ed25519"),
                                 known_hosts=str(ctr / "known_hosts"), group_dir=str(host_groups),
                                 template_dir=cfg.paths_template_dir)
    ctr_ssh = render.ssh_config(ctx.jobid, user.name, ordered, identity_file=f"{CTR_DIR}/id_ed25519",
                                known_hosts=f"{CTR_DIR}/known_hosts", group_dir=f"{CTR_DIR}/{GROUP_DIR}",
                                template_dir=cfg.paths_template_dir)
    remove_host_groups(include_dir, ctx.jobid)
    if host_ssh.groups:
        ensure_dir(host_groups, 0o755)
        for name, text in host_ssh.groups.items():
            write_file(host_groups / name, text, 0o644)
        ensure_dir(ctr / GROUP_DIR, 0o755)        # root's on the MS (prepare_job_dir, ms=True)
        for name, text in ctr_ssh.groups.items():
            write_file(ctr / GROUP_DIR / name, text, 0o644)
    host_text, ctr_text = host_ssh.main, ctr_ssh.main
    write_file(host_config, host_text, 0o644)
    write_in_place(ctr / "ssh_config", ctr_text)
    here = node_hosts()
    hosts_text = render.hosts_text([(c["address"], c["alias"]) for c in ordered], here)
    write_in_place(ctr / "hosts", hosts_text)
    siblings = {c.alias for c in nodes[0].containers[1:]}
    write_in_place(ctr / "hosts-launcher",
                   render.hosts_text([(c["address"], c["alias"]) for c in ordered if c["alias"] not in siblings],
                                     here))
    original = Path(str(ctx.nodefile)).read_text(errors="replace")
    # From the plan (the slots the server assigned), never from pbs_mom's nodefile, which
    # the job's own variables can fill (BEOWULF_JOB_MAP).
    rewritten = render.rewrite_nodefile(assigned, plan.slot_alias(nodes))
    # Containers of a node share its job directory: one push per sister node is enough. The
    # nodefile goes too: TM tasks find their slot's container in it on every node. The hosts
    # file carries this node's /etc/hosts lines to the sisters: a cluster's nodes resolve
    # the same names.
    timer.step("render")
    files = {f"{GROUP_DIR}/{name}": text for name, text in ctr_ssh.groups.items()}
    files.update({"ssh_config": ctr_text, "hosts": hosts_text, "nodefile": rewritten})
    logins = push_container_files(host_config, [n.containers[0].alias for n in nodes[1:]], files)
    timer.step("push")

    write_file(state.job_dir(ctx.jobid) / "nodefile.orig", original, 0o644)
    write_in_place(Path(str(ctx.nodefile)), rewritten)
    # The host's $PBS_HOME is not in the containers; run=container jobs read this copy.
    write_file(ctr / "nodefile", rewritten, 0o644)
    timer.step("nodefile")
    return logins


GROUP_DIR = "ssh.d"   # in the job directory: the SSH config's group files (render.ssh_config)


SSH = "/usr/bin/ssh"


def ssh_base(host_config: Path) -> List[str]:
    return [SSH, "-F", str(host_config), "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]


# Each container of the push's tree passes the files on to at most this many others, or
# to the square root of the number of sisters when that is more: the tree is then never
# deeper than two levels of logins (1,000 sisters: the MS logs into 32, each into 31).
PUSH_FANOUT = 16


def push_fanout(count: int) -> int:
    return max(PUSH_FANOUT, math.isqrt(max(count - 1, 0)) + 1)
# One login of the push, its relays behind it included (a real level takes seconds).
PUSH_TIMEOUT = 120
RELAY = "push.sh"      # in the job directory of every sister: the relay of the push's tree
_SAFE_ALIAS = re.compile(r"[a-z0-9][a-z0-9-]*")


def split_tree(aliases: Sequence[str], fanout: int = PUSH_FANOUT) -> List[Tuple[str, List[str]]]:
    """(child, the aliases the child passes the files on to): at most ``fanout`` children,
    in order, each with an equal share of the rest. relay_script does the same in sh."""
    size = -(-len(aliases) // fanout) if aliases else 0
    return [(aliases[at], list(aliases[at + 1:at + size])) for at in range(0, len(aliases), size or 1)]


def relay_script(reader: str, fanout: int = PUSH_FANOUT) -> str:
    """The relay (``push.sh``) every sister container runs after writing its files, as the
    user, with the job's own ssh, key and known_hosts: ``sh push.sh PAYLOAD ALIAS...``
    passes the payload it received on to its share of the sisters named, as split_tree
    splits them, all at once, with the same command it got (push_command). Each sister
    that wrote its files says ``td-push-ok ALIAS`` on stdout, which comes back through
    every level to the mother superior (one line per write, so lines never mix)."""
    return f"""# torque-docker: pass the job's files on to the sister containers named after the payload
R=$(cat <<'TD_READER'
{reader}
TD_READER
)
payload=$1; shift
size=$(( ($# + {fanout - 1}) / {fanout} ))
while [ $# -gt 0 ]; do
    child=$1; shift
    sub=""
    i=1
    while [ $i -lt $size ] && [ $# -gt 0 ]; do sub="$sub $1"; shift; i=$((i+1)); done
    ( ssh -o BatchMode=yes -o ConnectTimeout=10 "$child" "# torque-docker
p={CTR_DIR}/{GROUP_DIR}/.push.\\$\\$; cat > \\"\\$p\\" && $R && echo td-push-ok $child && sh {CTR_DIR}/{RELAY} \\"\\$p\\"$sub; rm -f \\"\\$p\\"" < "$payload" 2>/dev/null |
      while IFS= read -r line; do echo "$line"; done ) &
done
wait
"""


def push_command(reader: str, alias: str, sub: Sequence[str]) -> str:
    """What a sister runs for the push: keep the payload (in its own ssh.d, the user's, under
    a name of this login's own), write the files from it, say so, relay it to ``sub``."""
    return (f"# torque-docker\np={CTR_DIR}/{GROUP_DIR}/.push.$$; cat > \"$p\" && {reader} "
            f"&& echo td-push-ok {alias} && sh {CTR_DIR}/{RELAY} \"$p\"" + "".join(f" {a}" for a in sub)
            + "; rm -f \"$p\"")


def push_container_files(host_config: Path, aliases: Sequence[str], files: Dict[str, str],
                         fanout: Optional[int] = None) -> int:
    """Sister containers need the job's aliases too (Open MPI tree-spawns from them, MPICH's
    proxies resolve the launcher's name). Their files are bind-mounted, so writing through
    the job's own SSH access (truncate + write, same inode) updates what they read.

    One ssh login per sister node carries all files: the sister keeps the payload in a file
    and ``sed`` cuts each file out of it by line numbers (a shell's ``read`` takes a pipe a
    byte at a time: 0.3 s of a sister's CPU for a 16,000-line nodefile). The mother superior logs into at most ``fanout`` sisters
    (push_fanout); each writes its files, then passes the same payload on (relay_script)
    to its share of the others, so a 1,000-node job costs the MS 32 logins and the job
    two levels of them, not 63 rounds of 16 logins from the MS. A sister counts as
    served only when it said so (``td-push-ok``); any other is pushed to once more from
    here, directly, and only those that still fail are named. Returns the MS's logins.
    """
    for alias in aliases:
        if not _SAFE_ALIAS.fullmatch(alias):
            raise NodeFault(f"alias {alias!r} is not a plain name", "report this: aliases are made by plan.alias_for")
    names = list(files)
    texts = [files[n] if files[n].endswith("\n") else files[n] + "\n" for n in names]
    parts = []
    first = 1
    for name, text in zip(names, texts):
        last = first + text.count("\n") - 1
        parts.append(f"sed -n '{first},{last}p;{last}q' \"$p\" > {CTR_DIR}/{name}")
        first = last + 1
    parts.append(f"sed -n '{first},$p' \"$p\" > {CTR_DIR}/{RELAY}")
    reader = " && ".join(parts)
    fanout = fanout or push_fanout(len(aliases))
    payload = "".join(texts) + relay_script(reader, fanout)

    def push(item: Tuple[str, List[str]]) -> Tuple[List[str], str]:
        """(the aliases that said they were served, what went wrong with the child itself)"""
        alias, sub = item
        try:
            result = subprocess.run(ssh_base(host_config) + [alias, push_command(reader, alias, sub)],
                                    input=payload, capture_output=True, text=True, timeout=PUSH_TIMEOUT)
        except subprocess.TimeoutExpired:
            return [], f"{alias}: timed out"
        served = [line.split()[1] for line in result.stdout.splitlines()
                  if line.startswith("td-push-ok ") and len(line.split()) == 2]
        return served, "" if result.returncode == 0 else f"{alias}: {result.stderr.strip()[:200]}"

    if not aliases:
        return 0
    tree = split_tree(list(aliases), fanout)
    logins = len(tree)
    with ThreadPoolExecutor(max_workers=len(tree)) as pool:
        outcomes = list(pool.map(push, tree))
    served = {a for done, _ in outcomes for a in done}
    unserved = [a for a in aliases if a not in served]
    failures: List[str] = []
    if unserved:        # a relay could not reach these, or they failed: once more, directly
        logins += len(unserved)
        with ThreadPoolExecutor(max_workers=min(16, len(unserved))) as pool:
            for alias, (done, why) in zip(unserved, pool.map(push, [(a, []) for a in unserved])):
                if alias not in done:
                    failures.append(why or f"{alias}: its files were not written")
    if failures:
        raise NodeFault(f"cannot reach the job's containers over ssh: {'; '.join(failures)}",
                        "check that sshd in the image works as a non-root user")
    return logins
