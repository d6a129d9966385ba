"""Trainers: the calibration loop (reinforcement fine-tuning of the teacher)."""
