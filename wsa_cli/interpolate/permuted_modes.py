"""Interpolation modes that undo permutations first (listed in :mod:`wsa_cli.interpolate.modes`).

* ``permuted`` -- B's hidden units put into A's order by weight matching (``--spec``, ``--seed``),
  then the plain line between A and the permuted B.
* ``permuted+wsa`` -- permuted as above, then both endpoints rescaled onto their fused layer scopes
  exactly as mode ``wsa`` does (same ``--fusion/--target/--rescale`` options).
* ``permuted+fp`` -- permuted, then both endpoints moved toward the fused scopes only by
  function-preserving scales (each endpoint still computes what it computed; only where the spec's
  ``scaling:`` rules allow it).

Weight matching runs once per (A, B, spec, seed) even when several of these modes are asked for:
its result is kept in the run's ``ModeOptions.cache``, which lives only as long as the run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.interpolate.mode_base import ModeOptions
from wsa_cli.interpolate.plain_modes import prepare_wsa
from wsa_cli.permute.apply import apply_permutation
from wsa_cli.permute.matching import weight_matching
from wsa_cli.permute.rescale import function_preserving_rescale
from wsa_cli.permute.spec import shapes_of
from wsa_cli.permute.specfile import load_spec

StateDict = Mapping[str, torch.Tensor]


def _permuted_b(name: str, a: StateDict, b: StateDict, opts: ModeOptions) -> dict[str, torch.Tensor]:
    if opts.spec is None:
        raise InvalidValueError(f"mode '{name}' needs a permutation spec (a spec file or a built-in template such as digits-mlp)", option="spec")
    key = ("permuted", id(a), id(b), str(opts.spec), opts.seed)
    hit = opts.cache.get(key)
    if hit is not None and hit[0] is a and hit[1] is b:
        return hit[2]
    ref = dict(a.items())
    spec = load_spec(str(opts.spec), shapes=shapes_of(ref))
    other = dict(b.items())
    res = weight_matching(spec, ref, other, seed=opts.seed, device=opts.device)
    out = apply_permutation(spec, other, res.perms)
    opts.cache[key] = (a, b, out)  # the endpoints are kept alive with it, so their ids stay theirs
    return out


def prepare_permuted(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """A unchanged; B permuted into A's unit order."""
    return a, _permuted_b("permuted", a, b, opts)


def prepare_permuted_wsa(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """Permute B into A's order, then scope-align both endpoints as mode ``wsa`` does."""
    return prepare_wsa(a, _permuted_b("permuted+wsa", a, b, opts), opts)


def prepare_permuted_fp(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """Permute B into A's order, then function-preserving rescale of both toward their fused scopes."""
    from wsa_cli.fusion.pipeline import compute_target_scopes

    pb = _permuted_b("permuted+fp", a, b, opts)
    pa = dict(a.items())
    spec = load_spec(str(opts.spec), shapes=shapes_of(pa))
    table = compute_target_scopes([pa, pb], opts.scope, opts.device)
    targets = {k: target for k, (_scopes, target) in table.items()}
    fa, _ = function_preserving_rescale(spec, pa, targets, device=opts.device)
    fb, _ = function_preserving_rescale(spec, pb, targets, device=opts.device)
    return fa, fb
