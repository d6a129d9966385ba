"""The pilot study: where does the divergence between a student and a teacher come from?

  python -m kdknob_jax.pilot --config configs/pilot_embedded.py [--workdir DIR]
      [--config.rollouts=4 ...]

For each dataset of the config, both models sample `rollouts` completions per prompt (T = 1.0,
no top-k/top-p by default), the task's verifier grades them, and every completion is scored
under both models token by token. Written to the workdir: `table1.md` / `table1.csv` (the
paper's Table 1: token and sequence RKL on and off policy, the wrong-trace preference),
`figure2_tail.png` (per-vocabulary KL against frequency for several top-k), and `pilot.json`
with every number behind them plus each sample's text and scores.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
import jax
from tqdm.auto import tqdm

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.data import get_task, load_records
from kdknob_jax.decode import SamplingConfig
from kdknob_jax.decode.text import encode_prompts, generate_text
from kdknob_jax.diagnostics.report import tail_figure_data, write_all
from kdknob_jax.diagnostics.summary import table_row
from kdknob_jax.diagnostics.traps import score_sequences
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf import load_config, load_model, load_tokenizer
from kdknob_jax.models.derive import first_layers

_PROBE = "The pilot checks 12,345 tokenizers: naïve café — ∑ ok?"


def base_config():
  """The pilot's defaults (the paper's sampling: 16 rollouts, T = 1.0, no top-k / top-p).
  Configs in `configs/pilot_*.py` start from this and set the pair and the datasets."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.teacher = ""
  c.student = ""
  c.student_layers = 0  # >0 derives the student from the first layers of `student`
  c.dtype = "float32"
  c.datasets = []  # dicts: name, task, source (+ split, offset, limit, max_new_tokens)
  c.rollouts = 16
  c.temperature = 1.0
  c.top_k = 0
  c.top_p = 1.0
  c.max_new_tokens = 512  # for datasets that do not set their own
  c.top_ks = (1, 10, 100, 1000)  # the full vocabulary is always added
  c.seed = 0
  c.chat = True
  c.prompts_per_call = 4
  c.score_rows = 32
  c.mesh = {}  # e.g. {"fsdp": -1} or {"data": 2, "tensor": 4}
  return c


def paper_config(student: str, teacher: str, arg: str | None = None):
  """A pilot of one of the paper's pairs on GSM8K and CommonsenseQA, bfloat16, FSDP over every
  device (8×H100 or a TPU slice); `arg="smoke"` shrinks it to 2 prompts × 2 rollouts."""
  c = base_config()
  c.student, c.teacher = student, teacher
  c.dtype = "bfloat16"
  c.datasets = [
      dict(name="gsm8k", task="gsm8k", source="gsm8k/test.jsonl", offset=0, limit=256,
           max_new_tokens=1024),
      dict(name="commonsenseqa", task="commonsenseqa", source="commonsenseqa/sample200.jsonl",
           offset=0, limit=200, max_new_tokens=512),
  ]
  c.prompts_per_call = 16
  c.score_rows = 64
  c.mesh = {"fsdp": -1}
  return apply_arg(c, arg, smoke_tokens=16)


def apply_arg(c, arg: str | None, smoke_tokens: int):
  """A config file's `:arg`: "smoke" shrinks every dataset to 2 prompts × 2 rollouts of
  `smoke_tokens` tokens; None keeps the config; anything else is an error."""
  if arg == "smoke":
    for d in c.datasets:
      d.update(limit=2, max_new_tokens=smoke_tokens)
    c.rollouts = 2
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'smoke'.")
  return c


def _load_pair(config, mesh):
  """(student, teacher) as LoadedModel, and the shared tokenizer. The tokenizers and configs
  are compared before any weights load."""
  tokenizer = load_tokenizer(config.teacher)
  same = config.student == config.teacher
  if not same:
    other = load_tokenizer(config.student)
    if (other.vocab_size != tokenizer.vocab_size or other.encode(_PROBE) != tokenizer.encode(_PROBE)
        or load_config(config.student).vocab_size != load_config(config.teacher).vocab_size):
      raise ConfigError(
          f"The pilot's token-level metrics need one tokenizer, but {config.student!r} and "
          f"{config.teacher!r} tokenize differently. Pick a pair from one family, or derive the "
          "student from the teacher with config.student_layers.")
  teacher = load_model(config.teacher, dtype=config.dtype, mesh=mesh)
  student = teacher if same else load_model(config.student, dtype=config.dtype, mesh=mesh)
  if config.student_layers:
    params, cfg = first_layers(student.params, student.config, int(config.student_layers))
    student = dataclasses.replace(student, params=params, config=cfg)
  return student, teacher, tokenizer


def _check_config(config) -> None:
  if config.rollouts < 2:
    raise ConfigError(f"config.rollouts must be at least 2 (got {config.rollouts}): the "
                      "wrong-trace preference compares samples of one prompt.")
  if not config.datasets:
    raise ConfigError("config.datasets is empty; add at least one dataset entry.")
  for i, d in enumerate(config.datasets):
    missing = {"name", "task", "source"} - set(d)
    if missing:
      raise ConfigError(f"config.datasets[{i}] lacks {sorted(missing)}; each entry needs name, "
                        "task and source (plus optional split, offset, limit, max_new_tokens).")


