"""Every ```python block of README.md and docs/*.md runs, like a doctest session.

One test per file: its python blocks run in order in one namespace, which a harness fills with
what the snippets assume (a small model, an ``output_dir`` holding a real
``pruning_config.json``, a loader, an optimizer factory, the weights of a pruned model, ...).
A file's *context* adds the names only that file assumes and checks, after each block, what the
snippet was meant to do (the loop ran every epoch and reached the MAC target, the loaded model
gives the saved model's outputs, ...). Blocks in other languages (bash, json, text, unlabeled)
are not run. A file without a context of its own runs in the base namespace.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import torch
from torch import nn

import torch_pruning
import torch_pruning as tp
from tests.models import SmallCNN

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INPUT_SHAPE = (1, 3, 16, 16)
EPOCHS = 3

# Fenced blocks (``` or ~~~), possibly indented inside a list item.
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
                    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.S | re.M)


@dataclass
class Block:
    """One python block: where it starts in its file and its (dedented) code."""

    path: Path
    line: int  # 1-based line of the block's first code line
    code: str

    @property
    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"


def fenced_blocks(path: Path) -> List[tuple]:
    """``(language, first code line, code)`` of every fenced block of a markdown file."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        lang = (m.group("info").split() or [""])[0].lower()
        line = text.count("\n", 0, m.start("body")) + 1
        found.append((lang, line, textwrap.dedent(m.group("body"))))
    return found


def python_blocks(path: Path) -> List[Block]:
    return [Block(path, line, code) for lang, line, code in fenced_blocks(path)
            if lang in ("python", "py", "python3")]


def run_blocks(blocks: List[Block], ns: Dict[str, Any],
               after: Optional[Callable[[int, Dict[str, Any]], None]] = None) -> None:
    """Execute the blocks in order in ``ns``; tracebacks point at the markdown file's lines."""
    for i, block in enumerate(blocks):
        code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
        try:
            exec(code, ns)
        except Exception as err:
            raise AssertionError(f"python block {i + 1} at {block.where} failed: "
                                 f"{type(err).__name__}: {err}") from err
        if after is not None:
            after(i, ns)


