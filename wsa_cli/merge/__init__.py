"""Merging checkpoints: the method registry (built-ins in :mod:`wsa_cli.merge.methods`), the streaming merge plan and its executor.

Example:
    >>> from wsa_cli.merge import get_method
    >>> get_method("linear").summary.split(";")[0]
    'Weighted average sum(w_i theta_i) / sum(w_i)'
"""

from wsa_cli.merge.registry import (
    METHODS,
    BlockInputs,
    MergeMethod,
    MethodContext,
    Param,
    all_methods,
    builtin_methods,
    get_method,
    register_method,
)

__all__ = ["METHODS", "BlockInputs", "MergeMethod", "MethodContext", "Param", "all_methods", "builtin_methods", "get_method",
           "register_method"]  # fmt: skip
