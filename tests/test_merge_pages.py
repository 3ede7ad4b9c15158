"""Input pages are unmapped behind the merge's pass: the resident part of each input is a window, not the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsa_cli.io import open_checkpoint
from wsa_cli.merge import pages
from wsa_cli.merge.kernel import combine_linear
from wsa_cli.merge.pages import PageWindow

MiB = 1 << 20


def _mapped_rss(path: Path) -> int:
    """Resident bytes of the process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line: address range ... path
                inside = len(head) >= 6 and head[-1] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
@pytest.mark.parametrize("windowed", [True, False])
def test_the_linear_pass_holds_a_window_of_each_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windowed: bool) -> None:
    n = 4 * MiB  # 16 MiB of float32 per input
    paths = [tmp_path / f"m{i}.safetensors" for i in range(2)]
    for i, p in enumerate(paths):
        save_file({"w": torch.full((n,), float(i + 1))}, str(p))
    monkeypatch.setattr(pages, "WINDOW", 2 * MiB)
    readers = [open_checkpoint(p) for p in paths]
    try:
        xs = [r.view("w") for r in readers]
        window = PageWindow(readers, "w", [4, 4]) if windowed else None
        worst = [0]

        def passed(done: int) -> None:
            if window is not None:
                window.passed(done)
            worst[0] = max(worst[0], *(_mapped_rss(p.resolve()) for p in paths))

        out = torch.empty(n)
        combine_linear(xs, [0.5, 0.5], 0.0, out, wide=torch.float32, passed=passed)
        assert torch.equal(out, torch.full((n,), 1.5))
    finally:
        for r in readers:
            r.close()
    if windowed:  # the window, one block being read, and the page-cache read-around
        assert worst[0] <= 4 * MiB
    else:  # the check sees the mapping: without the window the whole input is resident by the end
        assert worst[0] >= 14 * MiB
