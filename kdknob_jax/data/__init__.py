"""Evaluation data: loading rows (records) and prompting for, and grading, answers (tasks).

A leaf package: it imports neither jax nor torch, and `datasets` / `pyarrow` only when a
source needs them.

  rows = load_records("gsm8k/test.jsonl", limit=100)
  task = get_task("gsm8k")
  task.check_records(rows)
  messages = [task.prompt(r) for r in rows]
  accuracy = sum(task.is_correct(c, r) for c, r in zip(completions, rows)) / len(rows)
"""

from kdknob_jax.data.records import data_root, load_records
from kdknob_jax.data.tasks import (TASKS, Task, commonsenseqa, get_task, gsm8k, multiple_choice,
                                   normalize_number)
from kdknob_jax.errors import DataError

__all__ = [
    "DataError",
    "TASKS",
    "Task",
    "commonsenseqa",
    "data_root",
    "get_task",
    "gsm8k",
    "load_records",
    "multiple_choice",
    "normalize_number",
]
