"""The end-to-end experiment (the paper's Table 2): calibrate a distillable and an undistillable
teacher, distil students from the original and the calibrated teachers, evaluate everything.

Stages, each in its own directory under the workdir and each resuming when rerun:
  student_base/                 the student's starting weights as an HF checkpoint, when it is
                                cut from a larger model (it is then also the calibration target)
  teacher_{distillable,undistillable}/   calibration runs (λ = +|λ|, −|λ|; target = student)
  samples/<teacher>.parquet     teacher samples, shared by every student of that teacher
  student_<method>/             baselines: students of the original teacher
  improve_<method>/, misled_<method>/    students of the distillable / undistillable teacher
  eval/<row>/                   samples.json, metrics.json, summary.md of each model
  table.{md,json,png}           the table, the paper's claims checked, and a bar chart
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from kdknob_jax import distributed
from kdknob_jax.data import get_task, load_records
from kdknob_jax.errors import ConfigError
from kdknob_jax.trainers import calibration
from kdknob_jax.trainers import config as calib_config
from kdknob_jax.trainers import distill
from kdknob_jax.trainers import distill_config
from kdknob_jax.trainers import resolve
from kdknob_jax.trainers import table as table_lib

CALIBRATED = {"distillable": 1.0, "undistillable": -1.0}


def base_config():
  """The pipeline's settings: the models, one calibration and one distillation config that
  every run of the stage starts from, the methods, and the evaluation."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.teacher = ""
  c.student = ""
  c.student_keep = ""      # cut the student from `student` (see distill_config.parse_keep)
  c.dtype = "bfloat16"
  c.lam = 1.0              # |λ| of the calibrated teachers
  c.calibrate = calib_config.base_config()   # teacher, target and lam are set per run
  c.distill = distill_config.base_config()   # teacher, student and method are set per run
  c.baselines = "sft,gkd_fkl,gkd_rkl"        # students of the original teacher
  c.calibrated_methods = "sft,gkd_fkl,gkd_rkl"  # improve / misled students
  c.evaluation = ml_collections.ConfigDict(dict(
      task="gsm8k", source="gsm8k/test.jsonl", split="", offset=0, limit=0, n=16, ks="1,16",
      max_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0, greedy=True, chat=True, seed=0,
      prompts_per_call=32))
  return c


def _methods(spec: str) -> list[str]:
  out = [m.strip() for m in str(spec).split(",") if m.strip()]
  bad = [m for m in out if m not in distill_config.METHODS]
  if bad:
    raise ConfigError(f"Unknown distillation methods {bad}; use {distill_config.METHODS}.")
  return out


def check(c) -> None:
  """Checks the pipeline's config and every run config it will make, before any model loads."""
  if not c.teacher or not c.student:
    raise ConfigError("config.teacher and config.student must both name a model.")
  if c.lam <= 0:
    raise ConfigError(f"config.lam is |λ| and must be > 0, got {c.lam}.")
  if not _methods(c.baselines):
    raise ConfigError("config.baselines lists no method; name at least one of "
                      f"{distill_config.METHODS}.")
  _methods(c.calibrated_methods)
  for lam in CALIBRATED.values():
    calib_config.check(_calibration(c, lam, "student"))
  for method in distill_config.METHODS:
    distill_config.check(_distill(c, method, "teacher", "student", "cache"))
  e = c.evaluation
  if e.n < 1 or any(int(k) > e.n for k in str(e.ks).split(",")):
    raise ConfigError(f"config.evaluation: n = {e.n} must be >= 1 and >= every k in {e.ks}.")


def _calibration(c, lam: float, target: str):
  cfg = copy.deepcopy(c.calibrate)
  cfg.teacher, cfg.target, cfg.lam, cfg.dtype = c.teacher, target, lam * c.lam, c.dtype
  return cfg


def _distill(c, method: str, teacher: str, student: str, cache: str):
  cfg = copy.deepcopy(c.distill)
  cfg.teacher, cfg.student, cfg.method, cfg.dtype = teacher, student, method, c.dtype
  cfg.student_keep, cfg.samples_cache = "", cache
  return cfg


