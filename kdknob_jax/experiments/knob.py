"""The knob study (issue 16): does calibration move distillability, in both directions, beyond
what the same RL without the calibration reward (λ = 0) does?

Stages, each resuming when rerun, in the order that gives the claims their figures soonest:
  teacher_sft/                 stage 0: the base model fine-tuned on the task (the original
                               teacher), exported with its student and target cuts to models/
  calib/<lam>_s<seed>/         calibrations of the original teacher against the proxy target
  calib/xtok_<lam>_s<seed>/    one calibration against a target with another tokenizer
  samples/<teacher>.parquet    each teacher's samples, shared by its SFT students
  students/<method>.<teacher>/ students; "attack" is SFT on the verified-correct samples only
  eval/<row>/                  every model's held-out evaluation (Table 2)
  traps/<row>.json             each teacher's scores of the base student's samples (Table 4)
  stages.json                  every planned row, whether done, and each stage's wall time
  report.md, knob.json, frontier.png, curves.png   (`knob_report.write`), after every seed

A seed's calibrations, SFT students and evaluations all finish before the next seed starts,
and the GKD students (the costliest) of a seed in `gkd_seeds` follow it; the cross-tokenizer
calibration comes last. The report is rewritten after each of these, so a study stopped early
still reports what finished.

Models are made only when a stage needs them (`Model`): a stage whose results are on disk for
the same settings is skipped without loading its model, so a study can be completed on
another day from its committed results (`knob_export`) without retraining what finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdknob_jax import distributed
from kdknob_jax.calibration import trainer as calibration
from kdknob_jax.distillation import trainer as distill
from kdknob_jax.distillation.samples import correct_indices
from kdknob_jax.errors import ConfigError
from kdknob_jax.experiments import knob_traps
from kdknob_jax.experiments.knob_config import (KnobConfig, calibration as calibration_config,
                                                lam_name, model_spec, student_run,
                                                teacher_stage)
from kdknob_jax.experiments.pipeline import evaluate_model, evaluation_on_disk, export_model
from kdknob_jax.runs import resolve
from kdknob_jax.runs.checkpoints import identity_diff, read_identity


class Model:
  """A model the study may need: its spec, known before it exists, and how to make it.

  Calling it makes the model (trains its run, exports its cut) the first time and returns the
  spec. A stage whose outputs are already on disk, from this workdir or from committed results
  copied into it, never calls it, so a study completed later does not retrain what finished.

  Attributes:
    spec: the model spec (a path or a model name).
    run_dir, config: the run that makes it, whose run.json must hold `config`'s identity for
      results on disk to count as this model's; None for a model that is not trained here.
  """

  def __init__(self, spec: str, make=None, run_dir: Path | None = None, config=None):
    self.spec, self._make, self.run_dir, self.config = str(spec), make, run_dir, config
    self._made = make is None

  def __call__(self) -> str:
    if not self._made:
      self._make()
      self._made = True
    return self.spec

  def current(self) -> bool:
    """Whether results on disk can be this model's: its run was started with `config`."""
    return self.run_dir is None or _same_settings(self.run_dir, self.config)


def _same_settings(run_dir: Path, config) -> bool:
  """Whether `run_dir` holds a run started with `config`'s settings (False: no run there)."""
  if not (Path(run_dir) / "run.json").is_file():
    return False
  return not identity_diff(read_identity(run_dir), config.identity())


class Study:
  """The study's bookkeeping: planned rows, their state and the stages' wall times
  (`stages.json`, rewritten after every stage)."""

  def __init__(self, c: KnobConfig, workdir: Path, progress: bool):
    self.c, self.wd, self.progress = c, workdir, progress
    self.path = workdir / "stages.json"
    saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
    self.rows: dict[str, dict] = saved.get("rows", {})
    self.seconds: dict[str, float] = saved.get("seconds", {})
    self.student: Model | None = None  # the base student, set by `run`

  def plan(self, row: str, group: str, method: str, seed: int | None, lam: float | None,
           cross: bool = False) -> None:
    kind = "teacher" if row.startswith("teacher.") else "student"
    self.rows[row] = dict(self.rows.get(row, {}), kind=kind, group=group, method=method,
                          seed=seed, lam=lam, cross=cross)
    self.rows[row].setdefault("done", False)

  def stage(self, name: str, fn, *args, **kwargs):
    """Runs one stage (a no-op when its outputs exist), timing it."""
    _say(self.progress, name)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
    self.save()
    return out

  def save(self) -> None:
    if distributed.is_main():
      tmp = self.path.with_name("stages.json.tmp")
      tmp.write_text(json.dumps({"rows": self.rows, "seconds": self.seconds}, indent=1))
      tmp.replace(self.path)

  def evaluated(self, row: str, model: Model) -> bool:
    """Whether `row` has this model's evaluation on disk (see `Model`)."""
    return model.current() and evaluation_on_disk(self.c.evaluation, model.spec,
                                                  self.wd / "eval" / row, "float32")

  def evaluate(self, row: str, model: Model) -> None:
    e = self.c.evaluation
    if not self.evaluated(row, model):
      self.stage(f"eval {row}", evaluate_model, e, model(), self.wd / "eval" / row, row,
                 self.progress, "float32", e.max_new_tokens)
    self.rows[row]["done"] = True
    self.save()

  def traps(self, row: str, model: Model) -> None:
    c, traps = self.c, self.wd / "traps"
    if model.current() and (traps / f"{row}.json").is_file():
      return
    samples = self.stage("traps: student samples", knob_traps.student_samples,
                         self.student(), c.evaluation, c.trap_questions, c.trap_rollouts,
                         traps, self.progress)
    self.stage(f"traps {row}", knob_traps.score_teacher, self.student(), model(), samples,
               c.evaluation, traps / f"{row}.json")


