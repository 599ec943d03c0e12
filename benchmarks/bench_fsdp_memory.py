"""Peak memory of the physical removal under FSDP2: what each rank holds while channels go.

Two gloo processes on CPU shard a plain CNN of eight 3x3 convolutions (``--width`` channels,
~4.7 M parameters at the default 256) with ``fully_shard``, train one step with PAT, then
call ``pruner.prune()`` at an epoch where the MAC target is met, so the pruner gathers the
model, removes channels and hands back the reduced model unsharded. Measured per rank with
Linux's resident-set high-water mark: ``/proc/self/clear_refs`` (``5``) resets ``VmHWM`` just
before ``prune()``, ``VmHWM`` read after it is the peak of that call; the rise above the
resident size before the call is printed beside the model's parameter bytes (whole and one
shard), so the peak reads as a multiple of the whole model.

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_fsdp_memory.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from torch_pruning.utils import Pruning  # noqa: E402


class WideCNN(nn.Module):
    """Eight 3x3 conv-ReLU layers of ``width`` channels and a linear head."""

    def __init__(self, width: int) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(7):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    folder = Path(tempfile.mkdtemp(prefix="fsdp_mem_"))
    config = {"channel_sparsity_args": {
        "is_prune": True, "layers": "all", "input_shape": [1, 3, 8, 8], "start_epoch": 0,
        "end_epoch": 0, "global_prune_rate": 0.5, "mac_target": 0.5, "verbose": 0}}
    (folder / "pruning_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = WideCNN(args.width)
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    pruner = Pruning(model, folder)
    for block in model.features:
        if isinstance(block, nn.Conv2d):
            fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y) + pruner.slice_regularize(model)
    optimizer.zero_grad(); loss.backward()
    pruner.channel_regularize(model)
    optimizer.step()
    shard = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = status_kb("VmRSS")
    pruner.prune(model, 0)
    peak, after = status_kb("VmHWM"), status_kb("VmRSS")
    reduced = sum(p.numel() * p.element_size() for p in model.parameters())
    row: Dict[str, float] = {"rank": rank, "whole_MB": whole / 2**20, "shard_MB": shard / 2**20,
                             "reduced_MB": reduced / 2**20,
                             "peak_rise_MB": (peak - before) / 1024,
                             "kept_after_MB": (after - before) / 1024}
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if rank == 0:
        print(f"removal under FSDP2, {len(rows)} ranks, WideCNN(width={args.width}), "
              f"removed={pruner.channel_pruner.reset_optimizer}")
        for r in rows:
            print(f"  rank {r['rank']}: parameters whole {r['whole_MB']:.1f} MB, shard "
                  f"{r['shard_MB']:.1f} MB, reduced {r['reduced_MB']:.1f} MB; peak RSS rise "
                  f"during prune() {r['peak_rise_MB']:.1f} MB "
                  f"({r['peak_rise_MB'] / r['whole_MB']:.2f} x whole), still held after "
                  f"{r['kept_after_MB']:.1f} MB")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
