"""The end-to-end experiment (the paper's Table 2): calibrate a distillable and an undistillable
teacher, distil students from the original and the calibrated teachers, evaluate everything.

Stages, each in its own directory under the workdir and each resuming when rerun:
  student_base/                 the student's starting weights as an HF checkpoint, when it is
                                cut from a larger model
  teacher_{distillable,undistillable}/   calibration runs (λ = +|λ|, −|λ|) against
                                `config.target`, a proxy of the student (else the student)
  samples/<teacher>.parquet     teacher samples, shared by every student of that teacher
  student_<method>/             baselines: students of the original teacher
  improve_<method>/, misled_<method>/    students of the distillable / undistillable teacher
  eval/<row>/                   samples.json, metrics.json, summary.md of each model
  eval_<name>/<row>/            the same for each of `config.extra_evaluations`
  table.{md,json,png}           the table, the paper's claims checked, and a bar chart
  table_<name>.{md,json,png}    the table of each extra evaluation

Before anything runs, every evaluation's data is read and the vocabularies of teacher and
student are compared when a token-level method is configured, so a missing file or a
mismatched student fails in seconds, not after the calibrations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdknob_jax import distributed
from kdknob_jax import settings as settings_lib
from kdknob_jax.calibration import trainer as calibration
from kdknob_jax.distillation import trainer as distill
from kdknob_jax.experiments import table as table_lib
from kdknob_jax.errors import ConfigError
from kdknob_jax.experiments.pipeline_config import (CALIBRATED, EvaluationSettings,
                                                    PipelineConfig, calibration as
                                                    calibration_config, distillation, methods,
                                                    target_of, token_level)
from kdknob_jax.runs import resolve


def check_vocabularies(c: PipelineConfig) -> None:
  """Raises ConfigError when a token-level method would compare a teacher and a student whose
  output layers differ in rows (e.g. Gemma-3-12B's 262,208 against Gemma-3-1B's 262,144, which
  share a tokenizer). Reads the models' configs only (the variants table for the paper's)."""
  gkd = token_level(c)
  if not gkd:
    return
  from kdknob_jax.hf.load import config_of  # pylint: disable=g-import-not-at-top
  teacher = config_of(str(c.teacher)).vocab_size
  student = config_of(str(c.student)).vocab_size
  if teacher != student:
    raise ConfigError(
        f"The teacher {c.teacher} has {teacher:,} vocabulary rows and the student {c.student} "
        f"{student:,}, so the token-level methods {gkd} have no common vocabulary. Choose a "
        "student with the teacher's vocabulary (the paper pairs Gemma-3-12B with Gemma-3-4B), "
        "or keep only 'sft' in config.baselines and config.calibrated_methods.")


def check_data(c: PipelineConfig) -> None:
  """Reads every evaluation's rows once (fails on a missing or malformed file now, not after
  hours of training)."""
  for e in c.evaluations:
    try:
      e.load()
    except Exception as err:  # DataError, ConfigError, OSError: all name the file
      raise ConfigError(f"Evaluation {e.label!r} cannot read its data: {err}") from err


def export_model(spec: str, out: Path, keep: str = "") -> str:
  """`spec` (a model or a run's workdir) as an HF checkpoint in `out`, cut to `keep`'s layers,
  written once (the export's marker says it is complete); a model used whole and not a
  workdir is its own spec. Returns the spec to load."""
  if not keep and not resolve.is_workdir(spec):
    return spec
  marker = out / "kdknob_export.json"
  if marker.is_file() and json.loads(marker.read_text()).get("complete"):
    return str(out)
  from kdknob_jax.hf.save import save_pretrained  # pylint: disable=g-import-not-at-top
  if keep:
    model = resolve.load_student(spec, keep, "float32")
  else:
    model, _ = resolve.load_trained(spec, "float32", merge=True)
  if distributed.is_main():
    save_pretrained(model.params, model.config, model.hf_config, model.source, out)
  distributed.sync(f"export {out.name}")
  return str(out)


def prepare_student(c: PipelineConfig, workdir: Path) -> str:
  """The student's model spec: `config.student`, or its cut written once as an HF checkpoint."""
  keep = str(c.student_keep).strip()
  return export_model(str(c.student), workdir / "student_base", keep) if keep else str(c.student)


def _eval_settings(e: EvaluationSettings) -> dict:
  return json.loads(json.dumps(settings_lib.as_dict(e)))


def evaluation_on_disk(e: EvaluationSettings, spec: str, out: Path, dtype: str) -> bool:
  """Whether `out` holds an evaluation of `spec` with settings `e` (its samples included),
  whatever training step it was taken at: for a study that reads finished rows back from
  committed results, where the model's checkpoints are not at hand."""
  from kdknob_jax.evals.report import read_metrics  # pylint: disable=g-import-not-at-top
  if not ((out / "metrics.json").is_file() and (out / "samples.json").is_file()):
    return False
  saved = dict(read_metrics(out).get("config", {}).get("pipeline") or {})
  saved.pop("model_step", None)
  return saved == dict(_eval_settings(e), model=str(spec), dtype=dtype)


def evaluate_model(e: EvaluationSettings, spec: str, out: Path, label: str, progress: bool,
                   dtype: str, max_new_tokens: int) -> dict:
  """Evaluates one model (any spec `resolve.load_trained` takes) on `e` into `out`, or reads the
  result of an identical earlier evaluation; `max_new_tokens` applies when `e` sets none."""
  from kdknob_jax.evals import evaluate, write_report  # pylint: disable=g-import-not-at-top
  from kdknob_jax.evals.report import read_metrics  # pylint: disable=g-import-not-at-top
  settings = dict(_eval_settings(e), model=str(spec), model_step=resolve.workdir_step(spec),
                  dtype=dtype)
  if (out / "metrics.json").is_file():
    saved = read_metrics(out)
    if saved.get("config", {}).get("pipeline") == settings:
      return saved["metrics"]
  task, records = e.load()
  model, tok = resolve.load_trained(spec, dtype)
  ks = tuple(int(k) for k in str(e.ks).split(","))
  result = evaluate(model.params, model.config, tok, task, records, n=e.n, ks=ks,
                    max_new_tokens=e.max_new_tokens or max_new_tokens,
                    temperature=e.temperature, top_k=e.top_k, top_p=e.top_p, greedy=e.greedy,
                    chat=e.chat, seed=e.seed, prompts_per_call=e.prompts_per_call,
                    progress=progress)
  if distributed.is_main():
    write_report(result, out, label=label, extra={"pipeline": settings})
  return result.metrics


def run(c: PipelineConfig, workdir: str | Path, progress: bool = True) -> dict:
  """Runs (or resumes) every stage of a checked config (`pipeline_config.build`); returns
  {"table": markdown, "paths": {...}, "seconds", "claims"}."""
  t0 = time.perf_counter()
  wd = Path(workdir)
  check_vocabularies(c)
  check_data(c)
  wd.mkdir(parents=True, exist_ok=True)
  student = prepare_student(c, wd)
  target = target_of(c, student)
  teachers = {"original": str(c.teacher)}
  for name, lam in CALIBRATED.items():
    run_dir = wd / f"teacher_{name}"
    _say(progress, f"calibrating the {name} teacher (λ = {lam * c.lam:+g}, target {target}) "
         f"in {run_dir}")
    calibration.run(calibration_config(c, lam, target), run_dir, progress=progress)
    teachers[name] = str(run_dir)
  students = {}
  plan = [(f"student_{m}", "original", m) for m in methods(c.baselines)]
  for m in methods(c.calibrated_methods):
    plan += [(f"improve_{m}", "distillable", m), (f"misled_{m}", "undistillable", m)]
  for row, teacher, method in plan:
    run_dir = wd / row
    cache = str(wd / "samples" / f"{teacher}.parquet")
    _say(progress, f"distilling {row} ({method} from the {teacher} teacher) in {run_dir}")
    distill.run(distillation(c, method, teachers[teacher], student, cache), run_dir,
                progress=progress)
    students[row] = str(run_dir)
  models = {"teacher": teachers["original"], "teacher_distillable": teachers["distillable"],
            "teacher_undistillable": teachers["undistillable"], "student": student, **students}
  tables, paths = [], {}
  for i, e in enumerate(c.evaluations):
    suffix = "" if i == 0 else f"_{e.label}"
    results = {}
    for row, spec in models.items():
      _say(progress, f"evaluating {row} on {e.label}")
      results[row] = evaluate_model(e, spec, wd / f"eval{suffix}" / row, row, progress, c.dtype,
                                    c.distill.max_new_tokens)
    tab = table_lib.build(results, e, time.perf_counter() - t0)
    tables.append(tab)
    if distributed.is_main():
      paths.update({f"{k}{suffix}": v for k, v in table_lib.write(tab, wd, suffix).items()})
  return {"table": "\n".join(t["markdown"] for t in tables), "paths": paths,
          "seconds": time.perf_counter() - t0, "claims": tables[0]["claims"]}


def _say(progress: bool, message: str) -> None:
  if progress and distributed.is_main():
    print(f"[pipeline] {message}", flush=True)

