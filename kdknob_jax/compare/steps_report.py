"""The printed report of `python -m kdknob_jax.compare steps` (the JSON holds every figure)."""

from __future__ import annotations

from kdknob_jax.compare.steps_figures import TOLERANCES

_TITLES = {"calibration": "calibration (GRPO, LoRA)", "gkd_fkl": "GKD-FKL (off policy, β=0)",
           "gkd_rkl": "GKD-RKL (on policy, β=1)"}


def _max(s: dict, field: str) -> str:
  return f"{s[f'{field}_max']:.2e} ({s[f'{field}_worst']})"


def _section(name: str, c: dict) -> list[str]:
  s, loss = c["summary"], c["loss"]
  lines = [
      f"{_TITLES[name]}: {s['tensors']} tensors, {s['elements']} elements",
      f"  loss            ours {loss['ours']:.8g}  torch32 {loss['torch32']:.8g}  torch64 "
      f"{loss['torch64']:.8g}  rel {loss['rel']:.2e}",
      f"  grad rel        vs torch64 {_max(s, 'grad_rel')}",
      f"                  vs torch32 {_max(s, 'grad_rel_t32')}; torch32 vs torch64 "
      f"{_max(s, 't32_grad_rel')}",
      f"  new value rel   our optimizer on torch32's gradients {_max(s, 'new_value_rel')}",
      f"  end to end      new values {_max(s, 'e2e_new_value_rel')}, updates "
      f"{_max(s, 'e2e_update_rel')}, update signs agree {s['update_sign_agreement']:.7f}; "
      f"where not, |g| <= {s['flip_grad_max']:.1e} x the tensor's rms gradient",
  ]
  if s["initial_rel_max"]:
    lines.append(f"  initial rel     {_max(s, 'initial_rel')}")
  if name == "calibration":
    a = c["advantages"]
    lines += [
        f"  advantages      rel {a['rel_ours_renormalized_vs_trl_normalize_then_sum']:.2e} "
        "(ours renormalized vs TRL normalize_then_sum); ours as the paper vs TRL's two: "
        f"{a['rel_ours_paper_vs_trl_normalize_then_sum']:.2f}, "
        f"{a['rel_ours_paper_vs_trl_sum_then_normalize']:.2f} (departure)",
        f"  KL              ours {c['kl']['ours']:.6g}  torch32 {c['kl']['torch32']:.6g}; "
        f"ref log-p max |ours - torch64| {c['ref_logp_max_abs_diff']:.2e}",
        "  TRL's default use_bias_correction_kl=True: grad rel vs torch32 "
        f"{c['trl_default_kl']['grad_rel_t32_max']:.2e} (departure)",
    ]
  lines.append("  per tensor kind, max over layers: grad vs torch64 / grad vs torch32 / "
               "torch32 vs torch64 / new value / end-to-end update")
  for group, g in sorted(c["by_group"].items()):
    lines.append(f"    {group:<14} {g['grad_rel']:.1e} / {g['grad_rel_t32']:.1e} / "
                 f"{g['t32_grad_rel']:.1e} / {g['new_value_rel']:.1e} / "
                 f"{g['e2e_update_rel']:.1e}")
  return lines


def format_report(result: dict) -> str:
  """The comparison's figures as text: one section per update, then the verdict."""
  r = result["rollouts"]
  lines = [
      f"model {result['model']}, student {result['student']} (layers {result['student_keep']})"
      f", ours float32 vs TRL float32 and float64, {r['prompts']} prompts x "
      f"{r['group_size']} rollouts [{result['encoding']}], completions "
      f"{min(r['teacher_completion_tokens'])}..{max(r['teacher_completion_tokens'])} tokens, "
      f"{result['seconds']} s",
      "tolerances: " + ", ".join(f"{k} <= {v:g}" for k, v in TOLERANCES.items())
      + " (relative: see the JSON's definitions)",
  ]
  for name in ("calibration", "gkd_fkl", "gkd_rkl"):
    if name in result:
      lines += _section(name, result[name])
  lines.append(f"departures from TRL: {len(result['departures'])} (listed in the JSON)")
  lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]))
  return "\n".join(lines)
