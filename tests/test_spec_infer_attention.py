"""``wsa spec infer`` through attention: heads traced from view/transpose/matmul/softmax and sdpa, checked by permuting."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from wsa_cli.errors import ConfigError
from wsa_cli.permute import apply_permutation, random_perms
from wsa_cli.permute.infer import infer_spec
from wsa_cli.permute.spec import AxisLayout

F = torch.nn.functional
D, HEADS, T = 16, 4, 5


class Block(nn.Module):
    """A pre-norm transformer block; attention written out (``manual``) or with scaled_dot_product_attention."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.sdpa = sdpa
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.q, self.k, self.v, self.o = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.up, self.down = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, HEADS, D // HEADS).transpose(1, 2)  # (B, H, T, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.ln1(x)
        q, k, v = self.heads(self.q(h)), self.heads(self.k(h)), self.heads(self.v(h))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(D // HEADS)
            a = torch.softmax(scores, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).contiguous().view(b, t, D))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class Net(nn.Module):
    """Embedding-free: an input projection into the residual stream, two blocks, a head."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(3, D)
        self.blocks = nn.ModuleList([Block(sdpa), Block(sdpa)])
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


def _layout(spec, key, axis=0) -> str:  # noqa: ANN001
    entry = spec.axes[key][axis]
    assert isinstance(entry, AxisLayout), (key, entry)
    return "*".join(str(f) for f in entry.segments[0])


@pytest.mark.parametrize("sdpa", [False, True], ids=["manual", "sdpa"])
def test_heads_are_traced_and_a_random_permutation_keeps_the_outputs(sdpa: bool) -> None:
    torch.manual_seed(0)
    model = Net(sdpa).eval()
    spec = infer_spec(model, (T, 3))
    for i in range(2):
        p = f"blocks.{i}."
        qk, vo = _layout(spec, p + "q.weight"), _layout(spec, p + "v.weight")
        assert qk == _layout(spec, p + "k.weight") and qk.startswith("H_") and "*QK_" in qk
        assert vo.split("*")[0] == qk.split("*")[0] and "*VO_" in vo  # one head permutation for Q, K, V and O
        assert _layout(spec, p + "o.weight", 1) == vo and _layout(spec, p + "q.bias") == qk
        assert spec.sizes[qk.split("*")[0]] == HEADS and spec.sizes[qk.split("*")[1]] == D // HEADS
        assert p[:-1] in spec.attention  # the inferred spec carries an attention rule, checked when resolved
    stream = spec.axes["inp.weight"][0]
    assert stream is not None and all(spec.axes[f"blocks.{i}.o.weight"][0] == stream for i in range(2))  # the residual stream
    assert spec.axes["head.weight"][0] is None  # the output keeps its order
    x = torch.randn(4, T, 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y = model(x)
        for seed in range(3):
            perms = random_perms(spec, seed)
            assert any(not torch.equal(p, torch.arange(p.numel())) for p in perms.values())
            model.load_state_dict(apply_permutation(spec, state, perms))
            torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)


class Rotary(Block):
    """Rotary embeddings by slicing the head dimension in halves: refused by name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.heads(self.q(x))
        half = q.shape[-1] // 2
        q = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
        a = (q @ self.heads(self.k(x)).transpose(-2, -1)).softmax(-1) @ self.heads(self.v(x))
        return self.o(a.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


def test_rotary_slicing_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"cannot handle node 'getitem_\d+'.*split into attention heads.*rotary.*spec template bert\|gpt2\|llama"):
        infer_spec(Rotary().eval(), (T, D))


class GroupedQuery(Block):
    """Grouped-query attention: 2 K/V heads, each repeated for 2 query heads. Refused by name."""

    def __init__(self) -> None:
        super().__init__()
        self.k, self.v = nn.Linear(D, D // 2), nn.Linear(D, D // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        kv = [y.view(b, t, HEADS // 2, D // HEADS).transpose(1, 2).repeat_interleave(2, dim=1) for y in (self.k(x), self.v(x))]
        a = torch.softmax(self.heads(self.q(x)) @ kv[0].transpose(-2, -1), dim=-1) @ kv[1]
        return self.o(a.transpose(1, 2).reshape(b, t, D))


def test_grouped_query_attention_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"cannot handle node 'repeat_interleave(_\d+)?'.*spec template bert\|gpt2\|llama"):
        infer_spec(GroupedQuery().eval(), (T, D))


class PerHeadMask(Block):
    """A per-head bias read from a buffer in forward: refused by name (a parameter outside a module)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bias", torch.randn(1, HEADS, T, T))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        a = torch.softmax(q @ k.transpose(-2, -1) + self.bias, dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, D))


def test_a_per_head_bias_is_a_parameter_outside_a_module() -> None:
    with pytest.raises(ConfigError, match=r"get_attr bias"):
        infer_spec(PerHeadMask().eval(), (T, D))


def test_cli_infers_an_attention_spec_and_checks_it(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    (tmp_path / "attn_models.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_spec_infer_attention import Net

        def net(state=None):
            m = Net(sdpa=True)
            if state is not None:
                m.load_state_dict(state)
            return m.eval()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "spec.yaml"
    res = cli("spec", "infer", "--model", "attn_models:net", "--input-shape", f"{T},3", "-o", str(out))
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert '"H_0*QK_0"' in text and '"H_1*VO_1"' in text and "attention:" in text
    torch.manual_seed(1)
    from safetensors.torch import save_file

    save_file(Net(sdpa=True).state_dict(), str(tmp_path / "m.safetensors"))
    res = cli("spec", "check", str(out), str(tmp_path / "m.safetensors"), "--model", "attn_models:net", "--input-shape", f"{T},3")
    assert res.exit_code == 0, res.output
    sys.modules.pop("attn_models", None)
