#!/usr/bin/env python
"""Run upstream Torch-Pruning's own test-suite against plain upstream and against our overlay.

Issue 3, item 2 ("Upstream compatibility") / SPEC section 2: upstream's ``tests/`` (shipped in the
``torch-pruning`` sdist on PyPI, never copied into this repository) must give the same results
against the checkout's ``torch_pruning`` overlay as against the plain installed upstream package.

What it does:

1. Gets the sdist of the installed upstream version (``pip download --no-deps --no-binary :all:``)
   into a cache directory outside the repository (default
   ``${XDG_CACHE_HOME:-~/.cache}/torch-pruning-pat/upstream-suite``; reused offline once
   filled), checks that the installed upstream package is
   byte-identical to the sdist's ``torch_pruning/`` sources, and copies only the sdist's
   ``tests/`` into a ``suite`` folder *without* upstream's source package beside it (upstream's
   tests append their parent folder to ``sys.path``; with the source package there a test could
   import it instead of the installed one).
2. Runs pytest on those tests twice, in subprocesses of the same interpreter, each from its own
   empty temporary working directory with ``PYTHONSAFEPATH=1``,
   ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``, an empty ini file (so no ``pyproject.toml`` or
   ``conftest.py`` of the checkout is read) and a small plugin (written to a temporary folder)
   that records every test's outcome and, after collection and at session end, which
   ``torch_pruning`` the process actually used:

   * ``plain``:   ``PYTHONPATH`` removed; must use the installed upstream ``__init__.py``, with no
     PAT names, no ``torch_pruning.pat`` and no module loaded from the checkout (if the
     torch-pruning-pat wheel is installed in the environment, the plugin removes the wheel's
     import hook from ``sys.meta_path`` before any test module is imported);
   * ``overlay``: ``PYTHONPATH=<checkout>``; must use ``<checkout>/torch_pruning/__init__.py``,
     expose ``torch_pruning.Pruning`` / ``torch_pruning.utils.Pruning``, and load every upstream
     submodule (``torch_pruning.dependency``, ...) from the installed upstream directory.
3. Prints the outcome counts of both runs, every test whose outcome differs, the deselected tests
   with their reasons, the checks above, and how the overlay's ``torch_pruning`` /
   ``torch_pruning.utils`` namespaces differ from upstream's (names missing, different or extra;
   informational unless ``--strict-namespace``).

Exit status: 0 when the outcomes are identical and both runs used the intended package;
1 when an outcome differs, a check fails, a run timed out or no test ran; 3 when the sdist can
not be obtained (no network and nothing cached); 2 for usage errors.

Examples::

    python tests/upstream_compat/run_upstream_suite.py                  # the full suite
    python tests/upstream_compat/run_upstream_suite.py --subset ci      # minus 2 slow tests
    python tests/upstream_compat/run_upstream_suite.py --subset test_pruner.py -k TransposeConv
    python tests/upstream_compat/run_upstream_suite.py --jobs 2 --timeout 1800
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

CHECKOUT = Path(__file__).resolve().parents[2]
DIST = "torch-pruning"

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NO_SDIST = 0, 1, 2, 3

#: Tests deselected in *both* runs, with the reason. Paths are relative to upstream's ``tests/``.
#: ``pretrained=True`` makes torchvision download ImageNet weights (not allowed here, and there is
#: no network besides the package registry); module-level ones are ignored at collection.
_RESNET18 = "downloads resnet18 ImageNet weights (resnet18(pretrained=True))"
NEEDS_WEIGHTS: Dict[str, str] = {
    "test_group_prune.py::test_depgraph": _RESNET18,
    "test_hessian_importance.py::test_hessian": _RESNET18,
    "test_regularization.py::test_pruner": "downloads resnet50 ImageNet weights "
                                           "(entry(pretrained=True))",
    "test_taylor_importance.py::test_taylor": _RESNET18,
    "test_print_tool.py": "module-level script: downloads resnet18 ImageNet weights at import "
                          "(no test functions)",
}
#: Deselected in both runs only when this machine has no CUDA device.
NEEDS_CUDA: Dict[str, str] = {
    "test_benchmark.py": "module-level script: torch.device('cuda:0') at import (no test "
                         "functions); needs a CUDA GPU",
}

#: Named subsets (``--subset NAME``): every upstream test file minus the listed tests (so tests
#: added by a later 1.6.x release are picked up). ``ci`` is what tests/test_upstream_compat.py
#: runs. Measured with one torch thread (docs/upstream_compat.md): the full suite costs about
#: 125 CPU seconds per run, 94-100 of them in the two tests below; everything else (dependency
#: graph, pruning functions, Magnitude pruning (global/interactive/iterative/soft), importance
#: reductions and normalizers, MAC counting, serialization) stays in.
SUBSETS: Dict[str, Dict[str, str]] = {
    "ci": {
        "test_pruner.py::test_pruner_TransposeConv":
            "CI subset: ~45 CPU s (5 importances x MagnitudePruner/GroupNormPruner/"
            "BNScalePruner/GrowingRegPruner on a ConvTranspose2d net at 224x224)",
        "test_isomorphic.py::test_pruner_TransposeConv":
            "CI subset: ~52 CPU s (the same 20 combinations with isomorphic=True)",
    },
}

OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")

# --------------------------------------------------------------------------------------------
# The pytest plugin, written to a temporary folder and loaded with ``-p`` in both runs.
# --------------------------------------------------------------------------------------------
PLUGIN_NAME = "_tp_upstream_compat_plugin"
PLUGIN_SOURCE = textwrap.dedent('''
    """Records test outcomes and which torch_pruning this pytest process used (written by
    tests/upstream_compat/run_upstream_suite.py of torch-pruning-pat)."""
    import json
    import os
    import resource
    import sys
    import time

    import pytest

    _REPORT = os.environ["TP_COMPAT_REPORT"]
    _CHECKOUT = os.path.realpath(os.environ["TP_COMPAT_CHECKOUT"])
    _RANK = {"passed": 0, "xfailed": 1, "xpassed": 1, "skipped": 2, "failed": 3, "error": 4}
    _state = {"outcomes": {}, "durations": {}, "cpu_seconds": {}, "collected": 0,
              "deselected": [], "probes": {}, "exitstatus": None, "disabled_pat_finders": [],
              "imported_before_plugin": "torch_pruning" in sys.modules}

    # The plain run must not get PAT names from an installed torch-pruning-pat wheel: its .pth
    # startup hook registers a sys.meta_path finder that attaches them when torch_pruning is
    # imported. This plugin is loaded (-p) before any test module, so removing it here is early
    # enough; upstream's own __init__ never imports the wheel's torch_pruning/pat/ folder.
    if os.environ.get("TP_COMPAT_RUN") == "plain":
        for _finder in list(sys.meta_path):
            if type(_finder).__module__ == "_torch_pruning_pat_hook":
                sys.meta_path.remove(_finder)
                _state["disabled_pat_finders"].append(repr(_finder))


    def _set(nodeid, outcome):
        old = _state["outcomes"].get(nodeid)
        if old is None or _RANK[outcome] >= _RANK[old]:
            _state["outcomes"][nodeid] = outcome


    def _real(path):
        return os.path.realpath(path) if path else None


    def _describe(obj):
        import types
        if isinstance(obj, types.ModuleType):
            return "module " + obj.__name__
        if isinstance(obj, (str, int, float, bool, type(None))):
            return repr(obj)[:200]
        return "%s %s.%s" % (type(obj).__name__, getattr(obj, "__module__", None),
                             getattr(obj, "__qualname__", getattr(obj, "__name__", "")))


    _PER_MODULE = {"__file__", "__path__", "__spec__", "__loader__", "__cached__",
                   "__builtins__", "__doc__", "__name__", "__package__"}


    def _namespace(mod):
        if mod is None:
            return {}
        return {n: _describe(getattr(mod, n, None)) for n in dir(mod) if n not in _PER_MODULE}


    def _probe(import_if_missing):
        mod = sys.modules.get("torch_pruning")
        imported_before = mod is not None
        if mod is None and import_if_missing:
            import importlib
            mod = importlib.import_module("torch_pruning")
        if mod is None:
            return {"imported": False}
        utils = sys.modules.get("torch_pruning.utils")
        files = {}
        for name, m in list(sys.modules.items()):
            if name == "torch_pruning" or name.startswith("torch_pruning."):
                files[name] = _real(getattr(m, "__file__", None))
        # The checkout's own code: a virtualenv inside the checkout (installed packages) is not.
        envs = {_real(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix)}
        from_checkout = []
        for name, m in list(sys.modules.items()):
            f = _real(getattr(m, "__file__", None) or "")
            if not f or not f.startswith(_CHECKOUT + os.sep):
                continue
            parts = set(f[len(_CHECKOUT):].split(os.sep))
            if parts & {"site-packages", "dist-packages"} or \
                    any(f.startswith(e + os.sep) for e in envs):
                continue
            from_checkout.append(name)
        from_checkout.sort()
        return {
            "imported": True,
            "imported_by_tests": imported_before,
            "file": _real(mod.__file__),
            "path": [_real(p) for p in getattr(mod, "__path__", [])],
            "version": getattr(mod, "__version__", None),
            "has_Pruning": hasattr(mod, "Pruning"),
            "has_load_state_dict_pruned": hasattr(mod, "load_state_dict_pruned"),
            "utils_has_Pruning": bool(utils is not None and hasattr(utils, "Pruning")),
            "pat_loaded": "torch_pruning.pat" in sys.modules,
            "startup_hook_loaded": "_torch_pruning_pat_hook" in sys.modules,
            "pat_finder_active": any(type(f).__module__ == "_torch_pruning_pat_hook"
                                     for f in sys.meta_path),
            "submodule_files": files,
            "namespace": {"torch_pruning": _namespace(mod),
                          "torch_pruning.utils": _namespace(utils)},
            "modules_from_checkout": from_checkout,
            "sys_path": list(sys.path),
            "pythonpath_env": os.environ.get("PYTHONPATH"),
            "cwd": os.getcwd(),
        }


    def pytest_collectreport(report):
        if report.failed:
            _set(report.nodeid or "<collection>", "error")


    def pytest_deselected(items):
        _state["deselected"].extend(item.nodeid for item in items)


    def pytest_collection_finish(session):
        _state["collected"] = len(session.items)
        _state["probes"]["after_collection"] = _probe(import_if_missing=False)


    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = time.process_time()
        yield
        _state["cpu_seconds"][item.nodeid] = time.process_time() - start


    def pytest_runtest_logreport(report):
        nodeid = report.nodeid
        _state["durations"][nodeid] = _state["durations"].get(nodeid, 0.0) + report.duration
        wasxfail = hasattr(report, "wasxfail")
        if report.when == "call":
            if wasxfail:
                _set(nodeid, "xfailed" if report.skipped else "xpassed")
            else:
                _set(nodeid, report.outcome)
        elif report.when == "setup":
            if report.failed:
                _set(nodeid, "error")
            elif report.skipped:
                _set(nodeid, "xfailed" if wasxfail else "skipped")
        elif report.failed:  # teardown
            _set(nodeid, "error")


    def pytest_sessionfinish(session, exitstatus):
        _state["exitstatus"] = int(exitstatus)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _state["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
        try:
            _state["probes"]["session_end"] = _probe(import_if_missing=True)
        except Exception as exc:  # report it rather than lose the outcomes
            _state["probes"]["session_end"] = {"imported": False, "import_error": repr(exc)}
        with open(_REPORT, "w") as fh:
            json.dump(_state, fh, indent=1, sort_keys=True)
''')


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torch-pruning-pat" / "upstream-suite"


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of every child process: nothing of the caller's sys.path set-up."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUSERBASE",
                "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER",
                "PYTEST_VERSION"):
        env.pop(key, None)
    env.update({
        "PYTHONSAFEPATH": "1",                    # no cwd / script dir on sys.path
        "PYTHONDONTWRITEBYTECODE": "1",           # no __pycache__ in the checkout or the cache
        "PYTHONNOUSERSITE": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",    # same plugins in both runs: only ours
        "MPLBACKEND": "Agg",
    })
    env.update(extra or {})
    return env


def upstream_info(python: str) -> Dict[str, str]:
    """Version and package directory of the installed upstream, from its metadata (no import)."""
    code = ("import json, importlib.metadata as m; d = m.distribution('torch-pruning'); "
            "print(json.dumps({'version': d.version, 'dir': str(d.locate_file('torch_pruning'))}))")
    with tempfile.TemporaryDirectory(prefix="tp-compat-probe-") as cwd:
        out = subprocess.run([python, "-c", code], cwd=cwd, env=clean_env(), text=True,
                             capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"error: the interpreter {python} has no installed torch-pruning "
                         f"distribution:\n{out.stderr.strip()}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info["dir"] = os.path.realpath(info["dir"])
    return info


def obtain_sdist(version: str, cache: Path, python: str, sdist: Optional[Path],
                 download_timeout: float) -> Path:
    """The sdist tarball: ``--sdist``, else the cached one, else ``pip download`` into the cache."""
    if sdist is not None:
        if not sdist.is_file():
            raise SystemExit(f"error: --sdist {sdist} does not exist")
        return sdist
    dl = cache / "sdist"
    for name in (f"torch_pruning-{version}.tar.gz", f"torch-pruning-{version}.tar.gz"):
        if (dl / name).is_file():
            return dl / name
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", f"{DIST}=={version}", "-d", str(dl)]
    print(f"== downloading the upstream sdist: {' '.join(cmd)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tp-compat-pip-") as cwd:
        try:
            out = subprocess.run(cmd, cwd=cwd, env=clean_env(), text=True, capture_output=True,
                                 timeout=download_timeout)
            ok, log = out.returncode == 0, out.stdout + out.stderr
        except subprocess.TimeoutExpired:
            ok, log = False, f"pip download timed out after {download_timeout:.0f}s"
    found = sorted(dl.glob(f"torch[-_]pruning-{version}.tar.gz"))
    if not ok or not found:
        print(log.strip()[-3000:], file=sys.stderr)
        print(f"error: could not download the {DIST}=={version} sdist (no network access to the "
              f"package registry?). Pass --sdist PATH to use a local copy.", file=sys.stderr)
        raise SystemExit(EXIT_NO_SDIST)
    return found[0]


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not str(target).startswith(str(root) + os.sep) or member.issym() or member.islnk():
            raise SystemExit(f"error: unsafe member {member.name!r} in the sdist")
    tar.extractall(dest)


def prepare_suite(tarball: Path, version: str, cache: Path) -> Tuple[Path, Path]:
    """Extract the sdist; return (suite root holding only ``tests/``, upstream source package)."""
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()[:16]
    src_root = cache / "src" / f"{version}-{digest}"
    if not (src_root / ".complete").is_file():
        shutil.rmtree(src_root, ignore_errors=True)
        src_root.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            _safe_extract(tar, src_root)
        (src_root / ".complete").write_text(str(tarball))
    tops = [p for p in src_root.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "tests").is_dir():
        raise SystemExit(f"error: unexpected sdist layout in {src_root}")
    sdist_dir = tops[0]
    suite_root = cache / "suite" / f"{version}-{digest}"
    if not (suite_root / ".complete").is_file():
        shutil.rmtree(suite_root, ignore_errors=True)
        suite_root.mkdir(parents=True)
        shutil.copytree(sdist_dir / "tests", suite_root / "tests")
        (suite_root / ".complete").write_text(str(tarball))
    return suite_root, sdist_dir / "torch_pruning"


def compare_sources(sdist_pkg: Path, installed: Path) -> List[str]:
    """Files of the sdist's package that differ from (or are missing in) the installed one."""
    problems = []
    for src in sorted(sdist_pkg.rglob("*.py")):
        rel = src.relative_to(sdist_pkg)
        dst = installed / rel
        if not dst.is_file():
            problems.append(f"missing in the installed package: {rel}")
        elif dst.read_bytes() != src.read_bytes():
            problems.append(f"differs from the sdist: {rel}")
    return problems


