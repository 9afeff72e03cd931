"""The RPM: built with rpmbuild from this checkout, its contents and modes read back with
``rpm -qlp --dump``, installed into a scratch root, and its hooks run by the simulated
pbs_mom (permission check included) for a real container job."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, NamedTuple

import pytest

from conftest import OPENMPI_IMAGE, REPO, momsim

from torque_docker import config
from torque_docker import install as install_mod
from torque_docker.check import pelog_permission_problem
from torque_docker.render import PACKAGE_TEMPLATES

LIBEXEC = "/usr/libexec/torque-docker"
REQUIRES = ("python3 >= 3.9", "python3-docker", "python3-jinja2", "python3-filelock", "python3-cryptography",
            "openssh-clients")


class Entry(NamedTuple):
    path: str
    size: int
    mode: int
    owner: str
    group: str
    config: bool
    symlink: str


@pytest.fixture(scope="module")
def rpm_file() -> Path:
    out = Path(tempfile.mkdtemp(prefix="td-rpm-"))
    try:
        built = subprocess.run(["bash", str(REPO / "packaging/build-rpm.sh"), str(out)], capture_output=True,
                               text=True, timeout=120)
        assert built.returncode == 0, built.stdout + built.stderr
        rpms = sorted(out.glob("torque-docker-*.noarch.rpm"))
        assert len(rpms) == 1, rpms
        yield rpms[0]
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def dump(rpm_file) -> Dict[str, Entry]:
    text = subprocess.run(["rpm", "-qlp", "--dump", str(rpm_file)], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    entries = {}
    for line in text.splitlines():
        # path size mtime digest mode owner group isconfig isdoc rdev symlink
        fields = line.split()
        assert len(fields) == 11, line
        entries[fields[0]] = Entry(fields[0], int(fields[1]), int(fields[4], 8), fields[5], fields[6],
                                   fields[7] == "1", fields[10])
    return entries


@pytest.fixture(scope="module")
def root(rpm_file) -> Path:
    """The package installed into a scratch root (no scriptlets: the root has no /bin/sh)."""
    scratch = Path(tempfile.mkdtemp(prefix="td-rpmroot-", dir="/var/tmp"))
    os.chmod(scratch, 0o755)
    try:
        done = subprocess.run(["rpm", "-i", "--root", str(scratch), "--nodeps", "--noscripts", str(rpm_file)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sitelib(dump: Dict[str, Entry]) -> str:
    [init] = [p for p in dump if p.endswith("/torque_docker/__init__.py")]
    return init[: -len("/torque_docker/__init__.py")]


def python_env(root: Path, dump) -> Dict[str, str]:
    return {"PATH": "/bin:/usr/bin", "PYTHONPATH": f"{root}{sitelib(dump)}"}


# ----------------------------------------------------------------------------- contents
def test_hooks_are_root_owned_and_not_writable_by_group_or_others(dump):
    for hook in install_mod.HOOKS + (install_mod.STARTER,):
        entry = dump[f"{LIBEXEC}/{hook}"]
        assert (entry.owner, entry.group) == ("root", "root"), entry
        assert stat.S_ISREG(entry.mode) and entry.symlink == "X", entry
        assert stat.S_IMODE(entry.mode) == (0o755 if hook == install_mod.STARTER else 0o500), oct(entry.mode)
    for entry in dump.values():
        assert (entry.owner, entry.group) == ("root", "root"), entry
        assert not entry.mode & 0o022, f"{entry.path} is group/other writable ({entry.mode:o})"


def test_config_is_marked_config_noreplace_and_is_the_documented_default(rpm_file, dump, root):
    conf = "/etc/torque-docker/torque-docker.conf"
    assert dump[conf].config and stat.S_IMODE(dump[conf].mode) == 0o644
    profile = "/etc/torque-docker/seccomp-cma.json"     # the site may edit it for its Docker version
    assert sorted(p for p, e in dump.items() if e.config) == [profile, conf]
    flags = subprocess.run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(rpm_file)],
                           capture_output=True, text=True, check=True).stdout
    for path in (conf, profile):
        assert f"{path} cn\n" in flags                  # c: %config, n: noreplace
    assert (root / conf.lstrip("/")).read_text() == config.render_defaults()


def test_layout(dump):
    lib = sitelib(dump)
    for name in install_mod.HOOKS + (install_mod.STARTER,):   # package data, as real files (not the repo's symlinks)
        entry = dump[f"{lib}/torque_docker/hooks/{name}"]
        assert stat.S_ISREG(entry.mode) and entry.symlink == "X"
    shipped = sorted(p.name for p in PACKAGE_TEMPLATES.glob("*.j2"))
    assert shipped
    for name in shipped:
        assert stat.S_ISREG(dump[f"{lib}/torque_docker/templates/{name}"].mode)
        assert stat.S_ISREG(dump[f"/usr/share/torque-docker/templates/{name}"].mode)
    assert stat.S_ISDIR(dump["/etc/torque-docker/templates"].mode)
    assert not [p for p in dump if p.startswith("/etc/torque-docker/templates/")]     # the site's, empty
    assert stat.S_IMODE(dump["/usr/bin/torque-docker"].mode) == 0o755
    for unit in ("torque-docker-gc.service", "torque-docker-gc.timer"):
        assert f"/usr/lib/systemd/system/{unit}" in dump
    assert stat.S_ISDIR(dump["/var/lib/torque-docker"].mode)
    for path in dump:   # never pbs_mom's directories, never the secret
        assert "mom_priv" not in path and "/spool/" not in path and not path.endswith("/secret"), path
    modules = {p.name for p in (REPO / "src/torque_docker").glob("*.py")}
    assert modules <= {Path(p).name for p in dump if p.startswith(f"{lib}/torque_docker/")}


def test_requires_for_rhel(rpm_file):
    text = subprocess.run(["rpm", "-qp", "--requires", str(rpm_file)], capture_output=True, text=True,
                          check=True).stdout
    requires = {line.strip() for line in text.splitlines()}
    assert set(REQUIRES) <= requires, requires
    info = subprocess.run(["rpm", "-qp", "--qf", "%{ARCH} %{VERSION}", str(rpm_file)], capture_output=True,
                          text=True, check=True).stdout
    from torque_docker import __version__
    assert info == f"noarch {__version__}"


# ----------------------------------------------------------------------------- installed tree
def test_installed_hooks_pass_pbs_moms_permission_check(root):
    for hook in install_mod.HOOKS + (install_mod.STARTER,):
        path = root / LIBEXEC.lstrip("/") / hook
        assert pelog_permission_problem(path) is None, path
        assert path.read_text().startswith("#!/usr/bin/python3 -s\n")
    starter = root / LIBEXEC.lstrip("/") / install_mod.STARTER
    assert stat.S_IMODE(starter.stat().st_mode) & 0o005 == 0o005     # job users run it


def test_installed_library_and_command_work(root, dump):
    env = python_env(root, dump)
    where = subprocess.run(["/usr/bin/python3", "-s", "-c", "import torque_docker.install as a, torque_docker.render as r; "
                            "print(a.__file__); print(r.PACKAGE_TEMPLATES.is_dir(), a.PACKAGE_HOOKS.is_dir())"],
                           capture_output=True, text=True, env=env, cwd="/", timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [f"{root}{sitelib(dump)}/torque_docker/install.py", "True True"]
    printed = subprocess.run([str(root / "usr/bin/torque-docker"), "config"], capture_output=True, text=True,
                             env=env, cwd="/", timeout=60)
    assert printed.returncode == 0 and printed.stdout == config.render_defaults(), printed.stderr


def test_install_from_the_package_gives_hooks_pbs_mom_accepts(root, dump, tmp_path):
    mom_priv = tmp_path / "mom_priv"
    mom_priv.mkdir()
    conf = tmp_path / "td.conf"
    conf.write_text(f"[paths]\nstate_dir = {tmp_path}/state\nsecret_file = {tmp_path}/secret\n"
                    f"[ssh]\ndropin = {tmp_path}/90-torque-docker.conf\n")
    done = subprocess.run([str(root / "usr/bin/torque-docker"), "--config", str(conf), "install", "--mom-priv",
                           str(mom_priv), "--python", "/usr/bin/python3"],
                          capture_output=True, text=True, env=python_env(root, dump), cwd="/", timeout=60)
    assert done.returncode == 0, done.stderr
    def body(lines):      # all but the interpreter line and the package-directories line
        return [line for line in lines[1:] if not line.rstrip().endswith(install_mod.PATH_LINE_MARK)]

    for hook in install_mod.HOOKS:
        assert pelog_permission_problem(mom_priv / hook) is None
        # The package's own hook, made fast: python -S, naming the directories the site
        # module would have added (the libexec copy keeps -s, which works, only slower).
        installed = (mom_priv / hook).read_text().splitlines(keepends=True)
        shipped = (root / LIBEXEC.lstrip("/") / hook).read_text().splitlines(keepends=True)
        assert installed[0] == "#!/usr/bin/python3 -S\n" and body(installed) == body(shipped), installed
        assert [line for line in installed if line.startswith("sys.path += [") and "/" in line], installed
    assert f"$job_starter {mom_priv}/torque-docker-starter" in (mom_priv / "config").read_text()


def test_packaged_submit_filter_runs_for_a_user_from_the_installed_package(root, dump):
    """Shebang and package directory are the RPM's own; run from the scratch root (its
    package directory re-pointed there) as qsub would, it carries the short form."""
    entry = dump[f"{LIBEXEC}/submit-filter"]
    assert stat.S_IMODE(entry.mode) == 0o755 and (entry.owner, entry.group) == ("root", "root")
    text = (root / LIBEXEC.lstrip("/") / "submit-filter").read_text()
    lines = text.splitlines(keepends=True)
    assert re.fullmatch(r"#!/\S*python3 -IS\n", lines[0]), lines[0]
    path_line = f'sys.path.insert(0, "{sitelib(dump)}")  # torque-docker: package directory\n'
    assert path_line in lines
    runnable = Path(tempfile.mkdtemp(prefix="td-rpmfilter-"))
    try:
        copy = runnable / "submit-filter"
        copy.write_text("#!/usr/bin/python3 -IS\n" + "".join(lines[1:]).replace(
            path_line, f"sys.path.insert(0, {str(root) + sitelib(dump)!r})\n"))
        copy.chmod(0o755)
        done = subprocess.run(["/bin/sh", "-c", f"{copy} '-l' 'image=debian:12'"], input=b"hostname\n",
                              capture_output=True, timeout=60, cwd="/tmp",
                              env={"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(runnable / "none.conf")})
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"#PBS -l other=image=debian:12\nhostname\n"
    finally:
        shutil.rmtree(runnable, ignore_errors=True)


def test_systemd_units_verify(root):
    units = Path(tempfile.mkdtemp(prefix="td-units-"))
    try:
        for name in ("torque-docker-gc.service", "torque-docker-gc.timer"):
            text = (root / "usr/lib/systemd/system" / name).read_text()
            # The command as installed in the scratch root (systemd-analyze checks it exists).
            (units / name).write_text(text.replace("ExecStart=/usr/bin/", f"ExecStart={root}/usr/bin/"))
        service = (units / "torque-docker-gc.service").read_text()
        assert f"ExecStart={root}/usr/bin/torque-docker gc\n" in service and "Type=oneshot" in service
        assert "OnUnitActiveSec=10min" in (units / "torque-docker-gc.timer").read_text()
        verified = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "torque-docker-gc.service"),
                                   str(units / "torque-docker-gc.timer")], capture_output=True, text=True,
                                  timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(units, ignore_errors=True)


# ----------------------------------------------------------------------------- scriptlets
def scriptlet(rpm_file, tag: str) -> str:
    return subprocess.run(["rpm", "-qp", "--qf", f"%{{{tag}}}", str(rpm_file)], capture_output=True, text=True,
                          check=True).stdout


def test_post_only_hints(rpm_file, tmp_path):
    text = scriptlet(rpm_file, "POSTIN")
    code = re.sub(r"<<'EOF'\n.*?\nEOF\n", "\n", text, flags=re.S)        # the hint's text is not code
    code = "\n".join(line.split("#", 1)[0] for line in code.splitlines())
    assert "torque-docker install" not in code and "mom_priv" not in code, code
    assert not re.search(r"\b(cp|install|mv|ln|rm|tee|sed|chmod|chown|mkdir|touch|torque-docker)\b", code), code
    assert set(re.findall(r">\s*([^&\s]\S*)", code)) == {"/dev/null"}, code     # no file written
    first = subprocess.run(["sh", "-c", text, "post", "1"], capture_output=True, text=True, timeout=30)
    assert first.returncode == 0 and "torque-docker install --mom-priv" in first.stdout
    upgrade = subprocess.run(["sh", "-c", text, "post", "2"], capture_output=True, text=True, timeout=30)
    assert upgrade.returncode == 0 and upgrade.stdout == ""


def run_scriptlet(text: str, arg: str, env: Dict[str, str], spool: Path) -> subprocess.CompletedProcess:
    """Run a scriptlet with ``spool`` in place of the host's /var/spool, in a private mount
    namespace: the scriptlet also searches the default PBS homes, and what this machine has
    installed there (a node with torque-docker enabled) must not decide the outcome."""
    spool.mkdir(exist_ok=True)
    wrapper = 'mount --bind "$0" /var/spool && exec sh -c "$1" scriptlet "$2"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", wrapper,
                           str(spool), text, arg], capture_output=True, text=True, env=env, timeout=30)


def test_erase_is_refused_while_mom_priv_still_runs_the_hooks(rpm_file, tmp_path):
    text = scriptlet(rpm_file, "PREUN")
    spool = tmp_path / "spool"                       # stands for /var/spool
    pbs_home = tmp_path / "torque"
    (pbs_home / "mom_priv").mkdir(parents=True)
    env = {"PATH": "/bin:/usr/bin", "PBS_HOME": str(pbs_home)}
    hook = install_mod._hook_text(install_mod.PACKAGE_HOOKS / "epilogue", "/usr/bin/python3")
    clean = run_scriptlet(text, "0", env, spool)
    assert clean.returncode == 0, clean.stderr
    (pbs_home / "mom_priv/prologue").write_text("#!/bin/sh\nexit 0\n")     # a site's own hook is not ours
    assert run_scriptlet(text, "0", env, spool).returncode == 0
    (pbs_home / "mom_priv/epilogue").write_text(hook)
    erase = run_scriptlet(text, "0", env, spool)
    assert erase.returncode == 1
    assert f"run 'torque-docker uninstall --mom-priv {pbs_home}/mom_priv'" in erase.stderr
    upgrade = run_scriptlet(text, "1", env, spool)
    assert upgrade.returncode == 0, upgrade.stderr


@pytest.mark.parametrize("home", ["torque", "pbs"])
def test_erase_also_looks_in_the_default_pbs_homes(rpm_file, tmp_path, home):
    """dnf's own PBS_HOME may not be pbs_mom's: the usual homes are searched as well."""
    text = scriptlet(rpm_file, "PREUN")
    spool = tmp_path / "spool"
    (spool / home / "mom_priv").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mom_priv").mkdir(parents=True)
    for env in ({"PATH": "/bin:/usr/bin"}, {"PATH": "/bin:/usr/bin", "PBS_HOME": str(elsewhere)}):
        assert run_scriptlet(text, "0", env, spool).returncode == 0
    (spool / home / "mom_priv/prologue.parallel").write_text(
        install_mod._hook_text(install_mod.PACKAGE_HOOKS / "prologue.parallel", "/usr/bin/python3"))
    for env in ({"PATH": "/bin:/usr/bin"}, {"PATH": "/bin:/usr/bin", "PBS_HOME": str(elsewhere)}):
        erase = run_scriptlet(text, "0", env, spool)
        assert erase.returncode == 1, erase.stderr
        assert f"/var/spool/{home}/mom_priv/prologue.parallel still runs torque-docker" in erase.stderr


# ----------------------------------------------------------------------------- with the simulated pbs_mom
@pytest.mark.parametrize("mode,uid,accepted", [
    (0o500, 0, True), (0o700, 0, True), (0o555, 0, True), (0o4500, 0, True), (0o520, 0, False),
    (0o502, 0, False), (0o400, 0, False), (0o100, 0, False), (0o500, 2001, False)])
def test_package_check_agrees_with_the_simulated_pbs_mom(root, mode, uid, accepted):
    """check.pelog_permission_problem and momsim's check_pelog_permissions give the same verdict."""
    cluster = momsim.Cluster(Path(tempfile.mkdtemp(prefix="td-perm-", dir="/var/tmp")), ["tdnode0"], prologalarm=30)
    try:
        hook = cluster.install_hook("tdnode0", "prologue", root / LIBEXEC.lstrip("/") / "prologue", mode=mode, uid=uid)
        result = cluster.run(momsim.Job(jobid=cluster.new_jobid(), user="tduser", script="#!/bin/bash\ntrue\n",
                                        nodes=[("tdnode0", 1)], resources={"walltime": "00:01:00"}))
        [run] = result.runs("prologue")
        ours = pelog_permission_problem(hook)
        assert (run.rc != -1) is accepted, (oct(mode), uid, run.rc, run.message)
        assert (ours is None) is accepted, (oct(mode), uid, ours)
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)


def test_a_container_job_through_the_packaged_hooks(make_site, docker_client, root, dump):
    """mom_priv holds symlinks to the package's libexec hooks (mom follows them), and the hooks
    import the package's own library: an ssh hop into each node's container works."""
    site = make_site(nodes=2)
    libexec = root / LIBEXEC.lstrip("/")
    for node in site.nodes:
        for hook in install_mod.HOOKS:
            site.cluster.install_hook(node, hook, libexec / hook, symlink=True)
        env_file = site.cluster.pbs_home(node) / "pbs_environment"
        env_file.write_text(env_file.read_text() + f"PYTHONPATH={root}{sitelib(dump)}\n")
    script = "#!/bin/bash\nfor a in $(sort -u $PBS_NODEFILE); do ssh $a cat /etc/torque-docker-test-marker; done\n"
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};run=host")
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert {r.script for r in result.hook_runs if r.rc == 0} >= set(install_mod.HOOKS)
    assert all(r.rc == 0 for r in result.hook_runs), [(r.script, r.rc, r.message) for r in result.hook_runs]
    assert result.stdout.count("inside-the-openmpi-image") == 2, result.stdout
    assert site.leftovers(docker_client, job.jobid) == []
