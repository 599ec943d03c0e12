"""Run every benchmark and write ``docs/benchmarks.md`` (tables + the machine they ran on).

    python benchmarks/run_all.py                 # all, about 25 minutes on 2 idle cores
    python benchmarks/run_all.py --seeds 1 --steps 8 --out /tmp/b.md   # a quicker look
    python benchmarks/run_all.py --overhead-only  # only the channel and slice overhead tables

The channel and slice overhead benchmarks run at every thread count of ``--threads``
(default ``1,all``: one thread, and every core, as users run) and with both forms of
``layers`` (the seed's explicit list of Conv2d names, and ``"all"``). ``--overhead-only``
reruns just those two and replaces their block of the existing page, leaving the rest. A
full run rewrites the sections it measures and keeps every other section of the existing page
(the hand-written summary, and the ones other scripts write: ``bench_llm.py``,
``bench_accuracy.py``), in their order, after its own.

Each benchmark is a script of its own (``bench_channel.py``, ``bench_slice.py``) printing a
markdown table of ratios measured in one run; the end-to-end figures run the digits example
(``examples/digits_pat.py``) for several seeds and average accuracy and MACs kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
#: A hand-written part of the page (the summary against the targets) that a rerun keeps.
KEPT = re.compile(r"<!-- kept by run_all\.py -->.*?<!-- end kept -->\n?", re.S)
#: The channel and slice overhead tables, which ``--overhead-only`` replaces alone.
OVERHEAD = re.compile(r"<!-- overhead begin -->.*?<!-- overhead end -->", re.S)


def kept_section(path: Path) -> str:
    """The hand-written section of the existing page, or '' (then it is left out)."""
    found = KEPT.search(path.read_text()) if path.exists() else None
    return found.group(0) if found else ""


def _heading(line: str) -> str:
    """A section's heading without its parenthesized detail (the seed count may change)."""
    return re.sub(r"\s*\(.*$", "", line.strip())


def other_sections(page: str, generated: str) -> str:
    r"""The ``## `` sections of ``page`` (outside its kept and overhead blocks) whose heading
    ``generated`` does not have, in their order.

    Example:
        >>> page = "# B\n\n## Latency (x)\n\nold\n\n## Decoders\n\nkept\n"
        >>> other_sections(page, "# B\n\n## Latency (y)\n\nnew\n")
        '## Decoders\n\nkept\n'
    """
    rest = OVERHEAD.sub("", KEPT.sub("", page))
    have = {_heading(line) for line in generated.splitlines() if line.startswith("## ")}
    sections = re.split(r"(?m)^(?=## )", rest)[1:]
    return "".join(s for s in sections if _heading(s.splitlines()[0]) not in have)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, load average {load:.1f} at start, "
            f"{datetime.date.today().isoformat()}")


def run_script(args: List[str], threads: Optional[int]) -> str:
    """Run a benchmark script; ``threads`` sets OMP_NUM_THREADS (None: the scripts set their
    thread counts themselves)."""
    env = dict(os.environ, MPLBACKEND="Agg")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def digits(seeds: int, extra: List[str] = ()) -> Dict[str, float]:
    rows = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run_script(["examples/digits_pat.py", "--out", tmp, "--seed", str(seed), *extra], 1)
            elapsed = time.perf_counter() - start
            summary = json.loads((Path(tmp) / "summary.json").read_text())
        base, pat = summary["baseline"], summary["pat"]
        rows.append({"acc_base": base["accuracy"], "acc_pat": pat["accuracy"],
                     "macs": pat["macs"] / base["macs"], "params": pat["params"] / base["params"],
                     "latency": pat["latency_ms"] / base["latency_ms"], "seconds": elapsed})
    return {k: statistics.mean(r[k] for r in rows) for k in rows[0]} | {"n": len(rows),
            "acc_drop_max": max(r["acc_base"] - r["acc_pat"] for r in rows)}


