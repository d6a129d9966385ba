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

from kdknob_jax import settings as settings_lib
from kdknob_jax import sharding as sharding_lib
from kdknob_jax.data import get_task, load_records
from kdknob_jax.decode.text import encode_prompts, generate_text
from kdknob_jax.diagnostics.report import tail_figure_data, write_all
from kdknob_jax.diagnostics.summary import table_row
from kdknob_jax.diagnostics.traps import score_sequences
from kdknob_jax.errors import ConfigError
from kdknob_jax.experiments.pilot_config import PilotConfig, sampling_of
from kdknob_jax.hf import load_config, load_model, load_tokenizer
from kdknob_jax.models.derive import first_layers

_PROBE = "The pilot checks 12,345 tokenizers: naïve café — ∑ ok?"


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


def run(config: PilotConfig, workdir: str | Path, progress: bool = True) -> dict[str, Path]:
  """Runs the pilot for a config (see `configs/pilot_*.py`) and writes its outputs.

  Args:
    config: a checked config (`pilot_config.build`).
    workdir: where the outputs go (created if needed).
    progress: show progress bars.

  Returns:
    The paths written: "markdown", "csv", "figure", "json".
  """
  workdir = Path(workdir)
  t_start = time.perf_counter()
  sampling = sampling_of(config)
  loaded = []
  for d in config.datasets:  # data is checked before any model loads
    records = load_records(d.source, d.split or None, d.limit or None, d.offset)
    task = get_task(d.task)
    task.check_records(records)
    loaded.append((d, records, task))
  mesh = sharding_lib.make_mesh(dict(config.mesh)) if config.mesh else None
  student, teacher, tokenizer = _load_pair(config, mesh)
  chat = config.chat
  key = jax.random.PRNGKey(config.seed)
  rows, panels, samples_out, timings = [], {}, [], {}
  # One unit per sampled or scored completion: both stages cost about the same per row.
  total = sum(4 * len(r) * config.rollouts for _, r, _ in loaded)
  bar = tqdm(total=total, desc="pilot", unit="seq", disable=not progress)
  for di, (d, records, task) in enumerate(loaded):
    name, max_new = d.name, int(d.max_new_tokens or config.max_new_tokens)
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
  extra = {"config": settings_lib.as_dict(config), "timings": timings, "samples": samples_out,
           "student": {"name": config.student, "layers": student.config.num_layers},
           "teacher": {"name": config.teacher, "layers": teacher.config.num_layers}}
  return write_all(workdir, rows, panels, extra)
