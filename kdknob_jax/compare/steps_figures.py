"""Figures of the training-step comparison: relative errors of gradients, updates and updated
values tensor by tensor, and the tolerances that set the exit status.

Three sides: ours (float32), torch32 (TRL on the HF model in float32) and torch64 (the same on
a float64 copy). Gradients are gated against torch64: on the embedded student torch32's own
error reaches 2.7e-4 (norm weights, reverse KL) while ours stays under 3e-5, so a gate against
torch32 would measure torch's rounding. Updated values are gated on the optimizers alone (ours
on torch32's gradients against torch32's step); the end-to-end values are reported. Every
figure is computed in float64 over one tensor of one layer at a time (the granularity of PEFT's
adapters and HF's weights) and summarized by its maximum over tensors.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# Exit-code tolerances of `python -m kdknob_jax.compare steps` (see `DEFINITIONS`).
TOLERANCES = {
    "loss_rel": 1e-4,
    "advantages_rel": 1e-5,
    "grad_rel_max": 1e-4,
    "new_value_rel_max": 1e-5,
}

DEFINITIONS = {
    "rel(x, y)": "||x - y||_2 / ||y||_2 in float64 over one tensor of one layer",
    "torch32, torch64": "TRL's step on the HF model in float32, and the same code on a "
                        "float64 copy of the model (the reference for rounding)",
    "grad_rel": "rel(our float32 gradient, torch64's) of each trained tensor, before clipping "
                "(gated)",
    "grad_rel_t32": "rel(our float32 gradient, torch32's): float32 against float32",
    "t32_grad_rel": "rel(torch32's gradient, torch64's): torch's own float32 error",
    "new_value_rel": "rel(our optimizer's step on torch32's gradients, torch32's values after "
                     "its step), over the tensors the step changed (gated): the two optimizers "
                     "on one gradient",
    "e2e_new_value_rel": "rel(our values after our step, torch32's after its step)",
    "e2e_update_rel": "rel(our new - old, torch32's new - old). Adam's first step is "
                      "lr * g / (|g| + eps) ~ lr * sign(g), so an element whose gradient is ~0 "
                      "on one side and ~-0 on the other moves by 2 lr apart: this figure "
                      "counts such elements, not the gradients' agreement",
    "e2e_update_rel_t64": "rel(our new - old, the float64 reference's): our end-to-end update "
                          "against our optimizer's step on torch64's gradients",
    "t32_update_rel": "rel(torch32's update, the float64 reference's), both through our "
                      "optimizer: how far float32 gradients alone move an Adam update (its "
                      "normalization turns each element's relative rounding into an update "
                      "error), the floor for e2e_update_rel_t64",
    "update_sign_agreement": "share of elements whose end-to-end update has the same sign on "
                             "both sides",
    "flip_grad": "over the elements whose end-to-end update signs differ, the largest |torch64 "
                 "gradient| / the tensor's rms torch64 gradient (0 when none differ): small "
                 "means those elements are the ones whose gradient is ~0",
    "loss_rel": "|ours - torch64| / max(|torch64|, scale); scale is the mean |advantage| for "
                "calibration (its on-policy loss is a near-cancelling mean of them) and 0 for "
                "distillation",
    "advantages_rel": "rel(our advantages, TRL's) over the batch (both float32)",
}


def rel(x: np.ndarray, y: np.ndarray) -> float:
  """||x − y|| / ||y|| in float64; 0 when both are zero, inf when only y is."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  num, den = float(np.linalg.norm(x - y)), float(np.linalg.norm(y))
  if den == 0.0:
    return 0.0 if num == 0.0 else float("inf")
  return num / den


