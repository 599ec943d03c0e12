"""`pip install .` beside an installed upstream: owns no upstream file, survives upstream
reinstalls, and uninstalls cleanly (SPEC section 2)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_PROBE = ("import torch_pruning as tp; from torch_pruning.utils import Pruning, "
          "load_state_dict_pruned; print(tp.__file__); "
          "print(tp.Pruning is Pruning, tp.load_state_dict_pruned is load_state_dict_pruned, "
          "tp.DependencyGraph.__name__)")
_PLAIN = "import torch_pruning as tp; print(tp.__file__, hasattr(tp, 'Pruning'), tp.DependencyGraph.__name__)"


def _run(cmd, cwd, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and out.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}")
    return out


def _site(env_dir: Path) -> Path:
    return Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])


def _venv_with_upstream(env_dir: Path) -> Path:
    """A fresh venv seeing this environment's torch, with its own upstream torch-pruning."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=env_dir.parent)
    # torch & co. come from this environment, *after* the new venv's own site-packages
    (_site(env_dir) / "zz_base_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    fetch = _run([sys.executable, "-m", "pip", "--python", _py(env_dir), "install", "-q",
                  "--no-deps", "--ignore-installed", "torch-pruning==1.6.1"],
                 cwd=env_dir.parent, check=False)
    if fetch.returncode != 0:
        pytest.skip(f"cannot install torch-pruning==1.6.1 from the package index: {fetch.stderr[-300:]}")
    return env_dir


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """The fresh venv with our wheel installed beside upstream."""
    base = tmp_path_factory.mktemp("install")
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels), str(ROOT)], cwd=base)
    env_dir = _venv_with_upstream(base / "venv")
    # --ignore-installed: the base environment seen through zz_base_env.pth may hold an older
    # copy of this package, which pip would otherwise take as already installed
    _run([sys.executable, "-m", "pip", "--python", _py(env_dir), "install", "-q", "--no-deps",
          "--ignore-installed", str(next(wheels.glob("*.whl")))], cwd=base)
    return env_dir


def _py(venv: Path) -> str:
    return str(venv / "bin" / "python")


def test_installed_wheel_exposes_pat_names_on_upstream(venv: Path, tmp_path: Path) -> None:
    out = _run([_py(venv), "-c", _PROBE], cwd=tmp_path).stdout.split()
    assert Path(out[0]).is_relative_to(venv), "upstream's own package must be the one imported"
    assert out[1:] == ["True", "True", "DependencyGraph"]


def test_wheel_owns_no_upstream_file(venv: Path, tmp_path: Path) -> None:
    record = next(venv.rglob("torch_pruning_pat-*.dist-info/RECORD")).read_text()
    files = [line.split(",")[0].strip() for line in record.splitlines() if "torch_pruning" in line]
    owned = [f for f in files if f.startswith("torch_pruning/") and not f.startswith("torch_pruning/pat/")]
    assert files and not owned, owned


def test_upstream_reinstall_keeps_and_uninstall_removes_pat(venv: Path, tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--python", _py(venv)]
    _run(pip + ["install", "-q", "--no-deps", "--force-reinstall", "torch-pruning==1.6.1"], cwd=tmp_path)
    assert _run([_py(venv), "-c", _PROBE], cwd=tmp_path).stdout.split()[1:] == ["True", "True", "DependencyGraph"]
    _run(pip + ["uninstall", "-y", "-q", "torch-pruning-pat"], cwd=tmp_path)
    out = _run([_py(venv), "-c", _PLAIN], cwd=tmp_path).stdout.split()
    assert out[1:] == ["False", "DependencyGraph"]
    assert not (Path(out[0]).parent / "pat").exists()


def test_editable_style_install_warns_that_upstream_won(tmp_path: Path) -> None:
    """What `pip install -e .` leaves: the startup hook, but pat outside upstream's package."""
    env_dir = _venv_with_upstream(tmp_path / "venv")
    site = _site(env_dir)
    (site / "_torch_pruning_pat_hook.py").write_text(
        (ROOT / "torch_pruning" / "pat" / "_startup_hook.py").read_text())
    (site / "torch_pruning_pat.pth").write_text("import _torch_pruning_pat_hook\n")
    out = _run([_py(env_dir), "-c", _PLAIN], cwd=tmp_path)
    assert out.stdout.split()[1:] == ["False", "DependencyGraph"]
    assert "editable install (pip install -e) cannot shadow an installed package" in out.stderr
