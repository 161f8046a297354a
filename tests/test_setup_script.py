"""scripts/setup.sh, the one install path: its root / sudo / neither branches, run as a dry run (the commands are
printed, nothing is installed) with fake ``id``, ``sudo``, ``dpkg-query`` and ``apt-get`` on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def run_setup(tmp_path: Path, *args: str, uid: int = 0, sudo: bool = False, installed: bool = False,
              apt: bool = True) -> subprocess.CompletedProcess:
    """Dry-run a copy of the script in a fresh checkout-like folder (no .venv) with only fake tools on PATH."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, repo / "scripts" / "setup.sh")
    fakebin = tmp_path / "bin"
    fakebin.mkdir(exist_ok=True)
    for tool in ("id", "sudo", "dpkg-query", "apt-get", "python3"):
        (fakebin / tool).unlink(missing_ok=True)
    _fake(fakebin, "id", f'[ "$1" = -u ] && echo {uid} || echo "uid={uid}"')
    if sudo:
        _fake(fakebin, "sudo", 'echo "sudo ran for real: $*" >&2; exit 99')  # a dry run must never call it
    _fake(fakebin, "dpkg-query", "echo 'install ok installed'" if installed else "exit 1")
    if apt:
        _fake(fakebin, "apt-get", 'echo "apt-get ran for real: $*" >&2; exit 99')
    (fakebin / "python3").symlink_to(sys.executable)  # a venv's python: it has ensurepip and venv
    env = {"PATH": str(fakebin), "IMEDSAM_SETUP_DRY_RUN": "1", "HOME": str(tmp_path)}
    return subprocess.run([BASH, str(repo / "scripts" / "setup.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def commands(proc: subprocess.CompletedProcess) -> list[str]:
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


PIP_STEPS = [
    "python3 -m venv .venv",
    ".venv/bin/python -m pip install -q --upgrade pip",
    ".venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1",
    ".venv/bin/python -m pip install -q -e .[test]",
    ".venv/bin/python -m pip install -q --no-deps stardist==0.9.1",
]


def test_root_without_sudo_installs_directly(tmp_path):
    proc = run_setup(tmp_path, uid=0, sudo=False)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    assert cmds[0] == "env DEBIAN_FRONTEND=noninteractive apt-get update -q"  # update first
    assert cmds[1].startswith("env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ")
    assert {"xvfb", "xauth", "libxcb-cursor0", "libxkbcommon-x11-0", "libgl1"} <= set(cmds[1].split())
    assert not any("sudo" in c for c in cmds)
    assert cmds[2:] == PIP_STEPS  # setup only: nothing is started


def test_user_with_sudo_uses_sudo_for_apt_only(tmp_path):
    proc = run_setup(tmp_path, "--test", uid=1000, sudo=True)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    assert cmds[0] == "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q"
    assert cmds[1].startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y")
    assert cmds[2:-1] == PIP_STEPS  # the venv belongs to the user: no sudo there
    assert cmds[-1] == ".venv/bin/python -m pytest -q -ra"  # the README's test command


def test_user_without_sudo_is_told_what_to_run(tmp_path):
    proc = run_setup(tmp_path, uid=1000, sudo=False)
    assert proc.returncode == 1
    assert commands(proc) == []  # stops before anything else
    assert "you are not root and sudo is not installed" in proc.stderr
    assert re.search(r"apt-get update && apt-get install -y --no-install-recommends .*libxcb-cursor0", proc.stderr)
    assert "--no-apt" in proc.stderr


def test_installed_packages_need_neither_root_nor_sudo(tmp_path):
    proc = run_setup(tmp_path, "--demo", "--sample", "retina", uid=1000, sudo=False, installed=True)
    assert proc.returncode == 0, proc.stderr
    assert "all installed" in proc.stdout
    assert commands(proc) == [*PIP_STEPS, ".venv/bin/imedsam-demo --sample retina"]


def test_no_apt_and_not_debian(tmp_path):
    proc = run_setup(tmp_path, "--no-apt", uid=1000)
    assert proc.returncode == 0, proc.stderr
    assert commands(proc) == PIP_STEPS
    proc = run_setup(tmp_path, uid=0, apt=False)  # no apt-get at all
    assert proc.returncode == 1 and "apt-get not found" in proc.stderr and "--no-apt" in proc.stderr
    proc = run_setup(tmp_path, "--bogus")
    assert proc.returncode == 1 and "unknown option --bogus" in proc.stderr


def test_help_and_existing_venv_is_kept(tmp_path):
    proc = run_setup(tmp_path, "--help")
    assert proc.returncode == 0 and "--setup-only" in proc.stdout and "--demo" in proc.stdout
    venv_python = tmp_path / "repo" / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    _fake(venv_python.parent, "python", "exit 1")  # asked whether PyQt5 is installed: no
    proc = run_setup(tmp_path, "--test", "--", "-k", "io", installed=True)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    assert "python3 -m venv .venv" not in cmds and cmds[0] == PIP_STEPS[2]  # idempotent: the venv stays
    assert not any("uninstall" in c for c in cmds)
    assert cmds[-1] == ".venv/bin/python -m pytest -q -ra -k io"
    _fake(venv_python.parent, "python", "exit 0")  # an older set-up's venv with PyQt5: it goes
    cmds = commands(run_setup(tmp_path, installed=True))
    assert cmds[cmds.index(PIP_STEPS[3]) + 1] == ".venv/bin/python -m pip uninstall -y -q PyQt5 PyQt5-Qt5 PyQt5-sip"


def test_ci_and_readme_use_the_script():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup.sh --test" in ci
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):readme.index("## Using it in napari")]
    blocks = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert "bash scripts/setup.sh --demo" in blocks[0] and "bash scripts/setup.sh --test" in blocks[1]
    assert "sudo" not in "".join(blocks)  # the script asks for sudo only when it has to
    assert os.access(SCRIPT, os.X_OK)
