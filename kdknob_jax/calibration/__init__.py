"""The calibration knob: typed settings (config), the objective's math (objective), the
cross-tokenizer reward (rewards), a step's rollouts (rollouts) and what they report
(measures), the jitted scoring and LoRA update (step), and the trainer."""
