"""Regenerate the pictures of docs/tools.md from real runs (CPU, about ten minutes).

    python docs/img/make_tool_pictures.py [--work /tmp/pat_tools_run] [--example-run runs/digits]

1. ``WORK/pat``: the digits CNN of ``examples/digits_pat.py`` trained with the ``Pruning``
   facade: epochs 0-11 regularize (checkpoints saved), epochs 12-16 mask channels to half the
   MACs (kept as masks: ``prune_at_target`` is false) and slice-prune the convs. Gives
   ``analyze_facade_run.png`` and ``pruning_report.png`` / ``.txt``.
2. ``WORK/group_lasso``: the same CNN trained with a proximal group-lasso step on every conv
   filter, so unneeded channels collapse. Gives ``analyze_group_lasso.png``.
3. ``--example-run``: the output folder of ``python examples/digits_pat.py`` (masking and
   physical removal in the checkpoints). Gives ``analyze_example_run.png``.
4. ``inspect`` on torchvision's resnet18 writes ``inspect_resnet18.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import torch_pruning as tp  # noqa: E402
from torch_pruning.pat.tools import analyze, cli  # noqa: E402
from torch_pruning.pat import PruningReport, layer_stats  # noqa: E402

IMG = Path(__file__).resolve().parent
CONFIG = {
    "channel_sparsity_args": {
        "start_epoch": 12, "end_epoch": 16, "global_prune_rate": 0.6, "mac_target": 0.5,
        "prune_at_target": False, "block_size": 2, "layers": "all", "input_shape": [1, 1, 8, 8],
        "regularize": {"reg": 0.005, "gamma": 32.0}},
    "slice_sparsity_args": {
        "start_epoch": 14, "end_epoch": 16, "prune_rate": 0.3, "block_size": 4, "reg": 0.0001},
}
REGULARIZATION_EPOCHS, EPOCHS = 12, 17


def _example():
    spec = importlib.util.spec_from_file_location("digits_pat", ROOT / "examples" / "digits_pat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_pat(work: Path) -> None:
    example = _example()
    x_train, y_train, x_test, y_test = example.load_digits_tensors(0)
    run = work / "pat"
    shutil.rmtree(run, ignore_errors=True)
    (run / "checkpoints").mkdir(parents=True)
    (run / "pruning_config.json").write_text(json.dumps(CONFIG, indent=4))
    torch.manual_seed(0)
    model = example.DigitsNet()
    pruner = tp.Pruning(model, run)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(order), 64):
            xb, yb = x_train[order[i:i + 64]], y_train[order[i:i + 64]]
            loss = nn.functional.cross_entropy(model(xb), yb) + pruner.slice_regularize(model)
            optimizer.zero_grad()
            loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch)
        if epoch < REGULARIZATION_EPOCHS:
            torch.save({"epoch": epoch, "model": model.state_dict()},
                       run / "checkpoints" / f"epoch_{epoch:03d}.pt")
        with torch.no_grad():
            acc = (model.eval()(x_test).argmax(1) == y_test).float().mean().item()
        model.train()
        print(f"pat epoch {epoch}: test accuracy {acc:.3f}", flush=True)

    x = torch.randn(1, 1, 8, 8)
    report = PruningReport(layer_stats(example.DigitsNet(), x), layer_stats(model, x, pruner.masks),
                           pruner.slice_pruner.sparsity(),
                           title="Pruning report, digits CNN at the MAC target")
    txt, png = report.save(work / "report")
    shutil.copyfile(png, IMG / "pruning_report.png")
    shutil.copyfile(txt, IMG / "pruning_report.txt")


def train_group_lasso(work: Path, epochs: int = 12, tau: float = 0.003) -> None:
    example = _example()
    x_train, y_train, x_test, y_test = example.load_digits_tensors(0)
    run = work / "group_lasso"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "pruning_config.json").write_text(json.dumps(
        {"channel_sparsity_args": {"start_epoch": epochs, "end_epoch": epochs + 5,
                                   "global_prune_rate": 0.5, "input_shape": [1, 1, 8, 8]}}))
    torch.manual_seed(0)
    model = example.DigitsNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(order), 64):
            xb, yb = x_train[order[i:i + 64]], y_train[order[i:i + 64]]
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # proximal group-lasso step: shrink every filter by tau
                for conv in convs:
                    norm = conv.weight.flatten(1).norm(dim=1).clamp_min(1e-12)
                    conv.weight.mul_((1 - tau / norm).clamp_min(0).view(-1, 1, 1, 1))
        torch.save({"epoch": epoch, "model": model.state_dict()}, run / f"epoch_{epoch:03d}.pt")
        with torch.no_grad():
            acc = (model.eval()(x_test).argmax(1) == y_test).float().mean().item()
        model.train()
        print(f"group lasso epoch {epoch}: test accuracy {acc:.3f}", flush=True)


def _analyze(run: Path, png: str, text_name: str, shown: str, *extra: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = analyze.main([str(run), "--out", str(IMG / png), *extra])
    assert code == 0, f"analyze failed on {run}"
    (IMG / text_name).write_text(out.getvalue().replace(str(run), shown))


def pictures(work: Path, example_run: Path = None) -> None:
    _analyze(work / "pat", "analyze_facade_run.png", "analyze_facade_run.txt", "runs/pat")
    _analyze(work / "group_lasso", "analyze_group_lasso.png", "analyze_group_lasso.txt",
             "runs/group_lasso")
    if example_run is not None:
        _analyze(example_run, "analyze_example_run.png", "analyze_example_run.txt",
                 "runs/digits")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["inspect", "--model", "torchvision.models:resnet18",
                         "--input-shape", "1,3,224,224"])
    assert code == 0, "inspect failed"
    (IMG / "inspect_resnet18.txt").write_text(out.getvalue())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pat_tools_run"))
    parser.add_argument("--example-run", type=Path,
                        help="output folder of examples/digits_pat.py to analyze as well")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the runs in WORK from an earlier call")
    args = parser.parse_args()
    if not args.skip_training:
        train_pat(args.work)
        train_group_lasso(args.work)
    pictures(args.work, args.example_run)