def run(config, workdir: str | Path, progress: bool = True) -> dict[str, Path]:
  """Runs the pilot for a config (see `configs/pilot_*.py`) and writes its outputs.

  Args:
    config: an ml_collections ConfigDict from one of the pilot configs.
    workdir: where the outputs go (created if needed).
    progress: show progress bars.

  Returns:
    The paths written: "markdown", "csv", "figure", "json".
  """
  _check_config(config)
  workdir = Path(workdir)
  t_start = time.perf_counter()
  try:
    sampling = SamplingConfig(config.temperature, top_k=config.get("top_k", 0),
                              top_p=config.get("top_p", 1.0))
  except ValueError as e:
    raise ConfigError(f"config.temperature / top_k / top_p: {e}") from e
  loaded = []
  for d in (dict(d) for d in config.datasets):  # data is checked before any model loads
    records = load_records(d["source"], d.get("split"), d.get("limit"), d.get("offset", 0))
    task = get_task(d["task"])
    task.check_records(records)
    loaded.append((d, records, task))
  mesh = sharding_lib.make_mesh(dict(config.mesh)) if config.get("mesh") else None
  student, teacher, tokenizer = _load_pair(config, mesh)
  chat = config.get("chat")
  key = jax.random.PRNGKey(config.seed)
  rows, panels, samples_out, timings = [], {}, [], {}
  # One unit per sampled or scored completion: both stages cost about the same per row.
  total = sum(4 * len(r) * config.rollouts for _, r, _ in loaded)
  bar = tqdm(total=total, desc="pilot", unit="seq", disable=not progress)
  for di, (d, records, task) in enumerate(loaded):
    name, max_new = d["name"], int(d.get("max_new_tokens", config.max_new_tokens))
    prompts = [task.prompt(r) for r in records]
    ids = encode_prompts(tokenizer, prompts, chat)
    sides = {}
    for si, (side, model) in enumerate((("student", student), ("teacher", teacher))):
      bar.set_postfix_str(f"{name}: {side} samples")
      t0 = time.perf_counter()
      out = generate_text(model, tokenizer, prompts, n=config.rollouts, max_new_tokens=max_new,
                          sampling=sampling, key=jax.random.fold_in(key, 2 * di + si), chat=chat,
                          prompts_per_call=config.prompts_per_call, mesh=mesh, progress=False)
      timings[f"{name}/{side}/sample_s"] = time.perf_counter() - t0
      bar.update(len(prompts) * config.rollouts)
      flat = [s for per_prompt in out for s in per_prompt]
      correct = [task.is_correct(s.text, records[s.prompt_index]) for s in flat]
      sides[side] = (flat, correct)
    scores = {}
    for side, direction in (("student", "rkl"), ("teacher", "fkl")):
      bar.set_postfix_str(f"{name}: scoring {side} samples")
      t0 = time.perf_counter()
      flat, _ = sides[side]
      scores[side] = score_sequences(
          (student.params, student.config), (teacher.params, teacher.config),
          [(ids[s.prompt_index], s.tokens) for s in flat], ks=tuple(config.top_ks),
          direction=direction, rows_per_call=config.score_rows, progress=bar.update)
      timings[f"{name}/{side}/score_s"] = time.perf_counter() - t0
    (s_flat, s_correct), (t_flat, t_correct) = sides["student"], sides["teacher"]
    rows.append(table_row(name, scores["student"], scores["teacher"], s_correct, t_correct,
                          [s.prompt_index for s in s_flat], [s.prompt_index for s in t_flat],
                          len(records), config.rollouts))
    panels[f"{name} RKL, student samples"] = tail_figure_data(scores["student"])
    panels[f"{name} FKL, teacher samples"] = tail_figure_data(scores["teacher"])
    for side in ("student", "teacher"):
      flat, correct = sides[side]
      sc = scores[side]
      for i, (s, ok) in enumerate(zip(flat, correct)):
        samples_out.append({
            "dataset": name, "sampler": side, "prompt_index": s.prompt_index,
            "sample_index": s.sample_index, "text": s.text, "correct": bool(ok),
            "answer": task.extract(s.text), "reference": task.reference(records[s.prompt_index]),
            "tokens": len(s.tokens), "stopped": s.stopped,
            "logp_student": float(sc.logp_student[i]), "logp_teacher": float(sc.logp_teacher[i]),
            "token_rkl_sum": float(sc.rkl[i]), "token_fkl_sum": float(sc.fkl[i])})
  bar.close()
  timings["total_s"] = time.perf_counter() - t_start
  extra = {"config": config.to_dict(), "timings": timings, "samples": samples_out,
           "student": {"name": config.student, "layers": student.config.num_layers},
           "teacher": {"name": config.teacher, "layers": teacher.config.num_layers}}
  return write_all(workdir, rows, panels, extra)


def _report(paths: dict, config, workdir: str) -> None:
  del config, workdir
  print((Path(paths["markdown"]).read_text(encoding="utf-8")))
  for what, path in paths.items():
    print(f"{what}: {path}")


if __name__ == "__main__":
  from kdknob_jax import cli  # pylint: disable=g-import-not-at-top
  cli.config_command("A pilot config file (configs/pilot_*.py).", run, _report,
                     distributed_start=False)
