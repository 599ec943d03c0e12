"""Resume a pruning-aware training job after a crash, and check it ends as an uninterrupted run.

``train()`` below is an ordinary training script with the README's five lines. It saves a
checkpoint (model, optimizer, ``pruner.state_dict()``, epoch) every epoch and, when started on a
run folder that already has checkpoints, resumes from the last one:

* the weights are loaded with the seed's snippet: plain ``load_state_dict``, falling back to
  ``torch_pruning.load_state_dict_pruned`` once channels were physically removed (the script
  always builds the original, unpruned architecture);
* ``Pruning`` is built on the loaded model from the run's ``pruning_config.json`` (which says
  ``reach_mac_target: true`` once the target was met), then
  ``pruner.load_state_dict(ckpt["pruner"])`` restores the channel and slice masks and the
  schedule's progress;
* the optimizer state is reused when it fits the model (``optimizer_state_matches``).

The demo runs the script three times, each in a fresh process: once uninterrupted; once killed
(SIGKILL) in the middle of epoch ``--stop-at``; and once more on the killed run's folder, which
resumes it. It then compares both runs checkpoint by checkpoint: architecture, channel masks,
slice masks, weights and test outputs.

    python examples/resume.py --out runs/resume                      # about 30 s
    python examples/resume.py --out /tmp/resume --quick --stop-at 3  # reduced run (the tests)
    python examples/resume.py --train runs/my_run --epochs 10        # only the training script
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning  # noqa: E402
from torch_pruning.pat import optimizer_state_matches  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_pat import DigitsNet, accuracy, load_digits_tensors  # noqa: E402

logger = logging.getLogger("resume")
WIDTH = 16  # DigitsNet width: small enough for a quick demo
CHECKPOINT = re.compile(r"epoch_(\d+)\.pt$")


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 0.05) -> None:
    """Cosine decay, a function of the epoch only (so a resumed run follows it too)."""
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def checkpoints(run_dir: Path) -> List[Path]:
    """The run's checkpoints in epoch order."""
    found = [p for p in run_dir.glob("epoch_*.pt") if CHECKPOINT.search(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.search(p.name).group(1)))


def save_checkpoint(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def crash() -> None:
    """Die as a killed job does: no exception handler, no cleanup."""
    logger.info("simulated crash: SIGKILL")
    logging.shutdown()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


def train(output_dir: Path, epochs: int, seed: int = 0, stop_at: Optional[int] = None) -> None:
    """The user's training script: starts, or resumes from the last checkpoint in ``output_dir``."""
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    generator = torch.Generator()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=generator)
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = DigitsNet(WIDTH).to(device)
    criterion = nn.CrossEntropyLoss()

    start_epoch, ckpt = 0, None
    found = checkpoints(output_dir)
    if found:
        ckpt = torch.load(found[-1], map_location=device, weights_only=True)
        weights = ckpt["model"]
        try:
            model.load_state_dict(weights)
        except Exception:
            model, missing_keys, unexpected_keys = torch_pruning.load_state_dict_pruned(model, weights)
        start_epoch = ckpt["epoch"] + 1
        logger.info("resuming from %s at epoch %d", found[-1].name, start_epoch)

    pruner = Pruning(model, output_dir, forward_fn=None, log=logger, device=device)
    optimizer = make_optimizer(model)
    if ckpt is not None:
        pruner.load_state_dict(ckpt["pruner"])
        if optimizer_state_matches(ckpt["optimizer"], model):
            optimizer.load_state_dict(ckpt["optimizer"])

    for epoch in range(start_epoch, epochs):
        generator.manual_seed(seed + epoch)  # the data order depends on the epoch only
        set_lr(optimizer, epoch, epochs)
        for step, (x, y) in enumerate(loader):
            if epoch == stop_at and step == len(loader) // 2:
                crash()
            loss = criterion(model(x), y)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "pruner": pruner.state_dict(), "epoch": epoch},
                        output_dir / f"epoch_{epoch:03d}.pt")
        logger.info("epoch %d: test accuracy %.2f%%", epoch, accuracy(model, x_test, y_test))


# ---------------------------------------------------------------------- the demo's comparison
def _load(path: Path) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _model_from(weights: Dict[str, torch.Tensor]) -> nn.Module:
    model = DigitsNet(WIDTH)
    model, _, _ = torch_pruning.load_state_dict_pruned(model, weights)
    return model.eval()


def _masks(pruner_state: Dict[str, Any]) -> Dict[str, List[int]]:
    """Channel masks (pruned units per group) and slice masks (indices of zero entries)."""
    channel = {f"channel {k}": sorted(v.tolist())
               for k, v in pruner_state.get("channel", {}).get("pruned_units", {}).items()
               if len(v)}
    slices = {f"slice {k}": (~v).flatten().nonzero().flatten().tolist()
              for k, v in pruner_state.get("slice", {}).get("masks", {}).items()}
    return {**channel, **slices}


