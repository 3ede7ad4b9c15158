"""``passthrough``: one model's tensors unchanged -- the method of a ``slices:`` frankenmerge.

A stage with one model (or a ``slices:`` stage whose slices have one source each, see
:mod:`wsa_cli.merge.slices`) is written as it is, layer keys renumbered. It takes exactly one
model, as in mergekit; with several models use ``copy`` (which picks one) or a merge method.
"""

from __future__ import annotations

from wsa_cli.merge.registry import MergeMethod


def _passthrough(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    return tensors[0].clone()


def _linear_form(weights, params, has_base):  # noqa: ANN001, ANN202
    return [1.0], 0.0


PASSTHROUGH = MergeMethod(
    name="passthrough",
    fn=_passthrough,
    summary="One model's tensors unchanged (with slices: a frankenmerge / depth up-scaling).",
    reference="mergekit (Goddard et al. 2024); SOLAR depth up-scaling (Kim et al. 2023)",
    min_models=1,
    max_models=1,
    linear_form=_linear_form,
)

METHODS = (PASSTHROUGH,)
