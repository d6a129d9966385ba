"""The cross-tokenizer calibration (λ = -1, seed 0, target Gemma-3-270M) against the seed-0
runs of the same λ with the same-vocabulary target and of the λ = 0 control: paired bootstrap
over questions (one seed, so no seed resampling), with the report's own functions.

  .venv/bin/python results/knob_arith/cross_seed0.py   # writes cross_seed0.json beside it
"""

import json
from pathlib import Path

import numpy as np

from kdknob_jax.experiments import knob_report as kr

HERE = Path(__file__).resolve().parent


def _accuracy(name):
  index, correct, majority = kr.eval_arrays(json.loads((HERE / "eval" / name / "samples.json")
                                                       .read_text()))
  return index, kr.per_question_metrics(correct, majority)


def _traps(name):
  return kr.trap_arrays(json.loads((HERE / "traps" / f"teacher.{name}.json").read_text()))


def main():
  rng = np.random.default_rng(0)
  token_rkl = lambda v: float(kr.trap_stat(v)[0])
  wrong_trace = lambda v: float(kr.trap_stat(v)[2])
  out = {}
  for kind in ("teacher", "sft"):
    for other in ("lam0_s0", "lam-1_s0"):
      (ia, va), (ib, vb) = _accuracy(f"{kind}.xtok_lam-1_s0"), _accuracy(f"{kind}.{other}")
      assert (ia == ib).all(), "the two evaluations must grade the same questions"
      e, lo, hi = kr.bootstrap_diff([va], [vb], kr.accuracy_stat, 2000, rng)
      out[f"{kind}: xtok_lam-1_s0 - {other}, accuracy points"] = [
          round(100 * x, 1) for x in (e, lo, hi)]
  e, lo, hi = kr.bootstrap_ratio([_accuracy("teacher.xtok_lam-1_s0")[1]],
                                 [_accuracy("teacher.lam0_s0")[1]], kr.accuracy_stat, 2000, rng)
  out["teacher: xtok_lam-1_s0 / lam0_s0, accuracy"] = [round(x, 3) for x in (e, lo, hi)]
  for other in ("lam0_s0", "lam-1_s0"):
    (ia, va), (ib, vb) = _traps("xtok_lam-1_s0"), _traps(other)
    assert (ia == ib).all(), "the two trap files must score the same questions"
    for name, stat in (("token RKL", token_rkl), ("wrong-trace preference", wrong_trace)):
      e, lo, hi = kr.bootstrap_diff([va], [vb], stat, 2000, rng)
      out[f"traps: xtok_lam-1_s0 - {other}, {name}"] = [round(x, 4) for x in (e, lo, hi)]
  (HERE / "cross_seed0.json").write_text(json.dumps(out, indent=1) + "\n")
  for k, v in out.items():
    print(f"{k}: {v[0]} [{v[1]}, {v[2]}]")


if __name__ == "__main__":
  main()
