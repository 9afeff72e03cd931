"""Which containers a job gets, and what each is called: pure functions, no I/O.

The mother superior plans every node (it must name every container in the nodefile);
a sister plans only its own, from what it can know without a nodefile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import RequestError
from .torque import job_tag, nodes_request, parse_nodes_spec, slots_by_host

PortsFor = Callable[[int, int], Sequence[int]]   # (node index, container slot) -> candidate ports


@dataclass(frozen=True)
class ContainerPlan:
    node_index: int
    slot: int                 # container number on its node (always 0 with model=node)
    alias: str                # SSH host alias and container hostname; never "localhost"
    candidates: Tuple[int, ...]
    nodefile_slots: Tuple[int, ...] = ()   # nodefile lines this container owns (known on the MS)
    ncpus: int = 1            # slots of the job it holds on its node

    @property
    def name(self) -> str:
        """Docker container name: unique per daemon, even when nodes share one (tests)."""
        return self.alias


@dataclass(frozen=True)
class NodePlan:
    index: int
    host: str
    containers: Tuple[ContainerPlan, ...]


def alias_for(jobid: str, node_index: int, slot: Optional[int] = None) -> str:
    base = f"td-{job_tag(jobid)}-n{node_index}"
    return base if slot is None else f"{base}-s{slot}"


def alias_pattern(jobid: str) -> str:
    """known_hosts pattern matching every alias of the job and nothing of other jobs."""
    return f"td-{job_tag(jobid)}-n*"


def _containers(jobid: str, node_index: int, nodefile_slots: Sequence[int], count: int, model: str,
                ports: PortsFor) -> Tuple[ContainerPlan, ...]:
    if model == "node":
        return (ContainerPlan(node_index, 0, alias_for(jobid, node_index), tuple(ports(node_index, 0)),
                              tuple(nodefile_slots), max(count, 1)),)
    return tuple(
        ContainerPlan(node_index, s, alias_for(jobid, node_index, s), tuple(ports(node_index, s)),
                      (nodefile_slots[s],) if nodefile_slots else (), 1)
        for s in range(count)
    )


def plan_job(jobid: str, hosts: Sequence[str], model: str, ports: PortsFor) -> List[NodePlan]:
    """Every node's containers, from the nodefile (one host name per slot)."""
    if not hosts:
        raise RequestError("the job's nodefile is empty", "ask for nodes with -l nodes=N:ppn=M")
    return [
        NodePlan(index, host, _containers(jobid, index, slots, len(slots), model, ports))
        for index, (host, slots) in enumerate(slots_by_host(hosts).items())
    ]


def plan_local(jobid: str, node_index: int, slot_count: int, model: str, ports: PortsFor) -> NodePlan:
    """A sister's own containers."""
    return NodePlan(node_index, "", _containers(jobid, node_index, (), slot_count, model, ports))


def slot_alias(nodes: Sequence[NodePlan]) -> Dict[int, str]:
    """Nodefile line -> the alias of the container that owns that slot."""
    table: Dict[int, str] = {}
    for node in nodes:
        for container in node.containers:
            for slot in container.nodefile_slots:
                table[slot] = container.alias
    return table


def local_slot_count(node_index: int, resources: Mapping[str, str], num_ppn: int = 0, num_nodes: int = 0) -> int:
    """Slots this node holds, without a nodefile (sisters have none).

    From the node request (``neednodes``, else ``nodes``: ``2:ppn=4``, ``n1:ppn=4+n2:ppn=2``, ``3``), else PBS_NUM_PPN
    (``num_ppn``), else ``procs=`` spread over PBS_NUM_NODES (``num_nodes``); 0 is not
    given. Raises when it cannot tell.
    """
    spec = nodes_request(resources)
    if spec:
        per_node: List[int] = []
        for _name, count, ppn in parse_nodes_spec(spec):
            per_node.extend([ppn] * count)
        if node_index < len(per_node):
            return per_node[node_index]
    if num_ppn > 0:
        return num_ppn
    procs = resources.get("procs", "")
    if procs.isdigit() and num_nodes > 0:
        return max(1, int(procs) // num_nodes)
    raise RequestError(f"cannot tell how many slots node {node_index} holds (nodes={spec or 'unset'})",
                       "ask with -l nodes=N:ppn=M")
