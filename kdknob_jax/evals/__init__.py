"""Evaluation: sample a model on a task's records, grade, and report pass@k / maj@n / accuracy.

  from kdknob_jax.evals import evaluate, write_report, metrics_table
  result = evaluate(model.params, model.config, tok, get_task("gsm8k"), records, n=16)
  write_report(result, "out/eval", label="smollm2")
  print(metrics_table({"smollm2": result.metrics}))

The command line is `python -m kdknob_jax.evaluate`.
"""

from kdknob_jax.evals.metrics import (majority_vote, maj_at_n, mean_maj_at_n, mean_pass_at_k,
                                      pass_at_k, summarize)
from kdknob_jax.evals.report import (format_value, metric_columns, metrics_table, read_metrics,
                                     summary_markdown, write_report)
from kdknob_jax.evals.runner import (EvalResult, PromptResult, SampleResult, check_settings,
                                     evaluate)

__all__ = [
    "EvalResult",
    "PromptResult",
    "SampleResult",
    "check_settings",
    "evaluate",
    "format_value",
    "maj_at_n",
    "majority_vote",
    "mean_maj_at_n",
    "mean_pass_at_k",
    "metric_columns",
    "metrics_table",
    "pass_at_k",
    "read_metrics",
    "summarize",
    "summary_markdown",
    "write_report",
]
