"""bench/bench_merge.py runs end to end at a tiny size (without mergekit) and prints a row per configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_prints_its_rows_and_raw_times(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "bench_merge.py"), "--size-gb", "0.01", "--repeat", "1", "--methods", "linear",
           "--settings", "auto,t1", "--mergekit", str(tmp_path / "no-mergekit"), "--workdir", str(tmp_path / "w"), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any("mergekit not found" in line for line in lines)
    rows = [line.split() for line in lines if line.startswith("linear ")]
    assert [r[2] for r in rows] == ["auto", "t1"] and all(float(r[4]) > 0 for r in rows)  # wsa in / floor parses
    raw = json.loads(lines[-1])
    assert raw["models"] == 2 and len(raw["rows"]) == 2 and raw["rows"][0]["mk_proc_s"] == []
    assert not list((tmp_path / "w").glob("wsa-*/*.tmp*"))  # nothing half-written left