def tensor_figures(grads: Mapping[str, Mapping], old: Mapping[str, Mapping],
                   new: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
  """Per key (one tensor of one layer), every figure of `DEFINITIONS`.

  Args:
    grads: {"ours", "t32", "t64"} → {key: gradient}, our layout.
    old: {"ours", "t32"} → {key: value before the step}.
    new: {"ours", "t32", "opt", "opt64"} → {key: value after the step}; "opt" and "opt64"
      are our optimizer's step on torch32's and on torch64's gradients.

  Raises:
    ValueError: the sides do not hold the same keys or shapes.
  """
  sides = [*grads.values(), *old.values(), *new.values()]
  keys = set(old["ours"])
  for side in sides:
    if set(side) != keys:
      raise ValueError(f"The sides' tensors differ: {sorted(set(side) ^ keys)[:6]}.")
  out = {}
  for k in sorted(keys):
    shapes = {np.shape(side[k]) for side in sides}
    if len(shapes) != 1:
      raise ValueError(f"Tensor {k}: the sides' shapes differ: {sorted(shapes)}.")
    d_ours = np.asarray(new["ours"][k], np.float64) - np.asarray(old["ours"][k], np.float64)
    start = np.asarray(old["t32"][k], np.float64)
    d_t32, d_opt, d_opt64 = (np.asarray(new[side][k], np.float64) - start
                             for side in ("t32", "opt", "opt64"))
    changed = bool(np.any(d_t32 != 0.0))
    flips = np.sign(d_ours) != np.sign(d_t32)
    g64 = np.asarray(grads["t64"][k], np.float64)
    rms = float(np.sqrt(np.mean(g64 * g64)))
    out[k] = {
        "initial_rel": rel(old["ours"][k], old["t32"][k]),
        "grad_rel": rel(grads["ours"][k], grads["t64"][k]),
        "grad_rel_t32": rel(grads["ours"][k], grads["t32"][k]),
        "t32_grad_rel": rel(grads["t32"][k], grads["t64"][k]),
        "grad_norm": float(np.linalg.norm(np.asarray(grads["t64"][k], np.float64))),
        "new_value_rel": rel(new["opt"][k], new["t32"][k]) if changed else 0.0,
        "e2e_new_value_rel": rel(new["ours"][k], new["t32"][k]) if changed else 0.0,
        "e2e_update_rel": rel(d_ours, d_t32) if changed else 0.0,
        "e2e_update_rel_t64": rel(d_ours, d_opt64) if changed else 0.0,
        "t32_update_rel": rel(d_opt, d_opt64) if changed else 0.0,
        "changed": changed,
        "sign_agree": int(flips.size - np.sum(flips)),
        "flip_grad": float(np.abs(g64[flips]).max() / rms) if flips.any() and rms else 0.0,
        "size": int(d_t32.size),
    }
  return out


# The per-tensor figures `summary` and `by_group` take maxima of.
MAXIMA = ("initial_rel", "grad_rel", "grad_rel_t32", "t32_grad_rel", "new_value_rel",
          "e2e_new_value_rel", "e2e_update_rel", "e2e_update_rel_t64", "t32_update_rel",
          "flip_grad")


def summary(per_tensor: Mapping[str, Mapping]) -> dict:
  """The maximum of each figure over tensors (and where it is), and the share of agreeing
  update signs."""
  out: dict = {"tensors": len(per_tensor),
               "elements": sum(v["size"] for v in per_tensor.values())}
  for field in MAXIMA:
    items = [(v[field], k) for k, v in per_tensor.items()]
    value, key = max(items) if items else (0.0, "")
    out[f"{field}_max"], out[f"{field}_worst"] = value, key
  out["update_sign_agreement"] = (sum(v["sign_agree"] for v in per_tensor.values())
                                  / max(out["elements"], 1))
  return out


def by_group(per_tensor: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
  """Maxima over layers of each tensor kind ("q_proj.a", "embed", ...), for the printed report."""
  out: dict[str, dict[str, float]] = {}
  for k, v in per_tensor.items():
    group = ".".join(k.split(".")[2:]) if k.startswith("layers.") else k
    g = out.setdefault(group, {f: 0.0 for f in MAXIMA})
    for field in MAXIMA:
      g[field] = max(g[field], v[field])
  return out


def check(figures: Mapping[str, float], prefix: str) -> list[str]:
  """Names the figures of one comparison outside `TOLERANCES` (empty when all pass)."""
  bad = []
  for key, bound in TOLERANCES.items():
    if key in figures and not figures[key] <= bound:  # NaN fails too
      bad.append(f"{prefix} {key}={figures[key]:.3g} > {bound:g}")
  return bad
