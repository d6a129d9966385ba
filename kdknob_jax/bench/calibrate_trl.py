"""The PyTorch peer of `bench calibrate`: one step of TRL's `GRPOTrainer` on the same teacher.

The setup mirrors our calibration step as far as TRL allows: the embedded SmolLM2-135M-Instruct
GGUF as the policy (float32, CPU, transformers' own GGUF loader), a fresh LoRA adapter on every
projection, `group_size` rollouts per prompt, all prompts in one optimizer step, completions of
exactly `max_completion_length` tokens, a k3 KL anchor to the adapter-free model, and optionally
a reward that scores every completion with the embedded Gemma-3-270M, so both sides pay for the
same target-model forward passes. Only this module's functions import torch, TRL and peft.

TRL 1.16 choices made explicit here (its defaults differ from the plain GRPO objective):
`use_bias_correction_kl=False` (its default scales the k3 anchor by the ratio);
`loss_type="grpo"` (its default "dapo" normalizes by the batch's token count; "grpo" is the mean
over each sequence's tokens, then over sequences, our "sequence_mean"); `bf16=False` and
`gradient_checkpointing=False` (TRL's config turns both on by default); `scale_rewards="group"`
and `multi_objective_aggregation="sum_then_normalize"` are its defaults and are kept.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Sequence

TEACHER = "smollm2-135m-instruct"
TARGET = "gemma3-270m"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ANSWER = "A"


def _load(name: str, trainable: bool = False):
  """A float32 HF causal LM from an embedded GGUF, with torch's fused (sdpa) attention.

  `compare.torch_side` loads with eager attention, which the numerical comparison wants; a TRL
  user gets sdpa by default, and that is the fair peer for timing.

  Args:
    name: registry name of the model.
    trainable: rebuilt as a plain model that `Trainer` accepts (`steps_torch.trainable_model`:
      a GGUF load can keep transformers' quantizer attached, which `Trainer` refuses).
  """
  # pylint: disable=g-import-not-at-top
  from kdknob_jax.compare import steps_torch, torch_side
  from kdknob_jax.hf import resolve
  # pylint: enable=g-import-not-at-top
  source = resolve(name)
  model = (steps_torch.trainable_model(source) if trainable
           else torch_side.load_torch_model(source, "float32"))
  model.set_attn_implementation("sdpa")
  return model


def _hf_tokenizer(name: str):
  """The HF tokenizer from our converted GGUF vocabulary, so both sides see the same ids."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf import resolve  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf.tokenizer import gguf_tokenizer_dir  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(str(gguf_tokenizer_dir(resolve(name).path)))


def _text(completion) -> str:
  # Conversational datasets give each completion as a list of messages.
  return completion if isinstance(completion, str) else completion[-1]["content"]


class _TaskReward:
  """1.0 when the completion contains the answer letter, else 0.0.

  A stand-in for the real task reward: it costs next to nothing on either side, and it keeps a
  record of every completion's length, which is how the run checks that lengths are fixed.
  """

  __name__ = "task"

  def __init__(self):
    self.lengths: list[int] = []

  def __call__(self, prompts, completions, completion_ids, **_):
    self.lengths.extend(len(ids) for ids in completion_ids)
    return [1.0 if ANSWER in _text(c) else 0.0 for c in completions]


class _TargetReward:
  """Summed log-prob of each completion text given its prompt under the target model.

  Follows `kdknob_jax.calibration.rewards.text_logprobs`' boundary rules: the prompt is encoded
  by the target's own `Tokenizer.encode_prompt` (Gemma-3-270M is a base model: plain text with
  BOS), the completion text without special tokens, plus, when the rollout stopped, the
  target's end of a turn in that same format (`end_ids`: its EOS for plain text).
  Teacher-forced, one padded batch, no gradient.
  """

  __name__ = "target_logprob"

  def __init__(self, teacher_eos_ids: Sequence[int]):
    from kdknob_jax.hf import load_tokenizer, resolve  # pylint: disable=g-import-not-at-top
    self.model = _load(TARGET)
    self.tokenizer = load_tokenizer(resolve(TARGET))
    self.chat = bool(self.tokenizer.chat_template)  # one format for prompt and turn end
    self.teacher_eos = set(teacher_eos_ids)

  def __call__(self, prompts, completions, completion_ids, question, **_):
    # pylint: disable=g-import-not-at-top
    import torch
    from kdknob_jax.hf.tokenizer import completion_ids as target_ids
    # pylint: enable=g-import-not-at-top
    rows = []
    for q, c, ids in zip(question, completions, completion_ids):
      stopped = bool(ids) and ids[-1] in self.teacher_eos
      rows.append((self.tokenizer.encode_prompt(q, chat=self.chat),
                   target_ids(self.tokenizer, _text(c), stopped, chat=self.chat)))
    # Left padding lines every completion up at the right edge, so the head runs only on the
    # last `keep` positions instead of materializing [N, T, 262k] logits.
    width = max(len(p) + len(c) for p, c in rows)
    keep = max(len(c) for _, c in rows) + 1
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
      ids[i, width - len(p) - len(c):] = torch.tensor(p + c)
      mask[i, width - len(p) - len(c):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
      logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                          logits_to_keep=keep, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1 - keep:, None])[..., 0]
    out = []
    for i, (_, c) in enumerate(rows):
      out.append(float(logp[i, logp.shape[1] - len(c):].sum()))
    return out


