"""bench/reproduce.py --quick: every claim runs and reports its structure (the outcomes are not asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "bench" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_reports_every_claim(tmp_path, capsys):
    mod = _load()
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [c["name"] for c in data["claims"]] == list(mod.CLAIMS)
    for claim in data["claims"]:
        assert claim["verdict"] in ("reproduced", "reproduced in part", "not reproduced", "inconclusive")
        assert claim["comparisons"], claim["name"]
        for cmp in claim["comparisons"]:
            assert cmp["n"] >= 2 and cmp["two_se"] >= 0  # pairs, or models (claim 1: two per pair)
            assert cmp["clear"] == (abs(cmp["mean_diff"]) > cmp["two_se"])
        assert claim["figure"] and Path(claim["figure"]).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert report.count("**Verdict:") == len(mod.CLAIMS)
    assert "midpoint acc" in report and "acc barrier" in report
    assert "Claim 5" in capsys.readouterr().out


def test_paired_statistics():
    mod = _load()
    p = mod.Paired("x", [1.0, 2.0, 3.0], [0.5, 1.4, 2.6])
    assert round(p.mean_diff, 6) == -0.5 and p.clear and p.better
    q = mod.Paired("y", [1.0, 2.0], [1.5, 1.5])
    assert not q.clear and not q.better


def test_unknown_claim_is_a_usage_error(capsys):
    assert _load().main(["--quick", "--claims", "nope"]) == 2
    assert "unknown claim" in capsys.readouterr().err
