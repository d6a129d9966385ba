"""The paper's experiments: the pilot study of the traps (Table 1, Figure 2: pilot,
pilot_config) and the end-to-end pipeline (Table 2: pipeline, pipeline_config, table)."""