def trl_step_seconds(prompts: list[str], *, rank: int, alpha: float, group_size: int,
                     max_completion_length: int, beta: float, steps: int = 3,
                     target_scorer: bool = True, seed: int = 0, threads: int | None = None
                     ) -> dict:
  """Wall seconds of one GRPO optimizer step of TRL on the SmolLM2 teacher, on CPU.

  One step generates `group_size` completions for every prompt (a single generation batch of
  len(prompts) x group_size rows), scores them, computes the reference log-probs with the
  adapter disabled when beta > 0, and takes one AdamW step on the LoRA weights. A step is timed
  from the trainer's `on_step_begin` to its `on_step_end` callback, so it covers generation,
  rewards, the forward and backward passes and the optimizer update, and not the data loader.

  Args:
    prompts: question texts; each becomes one user turn in the teacher's chat template.
    rank: LoRA rank.
    alpha: LoRA alpha (the update is scaled by alpha / rank).
    group_size: rollouts per prompt (TRL's `num_generations`).
    max_completion_length: every completion is exactly this many tokens (EOS is masked).
    beta: weight of the k3 KL anchor.
    steps: steps to run; the first is a warm-up and is not counted.
    target_scorer: also score every completion with the Gemma-3-270M target.
    seed: torch and Trainer seed.
    threads: torch intra-op threads (default: every CPU, as `bench decode` gives HF).

  Returns:
    {"step_s": median of the timed steps, "all_s": every step, warm-up first,
     "completion_tokens": mean completion length, "completion_tokens_range": (min, max),
     "load_s": seconds to load the models and build the trainer, "torch_threads", "trl",
     "peft", "transformers", "torch", "attention"}.

  Raises:
    ValueError: fewer than 2 steps, or fewer than 2 rollouts per prompt.
    RuntimeError: a completion was not exactly `max_completion_length` tokens long.
  """
  if steps < 2:
    raise ValueError(f"steps must be >= 2 (the first is a warm-up), got {steps}.")
  if group_size < 2:
    raise ValueError(f"GRPO needs at least 2 rollouts per prompt, got group_size={group_size}.")
  # pylint: disable=g-import-not-at-top
  import datasets
  import peft
  import torch
  import transformers
  import trl
  # pylint: enable=g-import-not-at-top

  torch.set_num_threads(threads or os.cpu_count() or 1)
  torch.manual_seed(seed)
  t0 = time.perf_counter()
  model = _load(TEACHER, trainable=True)
  tokenizer = _hf_tokenizer(TEACHER)
  task = _TaskReward()
  rewards = [task]
  if target_scorer:
    eos = [i for i in (tokenizer.eos_token_id, model.generation_config.eos_token_id)
           if isinstance(i, int)]
    rewards.append(_TargetReward(eos))
  data = datasets.Dataset.from_dict({
      "prompt": [[{"role": "user", "content": p}] for p in prompts],
      "question": list(prompts),
  })
  lora = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                         target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")

  class Clock(transformers.TrainerCallback):
    """Wall time of each optimizer step, from the trainer's own step hooks."""

    def __init__(self):
      self.seconds: list[float] = []
      self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
      self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      self.seconds.append(time.perf_counter() - self._start)

  clock = Clock()
  with tempfile.TemporaryDirectory(prefix="kdknob-trl-") as out:
    config = trl.GRPOConfig(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=seed,
        max_steps=steps,
        per_device_train_batch_size=len(prompts) * group_size,
        gradient_accumulation_steps=1,
        num_generations=group_size,
        num_iterations=1,
        max_completion_length=max_completion_length,
        # min_new_tokens makes generate mask every EOS id TRL passes it until the last token.
        generation_kwargs={"min_new_tokens": max_completion_length},
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=beta,
        # TRL's default multiplies the k3 term by the ratio, which adds KL·∇log π to the
        # gradient; our anchor is the plain k3 (`compare steps` measures the difference).
        use_bias_correction_kl=False,
        loss_type="grpo",
        learning_rate=2e-5,
        lr_scheduler_type="constant",
        shuffle_dataset=False,
        use_vllm=False,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = trl.GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=data,
                              processing_class=tokenizer, peft_config=lora, callbacks=[clock])
    # It would print the end-of-training metrics dict into the bench's own report.
    trainer.remove_callback(transformers.PrinterCallback)
    load_s = time.perf_counter() - t0
    trainer.train()
  if len(clock.seconds) != steps:
    raise RuntimeError(f"Timed {len(clock.seconds)} steps, expected {steps}.")
  if min(task.lengths) != max_completion_length or max(task.lengths) != max_completion_length:
    raise RuntimeError(f"Completion lengths ranged {min(task.lengths)}..{max(task.lengths)}, "
                       f"expected all {max_completion_length}: EOS was not masked.")
  return {
      "step_s": statistics.median(clock.seconds[1:]),
      "all_s": clock.seconds,
      "completion_tokens": statistics.fmean(task.lengths),
      "completion_tokens_range": (min(task.lengths), max(task.lengths)),
      "load_s": load_s,
      "torch_threads": torch.get_num_threads(),
      "attention": model.config._attn_implementation,  # pylint: disable=protected-access
      "trl": trl.__version__,
      "peft": peft.__version__,
      "transformers": transformers.__version__,
      "torch": torch.__version__,
  }
