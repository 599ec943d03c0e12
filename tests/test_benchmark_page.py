"""benchmarks/run_all.py rewrites docs/benchmarks.md without losing the sections it does not
measure (the summary kept by hand, the decoder and accuracy sections other scripts write)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _headings(text: str) -> list:
    return re.findall(r"(?m)^## .*$", text)


def test_a_full_rerun_keeps_every_section_it_does_not_measure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_all = _run_all()
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
