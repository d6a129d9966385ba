"""Reinforcement fine-tuning of the teacher (the calibration knob): objective math first."""