# ---------------------------------------------------------------------------- the harness
def make_model() -> nn.Module:
    """The snippets' model (tests/models/__init__.py SmallCNN: 16-32-32 channels, 3x16x16 inputs),
    always with the same initial weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SmallCNN()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


class Loader(list):
    """A list of (x, y) batches that counts how often it was iterated (once per epoch)."""

    iterations = 0

    def __iter__(self):
        self.iterations += 1
        return super().__iter__()


def make_loader(batches: int = 3) -> Loader:
    g = torch.Generator().manual_seed(1)
    return Loader((torch.randn(8, *INPUT_SHAPE[1:], generator=g),
                   torch.randint(0, 10, (8,), generator=g)) for _ in range(batches))


def pat_config(mac_target: float) -> Dict[str, Any]:
    """Channel masking at epochs 0-1 down to ``mac_target`` (then removal); slices at 1-2."""
    return {
        "channel_sparsity_args": {
            "start_epoch": 0, "end_epoch": 1, "global_prune_rate": 0.7,
            "mac_target": mac_target, "block_size": 4, "global_pruning": True,
            "regularize": {"reg": 1e-4}, "input_shape": list(INPUT_SHAPE)},
        "slice_sparsity_args": {"start_epoch": 1, "end_epoch": 2, "block_size": 4,
                                "prune_rate": 0.25, "reg": 1e-5},
    }


def write_config(folder: Path, config: Dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pruning_config.json").write_text(json.dumps(config, indent=4))
    return folder


def sample() -> torch.Tensor:
    return torch.randn(4, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def outputs(model: nn.Module) -> torch.Tensor:
    was = model.training
    model.eval()
    out = model(sample())
    model.train(was)
    return out


def macs(model: nn.Module) -> float:
    return float(tp.utils.count_ops_and_params(model, torch.zeros(INPUT_SHAPE))[0])


class Job:
    """A short pruning-aware training job (the README's loop) in ``folder``."""

    def __init__(self, folder: Path, mac_target: float, logger: logging.Logger,
                 stop_at_removal: bool = False) -> None:
        write_config(folder, pat_config(mac_target))
        self.folder = folder
        self.model = make_model()
        self.base_macs = macs(self.model)
        self.pruner = tp.Pruning(self.model, folder, log=logger)
        self.optimizer = make_optimizer(self.model)
        criterion = nn.CrossEntropyLoss()
        for self.epoch in range(EPOCHS):
            for x, y in make_loader():
                loss = criterion(self.model(x), y) + self.pruner.slice_regularize(self.model)
                self.optimizer.zero_grad()
                loss.backward()
                self.pruner.channel_regularize(self.model)
                self.optimizer.step()
            self.pruner.prune(self.model, self.epoch, log=logger)
            if self.pruner.channel_pruner.reset_optimizer:
                if stop_at_removal:
                    return
                self.optimizer = make_optimizer(self.model)
                self.pruner.channel_pruner.reset_optimizer = False
        assert self.pruner.channel_pruner.reached_target


@pytest.fixture
def base(tmp_path: Path) -> Dict[str, Any]:
    """The names the snippets assume, with ``weights`` from a physically pruned job model."""
    logger = logging.getLogger("doc_snippets")
    job = Job(tmp_path / "weights_job", mac_target=0.45, logger=logger)
    model = make_model()
    ns = {
        "__name__": "doc_snippets",
        "torch": torch, "nn": nn, "tp": tp, "torch_pruning": torch_pruning,
        "make_model": make_model, "make_optimizer": make_optimizer,
        "model": model, "optimizer": make_optimizer(model),
        "output_dir": write_config(tmp_path / "run", pat_config(mac_target=0.6)),
        "logger": logger, "device": torch.device("cpu"),
        "loader": make_loader(), "criterion": nn.CrossEntropyLoss(),
        "start_epoch": 0, "epochs": EPOCHS,
        "weights": copy.deepcopy(job.model.state_dict()),
    }
    ns["_weights_model"] = job.model  # not a snippet name: what the checks compare against
    return ns


# ---------------------------------------------------------------------------- contexts
class MyScale(nn.Module):
    """docs/checkpoints.md's custom layer: its size is a plain int the loader cannot see."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, self.channels, 1, 1)


def _assert_same_outputs(model: nn.Module, reference: nn.Module) -> None:
    assert model is not reference
    torch.testing.assert_close(outputs(model), outputs(reference), rtol=0, atol=1e-5)


def readme_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    def after(i: int, ns: Dict[str, Any]) -> None:
        if i == 0:  # the five-line loop
            assert ns["loader"].iterations == ns["epochs"] - ns["start_epoch"]
            state = json.loads((ns["output_dir"] / "pruning_config.json").read_text())
            assert state["channel_sparsity_args"]["reach_mac_target"] is True
            assert macs(ns["model"]) <= (0.6 + 0.01) * macs(make_model())
            assert ns["pruner"].slice_pruner.sparsity()["overall"]["zero"] > 0
            assert ns["pruner"].channel_pruner.reset_optimizer is False
        elif i == 1:  # the seed's checkpoint snippet: the trained model is pruned differently
            assert ns["missing_keys"] == [] and ns["unexpected_keys"] == []
            _assert_same_outputs(ns["model"], ns["_weights_model"])
        elif i == 2:  # the recommended recipe, written where Pruning reads it
            written = tp.Pruning(ns["model"], ns["output_dir"], log=ns["logger"])
            assert written.channel_pruner.cfg.mac_target == 0.25
            assert written.channel_pruner.cfg.regularize.target == "all"  # 0.25x: moderate
    return after


def getting_started_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    seen: Dict[str, Any] = {}

    def after(i: int, ns: Dict[str, Any]) -> None:
        if i == 0:
            assert ns["loader"].iterations == ns["epochs"]
            assert ns["pruner"].channel_pruner.reached_target
            assert (ns["output_dir"] / "last.pt").is_file()
            seen["trained"] = ns["model"]
        elif i == 1:
            assert ns["missing_keys"] == [] and ns["unexpected_keys"] == []
            _assert_same_outputs(ns["model"], seen["trained"])
    return after


def checkpoints_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    # A finished job's folder: its config says reach_mac_target, its pruner holds slice masks.
    job = Job(tmp_path / "job", mac_target=0.45, logger=ns["logger"])
    saved_slices = job.pruner.state_dict()["slice"]["masks"]
    assert saved_slices
    ns.update(output_dir=job.folder, pruner=job.pruner, optimizer=job.optimizer,
              epoch=job.epoch, path=tmp_path / "checkpoint.pt", MyScale=MyScale,
              weights=copy.deepcopy(job.model.state_dict()))
    ns["state_dict"] = ns["weights"]

    def after(i: int, ns: Dict[str, Any]) -> None:
        if i in (0, 1):  # the seed's snippet, then the call with every argument
            assert ns["missing_keys"] == [] and ns["unexpected_keys"] == []
            _assert_same_outputs(ns["model"], job.model)
        elif i == 2:
            assert ns["path"].is_file()
        elif i == 3:  # the restart: weights, pruner state and optimizer state restored
            _assert_same_outputs(ns["model"], job.model)
            restored = ns["pruner"].state_dict()["slice"]["masks"]
            assert restored.keys() == saved_slices.keys()
            assert all(torch.equal(restored[k], saved_slices[k]) for k in saved_slices)
            assert ns["pruner"].channel_pruner.reached_target
            assert len(ns["optimizer"].state) == len(job.optimizer.state) > 0
        elif i == 4:  # the rebuild rule now resizes MyScale and its plain int attribute
            model = nn.Sequential(nn.Conv2d(3, 8, 1), MyScale(8))
            small = {"0.weight": torch.randn(4, 3, 1, 1), "0.bias": torch.randn(4),
                     "1.scale": torch.randn(4)}
            model, missing, unexpected = torch_pruning.load_state_dict_pruned(model, small)
            assert model[1].channels == 4 and model(torch.randn(1, 3, 2, 2)).shape[1] == 4
    return after


def slice_pruning_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    folder = write_config(tmp_path / "slice_run", {"slice_sparsity_args": {
        "start_epoch": 0, "end_epoch": 0, "block_size": 4, "prune_rate": 0.5,
        "pruning_gradually": False, "reg": 1e-3}})
    x, y = ns["loader"][0]
    loss = ns["criterion"](ns["model"](x), y)
    ns.update(output_dir=folder, pruner=tp.Pruning(ns["model"], folder, log=ns["logger"]),
              epoch=0, loss=loss)

    def after(i: int, ns: Dict[str, Any]) -> None:
        if i == 0:
            assert ns["loss"].item() > loss.item()  # the penalty was added
            assert ns["pruner"].slice_pruner.sparsity()["overall"]["fraction"] >= 0.45
        elif i == 1:
            sparsity = ns["sparsity"]
            assert set(sparsity) == {"layers", "overall", "skipped"}
            convs = {n for n, m in ns["model"].named_modules() if isinstance(m, nn.Conv2d)}
            assert sparsity["layers"] and set(sparsity["layers"]) <= convs
    return after


def tools_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    # runs/exp1 (relative, as in the doc): checkpoints in which 5 of every 8 filters shrink.
    monkeypatch.chdir(tmp_path)
    run = write_config(tmp_path / "runs" / "exp1", pat_config(mac_target=0.6))
    model = make_model()
    for epoch in range(3):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        for v in sd.values():
            if v.dim() == 4:
                v[: v.shape[0] * 5 // 8] *= 10.0 ** (-2 * epoch)
        torch.save({"model": sd, "epoch": epoch}, run / f"epoch_{epoch:03d}.pt")
    # A pruner in the middle of a run: channels masked at epoch 0, slices too.
    folder = write_config(tmp_path / "masked_run", {
        "channel_sparsity_args": {"start_epoch": 0, "end_epoch": 3, "global_prune_rate": 0.8,
                                  "block_size": 4, "input_shape": list(INPUT_SHAPE)},
        "slice_sparsity_args": {"start_epoch": 0, "end_epoch": 0, "block_size": 4,
                                "prune_rate": 0.25}})
    pruner = tp.Pruning(ns["model"], folder, log=ns["logger"])
    pruner.prune(ns["model"], 0)
    ns.update(pruner=pruner, example_inputs=torch.randn(INPUT_SHAPE),
              output_dir=tmp_path / "report")
    ns["output_dir"].mkdir()

    def after(i: int, ns: Dict[str, Any]) -> None:
        if i == 0:
            assert ns["result"].suggested_epoch == 1
            assert (run / "channel_norms.png").stat().st_size > 0
        elif i == 1:
            text = ns["report"].text()
            assert "features.0.0" in text
            assert ns["report"].macs[1] < ns["report"].macs[0]
            assert sum(s.macs for s in ns["after"]) < sum(s.macs for s in ns["before"])
            assert {p.name for p in ns["output_dir"].iterdir()} >= {"pruning_report.txt",
                                                                    "pruning_report.png"}
    return after


def channel_pruning_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    # Right after the physical removal: reset_optimizer is set, the optimizer has momentum.
    job = Job(tmp_path / "job", mac_target=0.6, logger=ns["logger"], stop_at_removal=True)
    assert job.pruner.channel_pruner.reset_optimizer
    ns.update(model=job.model, pruner=job.pruner, optimizer=job.optimizer,
              output_dir=job.folder, epoch=job.epoch)

    def after(i: int, ns: Dict[str, Any]) -> None:
        if i == 0:
            assert ns["pruner"].channel_pruner.reset_optimizer is False
            params = [p for g in ns["optimizer"].param_groups for p in g["params"]]
            assert {id(p) for p in params} == {id(p) for p in ns["model"].parameters()}
            for p in params:  # momentum sliced to the reduced shapes
                buf = ns["optimizer"].state[p].get("momentum_buffer")
                assert buf is None or buf.shape == p.shape
    return after


def recipes_context(ns: Dict[str, Any], tmp_path: Path, monkeypatch) -> Callable:
    base_macs = macs(ns["model"])
    ns["trained_dense_model"] = make_model()

    def after(i: int, ns: Dict[str, Any]) -> None:
        if i == 1:  # the loop with the restart ran to the budget and restarted the schedule
            assert ns["loader"].iterations == ns["epochs"]
            assert ns["pruner"].channel_pruner.reached_target
            assert macs(ns["model"]) <= 0.1 * base_macs * 1.01
            scheduler = ns["scheduler"]
            assert scheduler.optimizer is ns["optimizer"]  # the new optimizer is scheduled
            assert 0 < scheduler.total_steps < ns["epochs"] * len(ns["loader"])  # a new cycle
            removal = ns["cfg"]["channel_sparsity_args"]["end_epoch"]
            assert scheduler.total_steps == (ns["epochs"] - removal - 1) * len(ns["loader"])
        elif i == 2:  # distillation from the given teacher, a frozen copy of it
            teacher = ns["kd"].teacher
            assert teacher is not ns["trained_dense_model"]
            assert not any(p.requires_grad for p in teacher.parameters())
            _assert_same_outputs(teacher, ns["trained_dense_model"])
            assert torch.isfinite(ns["loss"])
    return after


CONTEXTS = {
    "docs/recipes.md": recipes_context,
    "README.md": readme_context,
    "docs/getting_started.md": getting_started_context,
    "docs/checkpoints.md": checkpoints_context,
    "docs/slice_pruning.md": slice_pruning_context,
    "docs/tools.md": tools_context,
    "docs/channel_pruning.md": channel_pruning_context,
}

FILES_WITH_PYTHON = [p for p in DOC_FILES if python_blocks(p)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", FILES_WITH_PYTHON,
                         ids=[str(p.relative_to(ROOT)) for p in FILES_WITH_PYTHON])
def test_python_blocks_run(path: Path, base: Dict[str, Any], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    rel = str(path.relative_to(ROOT))
    context = CONTEXTS.get(rel)
    after = context(base, tmp_path, monkeypatch) if context else None
    try:
        run_blocks(python_blocks(path), base, after)
    finally:  # drop the pruners now: their masks must not outlive the test
        base.clear()
        gc.collect()


def test_extraction_finds_python_and_skips_other_languages(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("text\n```bash\necho no\n```\n- item\n\n  ```python\n  x = 1\n  ```\n"
                   "```\nplain\n```\n~~~python\ny = x + 1\n~~~\n```json\n{}\n```\n")
    blocks = python_blocks(doc)
    assert [(b.line, b.code) for b in blocks] == [(8, "x = 1\n"), (14, "y = x + 1\n")]
    ns: Dict[str, Any] = {}
    run_blocks(blocks, ns)
    assert ns["y"] == 2


def test_contexts_name_existing_files_with_python() -> None:
    """A context whose file lost its python blocks (or was renamed) would check nothing."""
    assert set(CONTEXTS) <= {str(p.relative_to(ROOT)) for p in FILES_WITH_PYTHON}
    readme = python_blocks(ROOT / "README.md")
    assert len(readme) >= 2 and "pruner.prune(model, epoch, log=logger)" in readme[0].code


def test_failing_block_names_file_and_line(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# t\n\n```python\nok = 1\nundefined_name\n```\n")
    with pytest.raises(AssertionError, match=r"doc\.md:4 failed: NameError"):
        run_blocks(python_blocks(doc), {})
