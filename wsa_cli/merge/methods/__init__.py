"""The built-in merge methods, one family per module.

Each module lists its methods as values in a ``METHODS`` tuple (no registration side effect);
:mod:`wsa_cli.merge.registry` collects every module of this package, in sorted order. Adding a
built-in method is adding one module here (with its test and its row in ``docs/methods.md``).
"""
