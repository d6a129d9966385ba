"""The students: typed settings (config), cached teacher samples (samples), the jitted
SFT/GKD update (step), and the trainer."""