def prepare_student(c, workdir: Path) -> str:
  """The student's model spec: `config.student`, or its cut written once as an HF checkpoint."""
  if not str(c.student_keep).strip():
    return str(c.student)
  out = workdir / "student_base"
  marker = out / "kdknob_export.json"
  if marker.is_file() and json.loads(marker.read_text()).get("complete"):
    return str(out)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf.save import save_pretrained  # pylint: disable=g-import-not-at-top
  spec = ml_collections.ConfigDict(dict(student=c.student, student_keep=c.student_keep,
                                        dtype="float32"))
  model = distill.load_student(spec)
  if distributed.is_main():
    save_pretrained(model.params, model.config, model.hf_config, model.source, out)
  distributed.sync("student_base")
  return str(out)


def _eval_settings(c) -> dict:
  return json.loads(json.dumps(c.evaluation.to_dict()))


def evaluate_model(c, spec: str, out: Path, label: str, progress: bool) -> dict:
  """Evaluates one model into `out`, or reads the result of an identical earlier evaluation."""
  from kdknob_jax.evals import evaluate, write_report  # pylint: disable=g-import-not-at-top
  from kdknob_jax.evals.report import read_metrics  # pylint: disable=g-import-not-at-top
  settings = dict(_eval_settings(c), model=str(spec), model_step=resolve.workdir_step(spec),
                  dtype=c.dtype)
  if (out / "metrics.json").is_file():
    saved = read_metrics(out)
    if saved.get("config", {}).get("pipeline") == settings:
      return saved["metrics"]
  e = c.evaluation
  task = get_task(e.task)
  records = load_records(e.source, e.split or None, e.limit or None, e.offset)
  task.check_records(records, e.offset)
  model, tok = resolve.load_trained(spec, c.dtype)
  ks = tuple(int(k) for k in str(e.ks).split(","))
  result = evaluate(model.params, model.config, tok, task, records, n=e.n, ks=ks,
                    max_new_tokens=e.max_new_tokens or c.distill.max_new_tokens,
                    temperature=e.temperature, top_k=e.top_k, top_p=e.top_p, greedy=e.greedy,
                    chat=e.chat, seed=e.seed, prompts_per_call=e.prompts_per_call,
                    progress=progress)
  if distributed.is_main():
    write_report(result, out, label=label, extra={"pipeline": settings})
  return result.metrics


def run(c, workdir: str | Path, progress: bool = True) -> dict:
  """Runs (or resumes) every stage; returns {"table": markdown, "paths": {...}, "seconds"}."""
  t0 = time.perf_counter()
  check(c)
  wd = Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  student = prepare_student(c, wd)
  teachers = {"original": str(c.teacher)}
  for name, lam in CALIBRATED.items():
    run_dir = wd / f"teacher_{name}"
    _say(progress, f"calibrating the {name} teacher (λ = {lam * c.lam:+g}) in {run_dir}")
    calibration.run(_calibration(c, lam, student), run_dir, progress=progress)
    teachers[name] = str(run_dir)
  students = {}
  plan = [(f"student_{m}", "original", m) for m in _methods(c.baselines)]
  for m in _methods(c.calibrated_methods):
    plan += [(f"improve_{m}", "distillable", m), (f"misled_{m}", "undistillable", m)]
  for row, teacher, method in plan:
    run_dir = wd / row
    cache = str(wd / "samples" / f"{teacher}.parquet")
    _say(progress, f"distilling {row} ({method} from the {teacher} teacher) in {run_dir}")
    distill.run(_distill(c, method, teachers[teacher], student, cache), run_dir,
                progress=progress)
    students[row] = str(run_dir)
  models = {"teacher": teachers["original"], "teacher_distillable": teachers["distillable"],
            "teacher_undistillable": teachers["undistillable"], "student": student, **students}
  results = {}
  for row, spec in models.items():
    _say(progress, f"evaluating {row}")
    results[row] = evaluate_model(c, spec, wd / "eval" / row, row, progress)
  tab = table_lib.build(results, c, time.perf_counter() - t0)
  paths = table_lib.write(tab, wd) if distributed.is_main() else {}
  return {"table": tab["markdown"], "paths": paths, "seconds": time.perf_counter() - t0,
          "claims": tab["claims"]}


def _say(progress: bool, message: str) -> None:
  if progress and distributed.is_main():
    print(f"[pipeline] {message}", flush=True)