def cuda_available(python: str) -> bool:
    code = "import torch; print(int(torch.cuda.is_available()))"
    with tempfile.TemporaryDirectory(prefix="tp-compat-probe-") as cwd:
        out = subprocess.run([python, "-c", code], cwd=cwd, env=clean_env(), text=True,
                             capture_output=True)
    return out.returncode == 0 and out.stdout.strip().endswith("1")


def select_targets(tests_dir: Path, subset: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """Files / node ids (relative to ``tests_dir``) to run, and the tests a named subset leaves
    out (node id -> reason). No subset: every test file."""
    every_file = sorted(p.name for p in tests_dir.glob("test_*.py"))
    if not subset:
        return every_file, {}
    out: List[str] = []
    left_out: Dict[str, str] = {}
    for item in subset:
        if item in SUBSETS:
            out.extend(f for f in every_file if f not in out)
            left_out.update(SUBSETS[item])
            continue
        for piece in (s.strip() for s in item.split(",") if s.strip()):
            file_part = piece.split("::")[0]
            if not (tests_dir / file_part).is_file():
                raise SystemExit(f"error: --subset {piece!r}: no {file_part} in upstream's tests "
                                 f"(named subsets: {', '.join(SUBSETS)})")
            if piece not in out:
                out.append(piece)
    return out, left_out


def shard(targets: List[str], n: int, tests_dir: Path) -> List[List[str]]:
    """Split by file into ``n`` shards of similar size (file size as the cost proxy)."""
    if n <= 1 or len(targets) <= 1:
        return [list(targets)]
    costs = sorted(targets, key=lambda t: -(tests_dir / t.split("::")[0]).stat().st_size)
    shards: List[List[str]] = [[] for _ in range(min(n, len(targets)))]
    loads = [0] * len(shards)
    for t in costs:
        i = loads.index(min(loads))
        shards[i].append(t)
        loads[i] += (tests_dir / t.split("::")[0]).stat().st_size
    return [sorted(s) for s in shards if s]


class Unit:
    """One pytest subprocess: a run (plain/overlay) and one shard of its targets."""

    def __init__(self, run: str, index: int, targets: List[str], workdir: Path):
        self.run, self.index, self.targets = run, index, targets
        self.dir = workdir / f"{run}-{index}"
        self.report = self.dir / "report.json"
        self.log = self.dir / "pytest.log"
        self.returncode: Optional[int] = None
        self.timed_out = False
        self.seconds = 0.0
        self.data: Dict = {}


def run_unit(unit: Unit, python: str, suite_root: Path, plugin_dir: Path, deselect: List[str],
             ignore: List[str], args: argparse.Namespace, threads: Optional[int]) -> Unit:
    cwd = unit.dir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    ini = unit.dir / "pytest.ini"
    ini.write_text("[pytest]\n")
    pythonpath = [str(plugin_dir)]
    if unit.run == "overlay":
        pythonpath.insert(0, str(CHECKOUT))
    extra = {
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "TP_COMPAT_REPORT": str(unit.report),
        "TP_COMPAT_CHECKOUT": str(CHECKOUT),
        "TP_COMPAT_RUN": unit.run,
        "TMPDIR": str(unit.dir / "tmp"),
    }
    (unit.dir / "tmp").mkdir(exist_ok=True)
    if threads:
        extra.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    tests = suite_root / "tests"
    cmd = [python, "-m", "pytest", "-c", str(ini), "--rootdir", str(suite_root),
           "-p", PLUGIN_NAME, "-p", "no:cacheprovider", "--continue-on-collection-errors",
           "-q", "-rA", "--junitxml", str(unit.dir / "junit.xml")]
    for nodeid in deselect:
        cmd += ["--deselect", f"tests/{nodeid}"]
    for path in ignore:
        cmd += ["--ignore", str(tests / path)]
    if args.k:
        cmd += ["-k", args.k]
    cmd += list(args.pytest_arg or [])
    cmd += [str(tests / t) for t in unit.targets]
    unit.dir.mkdir(parents=True, exist_ok=True)
    (unit.dir / "command.txt").write_text(
        " ".join(f"{k}={v}" for k, v in extra.items()) + " " + " ".join(cmd) + "\n")
    start = time.monotonic()
    with open(unit.log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(extra), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            unit.returncode = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            unit.timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group of this one child
            unit.returncode = proc.wait()
    unit.seconds = time.monotonic() - start
    if unit.report.is_file():
        unit.data = json.loads(unit.report.read_text())
    return unit


def _under(path: Optional[str], root: str) -> bool:
    return bool(path) and (path == root or path.startswith(root + os.sep))


def check_probe(run: str, probe: Dict, upstream_dir: str) -> List[str]:
    """Problems with the torch_pruning a run used (empty list: as intended)."""
    checkout = str(CHECKOUT)
    if not probe or not probe.get("imported"):
        return [f"torch_pruning could not be imported ({probe.get('import_error', 'no probe')})"]
    problems = []
    submods = probe.get("submodule_files", {})
    if run == "overlay":
        want = os.path.join(checkout, "torch_pruning", "__init__.py")
        if probe["file"] != want:
            problems.append(f"torch_pruning.__file__ is {probe['file']}, not the checkout's {want}")
        for name in ("has_Pruning", "has_load_state_dict_pruned", "utils_has_Pruning"):
            if not probe.get(name):
                problems.append(f"PAT name missing: {name}")
        for name, path in sorted(submods.items()):
            if name == "torch_pruning":
                continue
            is_pat = name == "torch_pruning.pat" or name.startswith("torch_pruning.pat.")
            where = checkout if is_pat else upstream_dir
            if path and not _under(path, where):
                problems.append(f"{name} loaded from {path}, expected under {where}")
    else:
        want = os.path.join(upstream_dir, "__init__.py")
        if probe["file"] != want:
            problems.append(f"torch_pruning.__file__ is {probe['file']}, not upstream's {want}")
        if probe.get("modules_from_checkout"):
            names = probe["modules_from_checkout"]
            problems.append(f"{len(names)} module(s) loaded from the checkout: "
                            + ", ".join(names[:20]) + (", ..." if len(names) > 20 else ""))
        if probe.get("has_Pruning") or probe.get("pat_loaded") or probe.get("pat_finder_active"):
            problems.append("PAT names or torch_pruning.pat are present in the plain upstream "
                            "run (an installed torch-pruning-pat wheel's import hook was not "
                            "disabled?)")
        for name, path in sorted(submods.items()):
            if path and not _under(path, upstream_dir):
                problems.append(f"{name} loaded from {path}, expected under {upstream_dir}")
    return problems


def compare_namespaces(probes: Dict[str, Dict]) -> Dict:
    """Names of ``torch_pruning`` / ``torch_pruning.utils``: missing, different or extra in the
    overlay run compared with the plain run (first shard of each; all shards see the same)."""
    def ns(run: str) -> Dict[str, Dict[str, str]]:
        for key in sorted(probes):
            if key.startswith(run + "-"):
                got = probes[key].get("session_end", {}).get("namespace")
                if got:
                    return got
        return {}
    plain, overlay = ns("plain"), ns("overlay")
    if not plain or not overlay:
        return {}
    out: Dict = {"missing": {}, "different": {}, "extra": {}, "lines": []}
    for mod in ("torch_pruning", "torch_pruning.utils"):
        a, b = plain.get(mod, {}), overlay.get(mod, {})
        missing = sorted(set(a) - set(b))
        different = {n: {"plain": a[n], "overlay": b[n]} for n in sorted(a)
                     if n in b and a[n] != b[n]}
        extra = sorted(set(b) - set(a))
        out["missing"][mod], out["different"][mod], out["extra"][mod] = missing, different, extra
        out["lines"].append(f"{mod}: {len(a)} names upstream; missing in the overlay: "
                            f"{', '.join(missing) or 'none'}")
        for n, pair in different.items():
            out["lines"].append(f"{mod}.{n} differs: plain {pair['plain']} / overlay "
                                f"{pair['overlay']}")
        out["lines"].append(f"{mod}: extra in the overlay: {', '.join(extra) or 'none'}")
    out["missing_or_different"] = any(out["missing"].values()) or any(out["different"].values())
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Named subsets (every test file except): " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in SUBSETS.items()))
    p.add_argument("--subset", action="append", default=[], metavar="NAME|FILE[::TEST][,...]",
                   help="run only these upstream test files / node ids (relative to upstream's "
                        "tests/), or a named subset (" + ", ".join(SUBSETS) + "); repeatable. "
                        "Default: every test file.")
    p.add_argument("-k", default=None, metavar="EXPR", help="passed to pytest -k in both runs")
    p.add_argument("--pytest-arg", action="append", metavar="ARG",
                   help="extra argument for pytest in both runs (repeatable)")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="pytest processes at once (default 1: plain, then overlay, one session "
                        "each). 2 runs both at once; N>2 also splits each run by file into N//2 "
                        "shards.")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP threads per pytest process (OMP_NUM_THREADS, "
                        "MKL_NUM_THREADS; same in both runs). Default 1: deterministic and, on a "
                        "shared machine, several times faster than torch's default (its "
                        "spinning worker threads compete with other load). "
                        "0: inherit the environment's setting.")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-clock limit of each pytest process (default 3600)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                   help="where the sdist is downloaded and extracted (default %(default)s)")
    p.add_argument("--sdist", type=Path, default=None,
                   help="use this torch-pruning sdist tarball instead of downloading one")
    p.add_argument("--download-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter whose environment is tested (default: this one)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for logs, reports and the runs' working directories "
                        "(default: a new temporary folder, kept and printed)")
    p.add_argument("--include-weight-tests", action="store_true",
                   help="do not deselect the tests that download pretrained weights")
    p.add_argument("--strict-namespace", action="store_true",
                   help="also fail when a name of upstream's torch_pruning / torch_pruning.utils "
                        "is missing or different in the overlay (reported either way)")
    p.add_argument("--summary-json", type=Path, default=None,
                   help="also write the comparison as JSON to this file")
    p.add_argument("--only-run", choices=("plain", "overlay"), default=None,
                   help=argparse.SUPPRESS)  # debugging aid: one run, no comparison
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    python = args.python
    info = upstream_info(python)
    version, upstream_dir = info["version"], info["dir"]
    cache = args.cache_dir.expanduser().resolve()
    if _under(str(cache), str(CHECKOUT)):
        raise SystemExit(f"error: --cache-dir {cache} is inside the checkout; upstream's code "
                         "must stay outside the repository")
    tarball = obtain_sdist(version, cache, python, args.sdist, args.download_timeout)
    suite_root, sdist_pkg = prepare_suite(tarball, version, cache)
    tests_dir = suite_root / "tests"
    source_problems = compare_sources(sdist_pkg, Path(upstream_dir))

    deselected: Dict[str, str] = {}
    if not args.include_weight_tests:
        deselected.update(NEEDS_WEIGHTS)
    has_cuda = cuda_available(python)
    if not has_cuda:
        deselected.update(NEEDS_CUDA)
    deselected = {k: v for k, v in deselected.items() if (tests_dir / k.split("::")[0]).is_file()}
    ignore = [k for k in deselected if "::" not in k]
    deselect = [k for k in deselected if "::" in k]

    targets, left_out = select_targets(tests_dir, args.subset)
    deselect += [k for k in left_out if k not in deselect]
    targets = [t for t in targets if t.split("::")[0] not in ignore]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tp-upstream-compat-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    plugin_dir = workdir / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / f"{PLUGIN_NAME}.py").write_text(PLUGIN_SOURCE)

    runs = [args.only_run] if args.only_run else ["plain", "overlay"]
    per_run = max(1, args.jobs // len(runs)) if args.jobs > 2 else 1
    threads = args.threads if args.threads > 0 else None
    units = [Unit(run, i, s, workdir)
             for run in runs for i, s in enumerate(shard(targets, per_run, tests_dir))]

    print(f"== upstream torch-pruning {version} installed at {upstream_dir}")
    print(f"== sdist {tarball} (sha256 {hashlib.sha256(tarball.read_bytes()).hexdigest()})")
    print(f"== upstream tests: {tests_dir} ({len(targets)} targets"
          f"{', subset ' + ' '.join(args.subset) if args.subset else ', full suite'}"
          f"{', -k ' + repr(args.k) if args.k else ''})")
    print(f"== checkout (overlay run): {CHECKOUT}")
    print(f"== workdir (logs, reports): {workdir}")
    print(f"== {len(units)} pytest process(es), {min(args.jobs, len(units))} at a time, "
          f"{threads or 'default'} torch thread(s) each, timeout {args.timeout:.0f}s each",
          flush=True)

    def _go(unit: Unit) -> Unit:
        run_unit(unit, python, suite_root, plugin_dir, deselect, ignore, args, threads)
        status = "TIMED OUT" if unit.timed_out else f"exit {unit.returncode}"
        print(f"   {unit.run:<8} shard {unit.index}: {status} in {unit.seconds:.0f}s "
              f"({len(unit.data.get('outcomes', {}))} results; log {unit.log})", flush=True)
        return unit

    with ThreadPoolExecutor(max_workers=min(args.jobs, len(units))) as pool:
        done = list(pool.map(_go, units))

    # ---- merge and compare -------------------------------------------------------------------
    outcomes: Dict[str, Dict[str, str]] = {r: {} for r in runs}
    durations: Dict[str, Dict[str, float]] = {r: {} for r in runs}
    seconds: Dict[str, float] = {r: 0.0 for r in runs}
    cpu: Dict[str, float] = {r: 0.0 for r in runs}
    cpu_per_test: Dict[str, Dict[str, float]] = {r: {} for r in runs}
    problems: Dict[str, List[str]] = {r: [] for r in runs}
    probes: Dict[str, Dict] = {}
    notes: set = set()
    for unit in done:
        r = unit.run
        seconds[r] += unit.seconds
        if unit.timed_out:
            problems[r].append(f"shard {unit.index} timed out after {args.timeout:.0f}s "
                               f"(log {unit.log})")
        if not unit.data:
            problems[r].append(f"shard {unit.index} wrote no report (exit {unit.returncode}); "
                               f"see {unit.log}")
            continue
        outcomes[r].update(unit.data["outcomes"])
        for k, v in unit.data["durations"].items():
            durations[r][k] = durations[r].get(k, 0.0) + v
        cpu_per_test[r].update(unit.data.get("cpu_seconds", {}))
        cpu[r] += unit.data.get("process_cpu_seconds", 0.0)
        for when, probe in unit.data.get("probes", {}).items():
            if when == "after_collection" and not probe.get("imported"):
                continue  # nothing collected imported torch_pruning (e.g. an empty -k)
            for msg in check_probe(r, probe, upstream_dir):
                problems[r].append(f"shard {unit.index}, {when.replace('_', ' ')}: {msg}")
        probes[f"{r}-{unit.index}"] = unit.data.get("probes", {})
        if unit.data.get("disabled_pat_finders"):
            notes.add(f"{r} run: an installed torch-pruning-pat wheel was detected; its import "
                      f"hook was disabled in that run so it tests plain upstream")
        if unit.data.get("imported_before_plugin"):
            problems[r].append(f"shard {unit.index}: torch_pruning was imported before the "
                               f"recording plugin (by a startup hook or another plugin?)")
        if unit.data.get("exitstatus") not in (0, 1, 5):  # 5: this shard selected no test
            problems[r].append(f"shard {unit.index}: pytest exit status "
                               f"{unit.data.get('exitstatus')} (see {unit.log})")
        if unit.returncode not in (0, 1, 5) and not unit.timed_out:
            problems[r].append(f"shard {unit.index}: pytest process exit status "
                               f"{unit.returncode} (see {unit.log})")
    for r in runs:
        if not outcomes[r] and not problems[r]:
            problems[r].append("no test ran")

    width = max([len(r) for r in runs] + [8])
    print()
    print(f"{'outcome':<10}" + "".join(f"{r:>{width + 2}}" for r in runs))
    for o in OUTCOMES:
        counts = [sum(1 for v in outcomes[r].values() if v == o) for r in runs]
        if o in ("passed", "failed", "skipped", "error") or any(counts):
            print(f"{o:<10}" + "".join(f"{c:>{width + 2}}" for c in counts))
    print(f"{'total':<10}" + "".join(f"{len(outcomes[r]):>{width + 2}}" for r in runs))
    print(f"{'wall s':<10}" + "".join(f"{seconds[r]:>{width + 2}.0f}" for r in runs))
    print(f"{'cpu s':<10}" + "".join(f"{cpu[r]:>{width + 2}.0f}" for r in runs))

    differing: List[Tuple[str, Dict[str, str]]] = []
    if len(runs) == 2:
        for nodeid in sorted(set(outcomes["plain"]) | set(outcomes["overlay"])):
            pair = {r: outcomes[r].get(nodeid, "absent") for r in runs}
            if pair["plain"] != pair["overlay"]:
                differing.append((nodeid, pair))
        print(f"\nTests whose outcome differs: {len(differing)}")
        for nodeid, pair in differing:
            print(f"  {nodeid}: plain={pair['plain']} overlay={pair['overlay']}")
    not_passed = sorted({n for r in runs for n, o in outcomes[r].items() if o != "passed"})
    if not_passed:
        print("\nNot passed (in at least one run):")
        for nodeid in not_passed:
            print("  " + nodeid + ": " + ", ".join(f"{r}={outcomes[r].get(nodeid, 'absent')}"
                                                   for r in runs))
    print(f"\nDeselected in both runs ({len(deselected)}):")
    for k, reason in sorted(deselected.items()):
        print(f"  {k}: {reason}")
    if left_out:
        print(f"Left out by --subset {' '.join(args.subset)} ({len(left_out)}):")
        for k, reason in sorted(left_out.items()):
            print(f"  {k}: {reason}")
    if source_problems:
        print("\nWARNING: the installed upstream package is not the sdist's code:")
        for msg in source_problems:
            print("  " + msg)
    for note in sorted(notes):
        print("\nNOTE: " + note)
    print("\nChecks:")
    for r in runs:
        used = sorted({p.get("session_end", {}).get("file") for p in
                       [probes[k] for k in probes if k.startswith(r + "-")]} - {None})
        print(f"  {r}: torch_pruning.__file__ = {', '.join(used) or '?'}")
        for msg in problems[r] or ["OK"]:
            print(f"    {msg}")

    namespace = compare_namespaces(probes) if len(runs) == 2 else {}
    if namespace:
        print("\nNamespace of the overlay vs plain upstream (names as seen at session end):")
        for line in namespace["lines"]:
            print("  " + line)

    ok = not differing and not any(problems.values()) and not source_problems
    if args.strict_namespace and namespace.get("missing_or_different"):
        ok = False
    elapsed = time.monotonic() - t0
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps({
            "ok": ok, "upstream_version": version, "upstream_dir": upstream_dir,
            "checkout": str(CHECKOUT), "sdist": str(tarball), "targets": targets,
            "subset": args.subset, "k": args.k, "deselected": deselected,
            "left_out_by_subset": left_out,
            "jobs": args.jobs, "threads": threads,
            "counts": {r: {o: sum(1 for v in outcomes[r].values() if v == o) for o in OUTCOMES}
                       for r in runs},
            "outcomes": outcomes, "durations": durations, "seconds": seconds,
            "cpu_seconds": cpu, "cpu_seconds_per_test": cpu_per_test,
            "differing": {n: p for n, p in differing}, "problems": problems,
            "source_problems": source_problems, "probes": probes,
            "namespace": {k: v for k, v in namespace.items() if k != "lines"},
            "elapsed_seconds": elapsed, "workdir": str(workdir),
        }, indent=1, sort_keys=True))
    verdict = "SAME OUTCOMES, overlay used" if ok else "MISMATCH"
    print(f"\n{verdict} ({elapsed:.0f}s in total)")
    return EXIT_OK if ok else EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
