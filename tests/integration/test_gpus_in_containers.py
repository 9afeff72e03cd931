"""GPUs in containers, through the simulator against real Docker: a job with gpus=N gets the
GPUs Torque chose (the MS's gpu file; a sister as [gpus] sister says) and only those, a job
without gpus= gets none, and a request a node cannot honour is refused with a clear message.

The GPUs are stand-ins: character devices made with mknod in a temporary directory (the
major:minor of /dev/null, /dev/zero, /dev/full, /dev/random; /dev/urandom's for nvidiactl),
mapped to /dev/nvidiaN in the containers. Which host node a container got is told by its
major:minor. No real GPU, NVIDIA driver or NVIDIA runtime was used."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from conftest import OPENMPI_IMAGE, requeued_as_node_fault

MINORS = (3, 5, 7, 8)                # GPU i is char 1:MINORS[i] (hex in stat's %t:%T)
CTL_MINOR = 9

SCRIPT = """#!/bin/bash
for d in $(ls /dev | grep '^nvidia' | sort); do echo "DEV $d $(stat -c %t:%T /dev/$d)"; done
echo "CUDA ${CUDA_VISIBLE_DEVICES-unset}"
echo "NVIDIA ${NVIDIA_VISIBLE_DEVICES-unset}"
ssh $(head -1 $PBS_NODEFILE) 'echo "LOGIN CUDA ${CUDA_VISIBLE_DEVICES-unset} NVIDIA ${NVIDIA_VISIBLE_DEVICES-unset}"'
"""

PER_RANK = """#!/bin/bash
mpirun -hostfile "$PBS_NODEFILE" -np {np} --bind-to none \\
  bash -c 'echo "RANK $(hostname) cuda=${{CUDA_VISIBLE_DEVICES-unset}} devs=$(ls /dev | grep "^nvidia[0-9]" | sort | tr "\\n" ,)"'
