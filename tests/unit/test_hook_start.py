"""How the mom_priv hooks start Python: -S (no site module) and the package's directories
named in the hook by install (install.package_dirs), so a hook pays neither the site module's
.pth files nor imports it does not use."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from torque_docker import check
from torque_docker import install

ENV = {"PATH": "/usr/bin:/bin"}


def test_installed_hooks_run_python_with_S_and_name_the_site_directories(tmp_path):
    dirs = install.package_dirs(sys.executable)
    for name in install.HOOKS:
        text = install._hook_text(install.PACKAGE_HOOKS / name, sys.executable)
        lines = text.splitlines()
        assert lines[0] == f"#!{sys.executable} -S"
        assert f"sys.path += {dirs!r}  {install.PATH_LINE_MARK}" in lines
    starter = install._hook_text(install.PACKAGE_HOOKS / install.STARTER, sys.executable)
    assert starter.splitlines()[0] == f"#!{sys.executable} -s"          # the job starter keeps site
    assert install.PATH_LINE_MARK not in starter


def test_package_dirs_are_what_site_adds_without_the_callers_pythonpath(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    install._package_dirs.pop(sys.executable, None)
    dirs = install.package_dirs(sys.executable)
    assert dirs and "" not in dirs and str(tmp_path) not in dirs
    bare = subprocess.run([sys.executable, "-S", "-c", "import sys; print('\\n'.join(sys.path))"], env=ENV,
                          capture_output=True, text=True, cwd="/").stdout.split("\n")
    assert not set(dirs) & set(bare)


def test_the_hooks_path_line_reaches_every_dependency_without_site(tmp_path):
    """What a hook imports, through its own line under -S, in a clean environment."""
    text = install._hook_text(install.PACKAGE_HOOKS / "prologue", sys.executable)
    prelude = check.path_prelude(_write(tmp_path / "prologue", text))
    assert prelude.startswith("import sys\nsys.path += [")
    code = prelude + "import torque_docker.cli, docker, jinja2, filelock, cryptography; print(sys.flags.no_site)"
    done = subprocess.run([sys.executable, "-S", "-c", code], env=ENV, capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    without = subprocess.run([sys.executable, "-S", "-c", "import jinja2"], env=ENV, capture_output=True, cwd="/")
    assert without.returncode != 0           # the line is what finds them


def test_a_hook_as_installed_runs_and_leaves_a_job_without_image_alone(tmp_path):
    hook = _write(tmp_path / "prologue", install._hook_text(install.PACKAGE_HOOKS / "prologue", sys.executable))
    hook.chmod(0o500)
    src = str(Path(check.__file__).resolve().parents[1])          # this checkout's package first
    done = subprocess.run([str(hook), "1.s", "u", "u", "job", "", "walltime=00:01:00", "batch", "", ""],
                          env={**ENV, "PYTHONPATH": src}, capture_output=True, text=True, cwd="/")
    assert done.returncode == 0 and done.stderr == ""


def test_check_accepts_the_installed_form_and_the_rpms_libexec_form(tmp_path):
    for site in (False, True):
        text = install._hook_text(install.PACKAGE_HOOKS / "epilogue", "/usr/bin/python3", site=site)
        assert text.splitlines()[0] == ("#!/usr/bin/python3 -s" if site else "#!/usr/bin/python3 -S")
    rpm = install._hook_text(install.PACKAGE_HOOKS / "epilogue", "/usr/bin/python3", site=True)
    assert "sys.path += []" in rpm                    # works with site: nothing to add


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
