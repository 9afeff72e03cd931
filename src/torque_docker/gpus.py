"""GPUs a job asks for with ``gpus=N`` in its ``nodes=`` request.

Torque tells the mother superior which GPUs it chose (``$PBS_HOME/aux/<jobid>gpu``), but a
sister learns only the count during its prologue (its job file is written after the
join), and without Torque's cgroups nothing on a node restricts a job to its GPUs.
torque-docker does not yet pass GPUs into containers, so a container job that asks for
GPUs would run without them, silently. It is refused instead, as the user's request that
this site cannot honour (never a node fault: no node could), at qsub where the submit
filter runs and in the prologue.
"""
from __future__ import annotations

from typing import Mapping

from .errors import PolicyError


def requested(nodes_spec: str) -> int:
    """Total GPUs of a ``nodes=`` value: ``2:ppn=4:gpus=2`` asks for 4, ``n1:gpus=1+n2`` for 1."""
    total = 0
    for chunk in nodes_spec.split("+"):
        fields = chunk.split(":")
        count = int(fields[0]) if fields[0].isdigit() else 1
        for extra in fields[1:]:
            if extra.startswith("gpus="):
                total += count * (int(extra[5:]) if extra[5:].isdigit() else 1)
    return total


def refuse_requested(resources: Mapping[str, str]) -> None:
    """Raise PolicyError when the job asks for GPUs its containers would not get."""
    count = requested(resources.get("nodes", ""))
    if count:
        raise PolicyError(f"the job asks for {count} GPU(s) (gpus= in nodes={resources.get('nodes', '')}), and "
                          "torque-docker cannot give containers GPUs yet",
                          "run GPU jobs without other=image=..., or drop gpus= if the job needs no GPU")