"""


def fake_gpus(root: Path, count: int = 4) -> Path:
    """Stand-in GPU device nodes nvidia0..nvidiaN-1 and nvidiactl, nvidia-uvm."""
    dev = root / "fakegpu"
    dev.mkdir(parents=True)
    for i in range(count):
        os.mknod(dev / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(1, MINORS[i]))
    os.mknod(dev / "nvidiactl", 0o666 | stat.S_IFCHR, os.makedev(1, CTL_MINOR))
    os.mknod(dev / "nvidia-uvm", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for node in dev.iterdir():
        os.chmod(node, 0o666)
    return dev


def gpu_config(dev: Path, method: str = "devices", sister: str = "refuse", extra: str = "") -> str:
    return (f"[gpus]\nmethod = {method}\ndevices = {dev}/nvidia%d:/dev/nvidia%d\n"
            f"shared_devices = {dev}/nvidiactl:/dev/nvidiactl {dev}/nvidia-uvm:/dev/nvidia-uvm\n"
            f"sister = {sister}\n{extra}")


def body(result) -> List[str]:
    return [line for line in (result.stdout + result.stderr).splitlines()
            if not line.startswith(("torque-docker:", "Warning: Permanently"))]


def devs(*gpus: int) -> List[str]:
    shown = {f"nvidia{i}": f"DEV nvidia{i} 1:{MINORS[i]:x}" for i in gpus}
    shown["nvidia-uvm"] = "DEV nvidia-uvm 1:3"
    shown["nvidiactl"] = f"DEV nvidiactl 1:{CTL_MINOR:x}"
    return [shown[name] for name in sorted(shown)]


def test_a_gpu_job_sees_exactly_its_gpus_and_a_job_without_gpus_none(make_site, docker_client, tmp_path):
    site = make_site(nodes=1, extra_config=gpu_config(fake_gpus(tmp_path)))
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "tdnode0:ppn=1:gpus=2"          # the simulator chooses GPUs 1 and 0
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    # Host GPUs 0 and 1 under their own names, the shared nodes, nothing else; CUDA numbers
    # them 0,1 (mom's CUDA_VISIBLE_DEVICES=1,0 of the host is not carried in).
    assert body(result) == devs(0, 1) + ["CUDA 0,1", "NVIDIA void", "LOGIN CUDA 0,1 NVIDIA void"], \
        result.stdout + result.stderr
    assert site.leftovers(docker_client, job.jobid) == []

    plain = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(plain)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert body(result) == ["CUDA unset", "NVIDIA void", "LOGIN CUDA unset NVIDIA void"], result.stdout + result.stderr
    assert site.leftovers(docker_client, plain.jobid) == []


def rank_rows(result) -> Dict[str, tuple]:
    rows = re.findall(r"RANK (\S+) cuda=(\S+) devs=(\S*)", result.stdout)
    return {alias: (cuda, devs) for alias, cuda, devs in rows}


def per_process_gpu_job(make_site, tmp_path, processes: int, gpus: int):
    """A one-node per-process job of ``processes`` slots asking for ``gpus`` of 4 stand-in GPUs:
    (site, job, result, {alias: (CUDA_VISIBLE_DEVICES, device nodes)}); it must succeed."""
    site = make_site(nodes=1, extra_config=gpu_config(fake_gpus(tmp_path)))
    job = site.job(PER_RANK.format(np=processes), [("tdnode0", processes)],
                   other=f"image={OPENMPI_IMAGE};model=process")
    job.nodes_spec = f"tdnode0:ppn={processes}:gpus={gpus}"
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    return site, job, result, rank_rows(result)


def test_per_process_containers_get_their_share_of_the_nodes_gpus(make_site, docker_client, tmp_path):
    """4 GPUs among 2 containers: two each, in slot order; each sees only its own, as 0,1."""
    site, job, result, rows = per_process_gpu_job(make_site, tmp_path, processes=2, gpus=4)
    assert sorted(rows.values()) == [("0,1", "nvidia0,nvidia1,"), ("0,1", "nvidia2,nvidia3,")], \
        result.stdout + result.stderr
    first = min(rows)                                   # slot 0's alias sorts first (…-0)
    assert rows[first] == ("0,1", "nvidia0,nvidia1,"), rows
    assert site.leftovers(docker_client, job.jobid) == []


def test_fewer_gpus_than_processes_share_them_in_slot_order(make_site, docker_client, tmp_path):
    site, job, result, rows = per_process_gpu_job(make_site, tmp_path, processes=3, gpus=2)
    assert [rows[a] for a in sorted(rows)] == [("0", "nvidia0,"), ("0", "nvidia0,"), ("0", "nvidia1,")], \
        result.stdout + result.stderr
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_gpu_job_is_refused_where_the_site_gives_containers_none(make_site, docker_client):
    """[gpus] method = none (the default): the user's error on every node, never a node down."""
    site = make_site(nodes=2)
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "tdnode0:ppn=1:gpus=1+tdnode1:ppn=1:gpus=1"
    result = site.cluster.run(job)
    assert [r.rc for r in result.runs("prologue.parallel")] == [0]      # the sister is not marked down
    assert result.runs("prologue")[0].rc in (0, 1) and result.exit_status == 1   # aborted, never requeued
    assert "asks for 2 GPU(s)" in result.stderr and "[gpus] method = none" in result.stderr, result.stderr
    assert "DEV " not in result.stdout
    assert site.leftovers(docker_client, job.jobid) == []


def test_gpus_on_a_sister_are_refused_where_sisters_cannot_tell_theirs(make_site, docker_client, tmp_path):
    site = make_site(nodes=2, extra_config=gpu_config(fake_gpus(tmp_path), sister="refuse"))
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "2:ppn=1:gpus=1"
    result = site.cluster.run(job)
    assert [r.rc for r in result.runs("prologue.parallel")] == [0]
    assert result.runs("prologue")[0].rc in (0, 1) and result.exit_status == 1
    assert "GPUs on more than its first node" in result.stderr and "gpus=2" in result.stderr, result.stderr
    assert site.leftovers(docker_client, job.jobid) == []


