"""Tables for people fit the terminal: keys never wrap (shortened in the middle), optional columns
go first, --wide and --columns choose; JSON and CSV always keep everything."""

from __future__ import annotations

import json

import pytest
import torch

from wsa_cli.io import save_safetensors
from wsa_cli.results import Table, fit_table, shorten_middle, table_width

LONG = "model.encoder.layer.11.attention.self.query.weight"


def test_shorten_middle_keeps_both_ends_and_the_width() -> None:
    for width in range(3, len(LONG) + 3):
        short = shorten_middle(LONG, width)
        assert len(short) == min(width, len(LONG))
        if width < len(LONG):
            assert short[0] == "m" and short.endswith("t") and "\u2026" in short
    assert shorten_middle("abc", 10) == "abc"


def test_fit_table_drops_optional_columns_in_order_then_shortens_names() -> None:
    t = Table("t", ["key", "a", "b", "c"], [[LONG, 1.0, 2.0, 3.0]], optional=["b", "a"])
    assert fit_table(t, 500).columns == ["key", "a", "b", "c"]
    narrow = fit_table(t, 60)
    assert narrow.columns[0] == "key" and "b" not in narrow.columns
    tight = fit_table(t, 40)
    assert tight.columns == ["key", "c"]
    assert tight.rows[0][0].endswith("weight") and len(tight.rows[0][0]) < len(LONG)
    assert fit_table(t, 40, wide=True).columns == ["key", "a", "b", "c"] and fit_table(t, 40, wide=True).rows[0][0] == LONG
    assert fit_table(t, 40, columns=["c", "a"]).columns == ["key", "c", "a"]
    widths = [max(len(c), *(len(r[i]) for r in tight.rows)) for i, c in enumerate(tight.columns)]
    assert table_width(widths) <= 40


@pytest.fixture
def long_pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths = []
    for name in ("a", "b"):
        sd = {f"model.encoder.layer.{i}.attention.self.{p}.weight": torch.randn(8, 8, generator=g) for i in range(3) for p in ("query", "key")}
        save_safetensors(sd, tmp_path / f"{name}.safetensors")
        paths.append(str(tmp_path / f"{name}.safetensors"))
    return paths


@pytest.mark.parametrize("width", [80, 100])
def test_inspect_tables_fit_the_terminal_and_json_keeps_everything(long_pair, cli, monkeypatch, width) -> None:  # noqa: ANN001
    monkeypatch.setenv("COLUMNS", str(width))
    for args in ([long_pair[0]], long_pair):
        res = cli("inspect", *args, "--format", "table")
        assert res.exit_code == 0, res.stderr
        lines = res.stdout.splitlines()
        assert all(len(line) <= width for line in lines), max(lines, key=len)
        keys = [line for line in lines if "attention" in line]
        assert len(keys) == 6  # one line per key: nothing wrapped onto a second line
    wide = cli("inspect", *long_pair, "--format", "table", "--wide")
    assert "mean[1]" in wide.stdout and "model.encoder.layer.0.attention.self.query.weight" in wide.stdout
    picked = cli("inspect", *long_pair, "--format", "table", "--columns", "max KL,std[0]")
    header = next(line for line in picked.stdout.splitlines() if "key" in line)
    assert header.index("max KL") < header.index("std[0]") and "mean[0]" not in header
    bad = cli("inspect", *long_pair, "--format", "table", "--columns", "nope")
    assert bad.exit_code == 2 and "--columns 'nope': no column 'nope'" in bad.stderr
    data = json.loads(cli("inspect", *long_pair, "--json").stdout)
    assert set(data["comparison"]["layers"][0]) >= {"means", "stds", "fused_std", "mean_shift"}


def test_histogram_clips_outliers_and_counts_them(tmp_path, cli) -> None:  # noqa: ANN001
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    w[0, 0] = 1000.0  # one outlier would put almost everything into one bin
    save_safetensors({"w": w}, tmp_path / "o.safetensors")
    res = cli("inspect", str(tmp_path / "o.safetensors"), "--histogram", "w", "--bins", "8", "--json")
    h = json.loads(res.stdout)["histograms"][0]
    assert h["above"] >= 1 and h["clip_percent"] == 0.1 and sum(h["counts"]) + h["below"] + h["above"] == h["finite_values"]
    assert max(h["counts"]) < 0.5 * h["finite_values"]  # spread over the bins
    text = cli("inspect", str(tmp_path / "o.safetensors"), "--histogram", "w", "--format", "table").stdout
    assert "above the range shown" in text
    off = json.loads(cli("inspect", str(tmp_path / "o.safetensors"), "--histogram", "w", "--clip", "0", "--json").stdout)["histograms"][0]
    assert off["above"] == 0 and sum(off["counts"]) == off["finite_values"]


def test_interpolate_tables_fit_80_columns(long_pair, cli, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("COLUMNS", "80")
    res = cli("interpolate", *long_pair, "--alphas", "0,0.5,1", "--format", "table", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert any("vs alpha" in line for line in lines)  # the summary with its sparkline survived
