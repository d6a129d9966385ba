"""The distillation-trap diagnostics of the pilot study: per-token scoring of sampled
sequences, Table-1 metrics, tail-noise statistics, and their report files."""

from kdknob_jax.diagnostics.summary import (off_policy_sequence_kl, spearman, table_row,
                                            tail_statistics, wrong_trace_preference)
from kdknob_jax.diagnostics.traps import SequenceScores, score_sequences, score_tokens

__all__ = ["SequenceScores", "off_policy_sequence_kl", "score_sequences", "score_tokens",
           "spearman", "table_row", "tail_statistics", "wrong_trace_preference"]