SISTER_SCRIPT = """#!/bin/bash
for host in $(sort -u $PBS_NODEFILE); do
  ssh $host 'echo "NODE $(hostname) cuda=${CUDA_VISIBLE_DEVICES-unset} devs=$(ls /dev | grep "^nvidia[0-9]" | sort | tr "\\n" ,)"'
done
"""


def test_a_sister_gives_its_whole_node_to_a_job_that_asks_for_all_of_it(make_site, docker_client, tmp_path):
    """[gpus] sister = whole-node: the node has 2 GPUs, the job asks for 2 on each node."""
    site = make_site(nodes=2, extra_config=gpu_config(fake_gpus(tmp_path, 2), sister="whole-node"))
    job = site.job(SISTER_SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "2:ppn=1:gpus=2"
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    rows = sorted(re.findall(r"NODE (\S+) cuda=(\S+) devs=(\S*)", result.stdout))
    assert [(cuda, d) for _, cuda, d in rows] == [("0,1", "nvidia0,nvidia1,")] * 2, result.stdout + result.stderr
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_part_of_a_sisters_gpus_is_refused_with_whole_node(make_site, docker_client, tmp_path):
    """Not a fault of the sister (not marked down): its refusal leaves the job to the MS."""
    site = make_site(nodes=2, extra_config=gpu_config(fake_gpus(tmp_path, 2), sister="whole-node"))
    job = site.job(SISTER_SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "2:ppn=1:gpus=1"
    result = site.cluster.run(job)
    assert [r.rc for r in result.runs("prologue.parallel")] == [0]      # the sister is not marked down
    assert result.exit_status != 0 and "NODE " not in result.stdout
    log = site.log_file.read_text()
    assert "asks for 1 GPU(s) on node tdnode1, which has 2" in log, log
    # the MS, which cannot know the sister's count, names the likely reason with the missing container
    assert "asks for all of that node's GPUs ([gpus] sister = whole-node)" in log, log
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_missing_gpu_device_is_the_nodes_fault(make_site, docker_client, tmp_path):
    dev = fake_gpus(tmp_path)
    site = make_site(nodes=1, extra_config=gpu_config(dev))
    (dev / "nvidiactl").unlink()                     # the driver is half gone
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "tdnode0:ppn=1:gpus=1"
    result = site.cluster.run(job)
    requeued_as_node_fault(site, result, f"GPU device {dev}/nvidiactl ([gpus] shared_devices) is missing here")
    assert site.leftovers(docker_client, job.jobid) == []


def test_check_reports_the_gpu_method_and_what_it_sees(make_site, tmp_path):
    dev = fake_gpus(tmp_path, 2)
    site = make_site(nodes=1, extra_config=gpu_config(dev, sister="whole-node"))
    cli = "import sys; from torque_docker.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", cli, "--config", str(site.configs["tdnode0"]), "check",
                           "--pbs-home", str(site.cluster.pbs_home("tdnode0"))],
                          capture_output=True, text=True, timeout=180, cwd="/")
    text = done.stdout + done.stderr
    assert "OK   GPUs: ok" in text, text
    assert (f"GPUs: method devices, sisters: whole-node; 2 GPU(s): {dev}/nvidia0 {dev}/nvidia1; "
            f"shared: {dev}/nvidiactl {dev}/nvidia-uvm; driver files: none") in text, text


def test_the_nvidia_runtime_where_docker_has_none_is_the_nodes_fault(make_site, docker_client, tmp_path):
    """This machine's dockerd has no NVIDIA runtime: the device request it cannot honour is
    refused by Docker, which requeues the job as the node's fault with the fix."""
    site = make_site(nodes=1, extra_config=gpu_config(fake_gpus(tmp_path), method="nvidia-runtime"))
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    job.nodes_spec = "tdnode0:ppn=1:gpus=2"
    result = site.cluster.run(job)
    requeued_as_node_fault(site, result, "could not give container", "its GPUs 0,1", "NVIDIA Container Toolkit")
    assert site.leftovers(docker_client, job.jobid) == []
