"""Sweeps: a recipe's parameters over a grid, each point merged in memory and evaluated; best points and the Pareto front.

Example:
    >>> from wsa_cli.sweep import prepare_sweep, run_sweep
    >>> setup = prepare_sweep("recipes/ties.yaml", grid=["density=0.2,0.5"], evaluator="digits-mlp")  # doctest: +SKIP
    >>> run_sweep(setup).front  # doctest: +SKIP
"""

from wsa_cli.sweep.grid import Axis, grid_points, parse_grid, point_recipe
from wsa_cli.sweep.memory import MemoryMerger
from wsa_cli.sweep.pareto import best_index, default_direction, pareto_front
from wsa_cli.sweep.result import SweepResult
from wsa_cli.sweep.run import SweepSetup, prepare_sweep, run_sweep
from wsa_cli.sweep.write import write_points

__all__ = ["Axis", "MemoryMerger", "SweepResult", "SweepSetup", "best_index", "default_direction", "grid_points", "pareto_front",
           "parse_grid", "point_recipe", "prepare_sweep", "run_sweep", "write_points"]  # fmt: skip