def train(s: Study, name: str, fn, config, run_dir: Path) -> None:
  """A calibration or distillation stage; one whose workdir already holds its last step under
  the same settings is not reloaded (resuming a study skips its finished runs in seconds)."""
  if resolve.workdir_step(run_dir) == config.steps and _same_settings(run_dir, config):
    return
  s.stage(name, fn, config, run_dir, progress=s.progress)


def _trained(s: Study, name: str, fn, config, run_dir: Path, needs: tuple[Model, ...]) -> Model:
  """The model of a calibration or distillation run, trained when first needed."""
  def make():
    for model in needs:
      model()
    train(s, name, fn, config, run_dir)
  return Model(str(run_dir), make, run_dir, config)


def _exported(spec: Model, out: Path, keep: str) -> Model:
  """`spec` as `export_model` writes it to `out` (cut to `keep`), exported when first needed;
  results on disk count as its own when they count as `spec`'s."""
  if not keep and not (spec.run_dir is not None or resolve.is_workdir(spec.spec)):
    return spec  # a model used whole is its own spec
  return Model(str(out), lambda: export_model(spec(), out, keep), spec.run_dir, spec.config)


def _named(name: str, base: str, teacher: Model) -> Model:
  """A student or target of the config ("base", "teacher" or a model spec) as a `Model`."""
  spec = model_spec(name, base, teacher.spec)
  return teacher if spec == teacher.spec else Model(spec)


def _students(s: Study, teacher_row: str, teacher: Model, group: str, seed: int | None,
              lam: float | None, methods: list[str], attacker: bool) -> None:
  """The students of one teacher, each evaluated after it trains."""
  c, wd = s.c, s.wd
  name = teacher_row.split(".", 1)[1]
  cache = wd / "samples" / f"{name}.parquet"
  runs = [(m, m, False) for m in methods] + ([("attack", "sft", True)] if attacker else [])
  for label, method, filtered in runs:
    row = f"{label}.{name}"
    s.plan(row, group, label, seed, lam)
    run_dir = wd / "students" / row
    config = student_run(c, teacher.spec, s.student.spec, method, str(cache), filtered)
    model = _trained(s, f"student {row}", distill.run, config, run_dir, (teacher, s.student))
    if filtered and not s.evaluated(row, model):
      # Recorded in stages.json, the finding holds without the samples (not exported).
      known = s.rows[row].get("skipped") and teacher.current() and not cache.is_file()
      if known or (cache.is_file() and not _has_correct(str(cache), c)):
        s.rows[row]["skipped"] = "none of the teacher's samples is correct"
        s.save()
        continue
    s.evaluate(row, model)


