"""What the benchmark scripts report: benchmarks/run_all.py rewrites docs/benchmarks.md without
losing the sections it does not measure (the summary kept by hand, the decoder and accuracy
sections other scripts write); bench_accuracy.py's margins pair runs by seed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from benchmarks import bench_accuracy as bench
from benchmarks import run_all

ROOT = Path(__file__).resolve().parents[1]


def _headings(text: str) -> list:
    return re.findall(r"(?m)^## .*$", text)


def test_a_full_rerun_keeps_every_section_it_does_not_measure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", page)
    before = page.read_text()
    digits = {"acc_base": 97.0, "acc_pat": 96.5, "acc_drop_max": 0.8, "macs": 0.5,
              "params": 0.4, "latency": 0.6, "seconds": 60.0, "n": 2}
    monkeypatch.setattr(run_all, "run_script", lambda args, threads: f"NEW TABLE {args[0]}")
    monkeypatch.setattr(run_all, "digits", lambda seeds, extra=(): digits)
    assert run_all.main(["--seeds", "2", "--out", str(page)]) == 0
    after = page.read_text()
    # every section once, the measured ones rewritten, the others word for word
    assert sorted(map(run_all._heading, _headings(after))) == sorted(
        map(run_all._heading, _headings(before)))
    assert "NEW TABLE benchmarks/bench_latency.py" in after
    assert "## End to end: digits (`examples/digits_pat.py`, 2 seeds)" in after
    for kept in ("## Hugging Face decoders", "## Accuracy at a MAC budget"):
        start = before.index(kept)
        end = before.find("\n## ", start + 1)
        assert before[start:end if end > 0 else None] in after, kept
    assert run_all.KEPT.search(before).group(0) in after
    assert not list(tmp_path.glob("*.tmp"))


def _row(method: str, seed: int, acc: float, tag: str = "default", budget: float = 0.1,
         arch: str = "vgg", epochs: int = 30) -> dict:
    return dict(arch=arch, method=method, budget=1.0 if method == "unpruned" else budget,
                seed=seed, epochs=epochs, tag=tag, acc=acc, macs=budget)


def _margin_lines(text: str) -> list:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]


def test_margins_pair_ours_with_each_alternative_by_seed() -> None:
    rows = [_row("pat", 0, 70.0), _row("pat", 1, 68.0), _row("pat", 2, 69.0),
            # the thin net has one seed ours lacks and lacks one of ours: only 0 and 1 pair
            _row("thin", 0, 67.0), _row("thin", 1, 66.0), _row("thin", 3, 99.0),
            _row("oneshot", 0, 60.0), _row("oneshot", 1, 61.0), _row("oneshot", 2, 62.0),
            _row("unpruned", 0, 75.0),
            # not alternatives: another setting of ours, another model, other epochs
            _row("pat", 0, 10.0, tag="lever"), _row("thin", 2, 10.0, arch="resnet"),
            _row("thin", 2, 10.0, epochs=60)]
    lines = _margin_lines(bench.margins(rows, "default"))
    assert [line[2] for line in lines] == ["thin, default", "oneshot, default",
                                           "unpruned, default"]
    thin, oneshot, unpruned = lines
    assert thin[:2] == ["vgg, 30", "0.1x"]
    assert thin[3:5] == ["2", "+2.50 (+2.00 to +3.00)"]
    assert thin[5] == "-3.85 to +8.85"  # 2.50 -/+ t(0.975, 1 dof) 12.71 * sd 0.707 / sqrt(2)
    assert oneshot[3:5] == ["3", "+8.00 (+7.00 to +10.00)"]
    # the full network is listed last although ours trails it, and one seed gives no interval
    assert unpruned[3:] == ["1", "-5.00 (-5.00 to -5.00)", "-"]


def test_margins_cover_each_budget_of_the_tag_and_nothing_else() -> None:
    rows = [_row("pat", 0, 70.0, budget=0.25), _row("sparse", 0, 69.0, budget=0.25),
            _row("pat", 0, 60.0, budget=0.1), _row("sparse", 0, 58.0, budget=0.1)]
    lines = _margin_lines(bench.margins(rows, "default"))
    assert [(line[1], line[4]) for line in lines] == [("0.25x", "+1.00 (+1.00 to +1.00)"),
                                                      ("0.1x", "+2.00 (+2.00 to +2.00)")]
    assert _margin_lines(bench.margins(rows, "other")) == []
