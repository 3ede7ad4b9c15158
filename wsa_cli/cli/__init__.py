"""The ``wsa`` command line: a thin layer over the library (one ``*_cmd.py`` per command)."""