def _has_correct(cache: str, c: KnobConfig) -> bool:
  """Whether the teacher samples in `cache` hold a verified-correct one (else a filtering
  attacker has nothing to learn from)."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  texts = pq.read_table(cache, columns=["text"]).column("text").to_pylist()
  return correct_indices(texts, *c.distill.train.load()).size > 0


def _calibrated(s: Study, teacher: Model, lam: float, seed: int, target: Model, cross: bool,
                traps: bool = True) -> tuple[str, Model]:
  """Calibrates one teacher, evaluates it and measures its traps; (row, the model)."""
  name = f"{'xtok_' if cross else ''}{lam_name(lam)}_s{seed}"
  row, run_dir = f"teacher.{name}", s.wd / "calib" / name
  group = f"{'xtok_' if cross else ''}{lam_name(lam)}"
  s.plan(row, group, "none", seed, lam, cross)
  config = calibration_config(s.c, teacher.spec, target.spec, lam, seed, cross)
  model = _trained(s, f"calibrate {name} (target {target.spec})", calibration.run, config,
                   run_dir, (teacher, target))
  s.evaluate(row, model)
  if traps:
    s.traps(row, model)
  return row, model


def run(c: KnobConfig, workdir: str | Path, progress: bool = True) -> dict:
  """Runs (or resumes) every stage of a checked config (`knob_config.build`).

  Returns:
    {"paths": the report's files, "seconds": this invocation's wall time, "rows": the plan}.
  """
  t0 = time.perf_counter()
  wd = Path(workdir)
  for data in (c.evaluation, c.teacher_sft.train, c.calibrate.train, c.distill.train):
    try:
      data.load()
    except Exception as err:  # DataError, ConfigError, OSError: each names the file
      raise ConfigError(f"The knob study cannot read its data: {err}") from err
  wd.mkdir(parents=True, exist_ok=True)
  s = Study(c, wd, progress)
  methods = [m.strip() for m in str(c.student_methods).split(",") if m.strip()]

  tuned = _trained(s, "teacher: SFT on the task", distill.run, teacher_stage(c),
                   wd / "teacher_sft", ())
  teacher = _exported(tuned, wd / "models" / "teacher", "")
  s.student = _exported(_named(c.student, c.base, teacher), wd / "models" / "student",
                        c.student_keep)
  target = _exported(_named(c.target, c.base, teacher), wd / "models" / "target",
                     c.target_keep)
  s.plan("teacher.original", "original", "none", None, None)
  s.evaluate("teacher.original", teacher)
  if c.demo:
    return _demo(s, teacher, target, t0)
  s.plan("student.base", "base", "none", None, None)
  s.evaluate("student.base", s.student)
  s.traps("teacher.original", teacher)
  _students(s, "teacher.original", teacher, "original", None, None, ["sft"], False)
  report = lambda: write_report(wd, c)
  paths = report()
  # λ = 0 first: the control every calibrated teacher is compared with.
  lams = sorted(c.lam_values, key=lambda x: (x != 0, x > 0))
  gkd = [m for m in methods if m != "sft"]
  gkd_lams = [lam for lam in lams if lam in c.gkd_lam_values]
  first_gkd_seed = next((x for x in c.seed_values if x in c.gkd_seed_values), None)
  calibrated = {}
  for seed in c.seed_values:
    for lam in lams:
      row, model = _calibrated(s, teacher, lam, seed, target, cross=False)
      calibrated[row] = model
      _students(s, row, model, lam_name(lam), seed, lam, ["sft"], c.attacker and lam < 0)
    paths = report()
    if gkd and seed in c.gkd_seed_values:
      # The GKD students (the costliest) of this seed's teachers come before the next seed:
      # claim (c) compares them with the original teacher's, the baselines.
      if seed == first_gkd_seed:
        _students(s, "teacher.original", teacher, "original", None, None, gkd, False)
      for lam in gkd_lams:
        row = f"teacher.{lam_name(lam)}_s{seed}"
        _students(s, row, calibrated[row], lam_name(lam), seed, lam, gkd, False)
      paths = report()
  if str(c.cross_target).strip():
    seed = c.seed_values[0]
    row, model = _calibrated(s, teacher, c.cross_lam, seed, Model(str(c.cross_target)),
                             cross=True)
    _students(s, row, model, f"xtok_{lam_name(c.cross_lam)}", seed, c.cross_lam, ["sft"],
              False)
    paths = report()
  return {"paths": paths, "seconds": time.perf_counter() - t0, "rows": s.rows}


def _demo(s: Study, teacher: Model, target: Model, t0: float) -> dict:
  """The demo's calibrations (first seed, λ ≠ 0) and their before/after summaries."""
  from kdknob_jax.experiments.knob_summary import before_after  # pylint: disable=g-import-not-at-top
  summaries = []
  for lam in (x for x in s.c.lam_values if x != 0):
    row, _ = _calibrated(s, teacher, lam, s.c.seed_values[0], target, cross=False, traps=False)
    summaries.append(before_after(s.wd, row))
  return {"paths": {}, "seconds": time.perf_counter() - t0, "rows": s.rows,
          "summary": "\n\n".join(summaries)}


def write_report(wd: Path, c: KnobConfig) -> dict:
  """The report of what has run so far (`knob_report.write`), from the main process."""
  if not distributed.is_main():
    return {}
  from kdknob_jax.experiments import knob_report  # pylint: disable=g-import-not-at-top
  return knob_report.write(wd, draws=c.bootstrap)


def _say(progress: bool, message: str) -> None:
  if progress and distributed.is_main():
    print(f"[knob] {message}", flush=True)
