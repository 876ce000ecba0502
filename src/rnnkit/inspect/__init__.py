"""Looking inside models: parameter formulas, summaries, explanations."""

from rnnkit.inspect.params import ParamFormula, count_params, param_formula
from rnnkit.inspect.summary import summary

__all__ = ["ParamFormula", "count_params", "param_formula", "summary"]
