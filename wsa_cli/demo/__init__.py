"""The end-to-end demo behind ``wsa demo`` (train, inspect, merge, interpolate, explain).

Example:
    >>> from pathlib import Path
    >>> from wsa_cli.demo import DemoConfig, run_demo
    >>> result = run_demo(DemoConfig(out_dir=Path("wsa-demo"), quick=True))  # doctest: +SKIP
"""

from wsa_cli.demo.report import render_report, text_table
from wsa_cli.demo.runner import MODELS, PAIRS, DemoConfig, DemoResult, run_demo, total_steps

__all__ = ["MODELS", "PAIRS", "DemoConfig", "DemoResult", "render_report", "run_demo", "text_table", "total_steps"]