def overhead(steps: int, threads: str, command: str, where: str) -> str:
    """The channel and slice overhead tables (every thread count, both forms of ``layers``),
    between the markers ``--overhead-only`` replaces."""
    common = ["--steps", str(steps), "--threads", threads, "--layers", "explicit,all"]
    channel = run_script(["benchmarks/bench_channel.py", *common], None)
    slices = run_script(["benchmarks/bench_slice.py", *common], None)
    return f"""<!-- overhead begin -->
Overhead tables measured by `{command}` on: {where}.

## Channel pruning (`benchmarks/bench_channel.py`)

Targets: step with `channel_regularize` + mask upkeep <= 1.10x a plain step; a typical `prune()`
<= 3 plain steps; `Pruning(...)` construction <= 1.5x upstream's `DependencyGraph` build (warm
against warm: median of 3 builds of each on the same model copies); MACs reached within 1% under
the target. `layers`: "explicit" is the seed's list of every Conv2d name, "all" is `"all"`.

{channel}

## Slice pruning (`benchmarks/bench_slice.py`)

Targets: step with `slice_regularize` <= 1.15x a plain step; `prune()` <= 2 plain steps.
`layers`: "explicit" lists every Conv2d by name, "all" is the default selection.

{slices}
<!-- overhead end -->"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", default="1,all",
                        help="torch threads of the overhead benchmarks (comma-separated; 'all' "
                             "= every core); the others run at the first count")
    parser.add_argument("--overhead-only", action="store_true",
                        help="rerun only the channel and slice overhead benchmarks and replace "
                             "their block in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    where = machine()
    command = "python benchmarks/run_all.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    page = args.out.read_text() if args.overhead_only and args.out.exists() else ""
    if args.overhead_only and not OVERHEAD.search(page):
        parser.error(f"{args.out} has no overhead block to replace; run without "
                     "--overhead-only")
    tables = overhead(args.steps, args.threads, command.strip(), where)
    if args.overhead_only:
        write_atomically(args.out, OVERHEAD.sub(lambda _: tables, page))
        print(tables)
        return 0
    first = args.threads.split(",")[0].strip()
    one = (os.cpu_count() or 1) if first == "all" else int(first)
    threads = str(one)
    latency = run_script(["benchmarks/bench_latency.py", "--threads", threads], one)
    heads = run_script(["benchmarks/bench_heads.py", "--threads", threads], one)
    d = digits(args.seeds)
    c = digits(args.seeds, ["--carry-optimizer"])
    text = f"""# Benchmarks

Measured by `{command}` on: {where}.
Ratios are measured within one run (the variants interleaved), so background load hits both
sides alike; absolute times are for orientation only. Tests never assert times.

{tables}

{kept_section(args.out)}
## Latency-aware against MAC-based pruning (`benchmarks/bench_latency.py`)

One-shot pruning to the same budget fraction (0.5), once with `cost: "macs"` and once with
`cost: "latency"` (per-layer latency table measured on this CPU); real batch-1 latency.

{latency}

## Whole attention heads: vit_b_16 (`benchmarks/bench_heads.py`)

`tp.pat.split_multihead_attention` rewrites each `nn.MultiheadAttention` with q/k/v `Linear`
layers, then half the heads (or half the MLP hidden features, or both) are masked and removed
one-shot in every block.

{heads}

## End to end: digits (`examples/digits_pat.py`, {d['n']} seeds)

Baseline and PAT run train for the same 30 epochs; PAT regularizes, masks to `mac_target` 0.5,
removes channels, resets the optimizer, fine-tunes and slice-prunes 20% of the slices.

| | baseline | PAT |
|---|---|---|
| test accuracy (mean over seeds) | {d['acc_base']:.2f}% | {d['acc_pat']:.2f}% |
| largest accuracy drop of a seed | | {d['acc_drop_max']:.2f} points |
| MACs | 1.00x | {d['macs']:.3f}x |
| parameters | 1.00x | {d['params']:.3f}x |
| CPU latency, batch 64 (one thread) | 1.00x | {d['latency']:.2f}x |
| wall time of the whole job (both runs) | | {d['seconds']:.0f} s |

After the physical removal the optimizer can be reset (the seed's advice, above) or carried
through with `pruner.carry_optimizer_state(optimizer)` (`--carry-optimizer`): same seeds,
PAT accuracy {c['acc_pat']:.2f}% with the carried state against {d['acc_pat']:.2f}% with a reset
(largest drop of a seed {c['acc_drop_max']:.2f} against {d['acc_drop_max']:.2f} points).
"""
    if args.out.exists():
        carried = other_sections(args.out.read_text(), text)
        text = text + ("\n" + carried if carried else "")
    write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
