"""A job pinned at qsub ([images] pin) whose digest a node lacks, with pulls off: the MS
treats it as its own fault (requeue, bounded, then the explanation with the fix
`torque-docker stage`); a sister never marks itself down for it, because users can write
any digest and a user's text must never take a node down."""
from conftest import OPENMPI_IMAGE
from torque_docker import pin

SCRIPT = "#!/bin/bash\necho SCRIPT-RAN\n"
MISSING = f"{OPENMPI_IMAGE}@sha256:{'0' * 64}"


def test_missing_pinned_digest_is_the_ms_nodes_fault_and_no_sister_goes_down(make_site, docker_client):
    site = make_site(nodes=2, extra_config="[images]\npull = never\n[jobs]\nmax_attempts = 2\n")
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={MISSING}")
    first = site.cluster.run(job)
    assert [r.rc for r in first.runs("prologue.parallel")] == [0]
    assert first.runs("prologue")[0].rc == 2 and first.state == "Q"          # node fault: requeued
    assert first.down_nodes == []
    second = site.cluster.run(job)
    assert second.state == "C" and second.exit_status == 1 and "SCRIPT-RAN" not in second.stdout
    assert f"pinned image {MISSING} is not on node tdnode0" in second.stderr
    assert f"stage it on this node: torque-docker stage {MISSING}" in second.stderr
    assert "(node fault, 2 attempts)" in second.stderr
    assert second.down_nodes == []
    assert f"pinned image {MISSING} is not on node tdnode1" in site.log_file.read_text()
    assert site.leftovers(docker_client, job.jobid) == []


def test_local_image_without_a_registry_digest_cannot_be_pinned_from_the_daemon(docker_client):
    """Images built locally (as the test images are) have no RepoDigests: the daemon says so."""
    digest, why = pin.from_daemon("unix:///var/run/docker.sock", OPENMPI_IMAGE)
    assert digest == "" and why.startswith("Docker: ")
    digest, why = pin.from_daemon("unix:///nonexistent/docker.sock", OPENMPI_IMAGE)
    assert digest == "" and why.startswith("no local Docker")