def compare_runs(a: Path, b: Path, x_test: torch.Tensor) -> Dict[str, Any]:
    """Checkpoint-by-checkpoint comparison of two run folders."""
    rows = []
    for pa, pb in zip(checkpoints(a), checkpoints(b)):
        ca, cb = _load(pa), _load(pb)
        wa, wb = ca["model"], cb["model"]
        same_arch = {k: tuple(v.shape) for k, v in wa.items()} == \
            {k: tuple(v.shape) for k, v in wb.items()}
        diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) \
            if same_arch else float("inf")
        sa, sb = _masks(ca["pruner"]), _masks(cb["pruner"])
        rows.append({"epoch": ca["epoch"], "same_architecture": same_arch,
                     "same_masks": sa == sb, "masked": sum(len(v) for k, v in sa.items()
                                                           if k.startswith("channel")),
                     "slice_zero": sum(len(v) for k, v in sa.items() if k.startswith("slice")),
                     "conv_channels": [v.shape[0] for k, v in wa.items()
                                       if k.endswith(".weight") and v.dim() == 4],
                     "max_weight_diff": diff})
    last_a, last_b = checkpoints(a)[-1], checkpoints(b)[-1]
    with torch.no_grad():
        out_a = _model_from(_load(last_a)["model"])(x_test)
        out_b = _model_from(_load(last_b)["model"])(x_test)
    states = [json.loads((d / "pruning_config.json").read_text())["channel_sparsity_args"]
              for d in (a, b)]
    return {"epochs": rows,
            "final_output_max_diff": float((out_a - out_b).abs().max()),
            "same_channel_summary": states[0]["log_str"] == states[1]["log_str"],
            "log_str": states[0]["log_str"]}


def _run_script(run_dir: Path, epochs: int, seed: int, stop_at: Optional[int] = None) -> int:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--train", str(run_dir),
           "--epochs", str(epochs), "--seed", str(seed)]
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    return subprocess.run(cmd, check=False).returncode


def demo(out: Path, epochs: int, seed: int, stop_at: int, config: Path) -> Dict[str, Any]:
    runs = {"uninterrupted": out / "uninterrupted", "interrupted": out / "interrupted"}
    for run_dir in runs.values():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        shutil.copyfile(config, run_dir / "pruning_config.json")

    if _run_script(runs["uninterrupted"], epochs, seed) != 0:
        raise SystemExit("the uninterrupted run failed; see its pat.log")
    crashed_rc = _run_script(runs["interrupted"], epochs, seed, stop_at=stop_at)
    left = [p.name for p in checkpoints(runs["interrupted"])]
    if crashed_rc == 0 or len(left) != stop_at:
        raise SystemExit(f"expected a crash in epoch {stop_at}, got exit code {crashed_rc} and "
                         f"checkpoints {left}")
    if _run_script(runs["interrupted"], epochs, seed) != 0:
        raise SystemExit("the resumed run failed; see its pat.log")

    x_test = load_digits_tensors(seed)[2]
    result = compare_runs(runs["uninterrupted"], runs["interrupted"], x_test)
    rows = result["epochs"]
    result.update({
        "stop_at": stop_at, "crash_exit_code": crashed_rc, "checkpoints_before_restart": left,
        "resumed_equals_uninterrupted": (
            len(rows) == epochs and all(r["same_architecture"] and r["same_masks"] for r in rows)
            and result["same_channel_summary"] and result["final_output_max_diff"] <= 1e-4),
    })
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def print_summary(result: Dict[str, Any]) -> None:
    print(f"killed in epoch {result['stop_at']} (exit code {result['crash_exit_code']}) after "
          f"{len(result['checkpoints_before_restart'])} checkpoints; resumed in a new process")
    print("epoch  conv channels (uninterrupted)  masked  slices 0  same arch  same masks  "
          "max |w diff|")
    for r in result["epochs"]:
        mark = "  <- resumed" if r["epoch"] == result["stop_at"] else ""
        print(f"{r['epoch']:5d}  {str(r['conv_channels']):29s}  {r['masked']:6d}  "
              f"{r['slice_zero']:8d}  {str(r['same_architecture']):9s}  "
              f"{str(r['same_masks']):10s}  {r['max_weight_diff']:.2e}{mark}")
    print(f"final test outputs, max |difference|: {result['final_output_max_diff']:.2e}")
    print("channel pruning summary (identical in both runs' pruning_config.json: "
          f"{result['same_channel_summary']}):")
    print("  " + result["log_str"].replace("\n", "\n  "))
    verdict = "EQUALS" if result["resumed_equals_uninterrupted"] else "DIFFERS FROM"
    print(f"resumed run {verdict} the uninterrupted run")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/resume"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-at", type=int, default=None,
                        help="kill the (interrupted) run in the middle of this epoch "
                             "(demo default: 3)")
    parser.add_argument("--config", type=Path, default=HERE / "resume_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests (8 epochs)")
    parser.add_argument("--train", type=Path, metavar="RUN_DIR",
                        help="only run (or resume) the training script in RUN_DIR, which holds "
                             "pruning_config.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a small model: one thread is fastest
    epochs = min(args.epochs, 8) if args.quick else args.epochs
    if args.train is not None:
        logging.basicConfig(level=logging.INFO, format="%(message)s",
                            filename=str(args.train / "pat.log"), filemode="a")
        train(args.train, epochs, args.seed, stop_at=args.stop_at)
        return 0
    if args.stop_at is None:
        args.stop_at = 3
    if not 0 < args.stop_at < epochs:
        parser.error(f"--stop-at must be between 1 and {epochs - 1}")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = demo(args.out, epochs, args.seed, args.stop_at, args.config)
    print_summary(result)
    print(f"done in {time.perf_counter() - start:.0f} s; logs in {args.out}/*/pat.log, "
          f"summary {args.out / 'summary.json'}")
    return 0 if result["resumed_equals_uninterrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
