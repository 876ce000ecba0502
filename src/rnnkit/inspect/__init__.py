"""Looking inside models: parameter formulas, summaries, explanations."""

from rnnkit.inspect.gradients import GradientFlow, gradient_flow
from rnnkit.inspect.params import ParamFormula, count_params, param_formula
from rnnkit.inspect.summary import summary

__all__ = [
    "GradientFlow", "ParamFormula", "count_params", "gradient_flow", "param_formula", "summary",
]
