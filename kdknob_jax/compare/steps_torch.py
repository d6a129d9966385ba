"""The PyTorch reference of the training-step comparison: TRL's trainers on HF models.

Calibration runs TRL's own `GRPOTrainer` pipeline from given rollouts: a `rollout_func`
returns our prompt and completion ids instead of generating, so `_generate_and_score_completions`
pads them, computes the reference log-probs with the adapter disabled, calls the reward
functions (which return the given rewards) and aggregates them into advantages; then
`compute_loss`, backward, the Trainer's gradient clipping and its own AdamW. Distillation calls
`GKDTrainer.compute_loss` (TRL's generalized JSD with the labels mask) on the same completions
and steps the Trainer's AdamW the same way. Only this module's functions import torch, TRL,
peft, datasets and tokenizers.

Choices made explicit (TRL 1.16's defaults differ from our objective): GRPO `loss_type="grpo"`
(mean over each sequence's tokens, then over sequences: our "sequence_mean"), `num_iterations=1`
(on policy: the old log-probs are the current ones detached, as ours),
`use_bias_correction_kl=False` (its default multiplies the k3 term by the ratio, whose gradient
adds KL·∇log π even on policy; ours is the plain k3 anchor), `bf16=False`,
`gradient_checkpointing=False`, `multi_objective_aggregation="normalize_then_sum"` (ours with
`renormalize=True`; see `steps.DEPARTURES`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import re
import tempfile
import warnings
from typing import Mapping, Sequence

import numpy as np

from kdknob_jax.compare import adapters_map, torch_side
from kdknob_jax.hf.registry import ModelSource
from kdknob_jax.models.lora import LoraConfig
from kdknob_jax.train.settings import OptimizerSettings


def trainable_model(source: ModelSource):
  """A float32 HF causal LM with eager attention that `Trainer` accepts.

  transformers marks a GGUF-loaded model as quantized (its weights are dequantized at load but
  the quantizer stays attached) and `Trainer` refuses to train such a model, so it is rebuilt
  from its config without the quantizer.
  """
  loaded = torch_side.load_torch_model(source, "float32")
  config = copy.deepcopy(loaded.config)
  if hasattr(config, "quantization_config"):
    del config.quantization_config
  return _rebuilt(config, loaded.state_dict(), loaded.generation_config)


def _rebuilt(config, state: dict, generation_config):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  model.load_state_dict(state, strict=True)
  model.generation_config = copy.deepcopy(generation_config)
  return model.eval()


def cut_layers(model, keep: Sequence[int]):
  """A new model of `model`'s layers `keep`, renumbered 0.. as
  `kdknob_jax.models.derive.keep_layers` does on our side (a copy; `model` is unchanged)."""
  config = copy.deepcopy(model.config)
  where = {old: new for new, old in enumerate(keep)}
  if getattr(config, "layer_types", None):
    config.layer_types = [config.layer_types[i] for i in keep]
  config.num_hidden_layers = len(keep)
  state = {}
  for name, w in model.state_dict().items():
    m = re.search(r"layers\.(\d+)\.", name)
    if m is None:
      state[name] = w.clone()
    elif int(m.group(1)) in where:
      state[name.replace(m.group(0), f"layers.{where[int(m.group(1))]}.", 1)] = w.clone()
  return _rebuilt(config, state, model.generation_config)


def as_float64(model, state: dict | None = None):
  """A float64 model of `model`'s config and `state` (default: its weights): the reference
  that shows each float32 side's own rounding. Built anew rather than deep-copied, since TRL's
  trainers replace a model's forward by a closure over it, which a copy would share.

  It attends with torch's sdpa, which computes in the inputs' dtype: HF's eager attention takes
  its softmax in float32, where a float64 model's mask value (−1.8e308) becomes −inf, so a
  left-padded row (TRL pads prompts on the left) gives NaN.
  """
  out = _rebuilt(copy.deepcopy(model.config), model.state_dict() if state is None else state,
                 model.generation_config).double()
  out.set_attn_implementation("sdpa")
  return out


def id_tokenizer(vocab_size: int, pad_id: int, eos_id: int):
  """A tokenizer whose every id is one word "t<id>": the trainers need one for their
  bookkeeping (pad and EOS ids, decoding for reward functions), never to encode, since both
  sides get token ids."""
  from tokenizers import Tokenizer, models  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=f"t{pad_id}",
                                 eos_token=f"t{eos_id}")


def sample(model, prompts: Sequence[Sequence[int]], n: int, tokens: int, seed: int
           ) -> list[list[int]]:
  """n completions of exactly `tokens` tokens per prompt (prompt-major), sampled at
  temperature 1 without top-k/top-p in one batch (prompts left-padded). No id stops a row: an
  EOS drawn on the way is one more token of the data both sides get."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import GenerationConfig  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  width = max(len(p) for p in prompts)
  ids = torch.zeros((len(prompts), width), dtype=torch.long)
  mask = torch.zeros((len(prompts), width), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = torch.tensor(list(p))
    mask[i, width - len(p):] = 1
  gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=tokens, num_return_sequences=n, pad_token_id=0,
                         eos_token_id=None)
  impl = model.config._attn_implementation  # pylint: disable=protected-access
  model.set_attn_implementation("sdpa")  # the rollouts are data: the faster attention serves
  try:
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
  finally:
    model.set_attn_implementation(impl)
  return out[:, width:].tolist()


def _training_args(opt: OptimizerSettings, out: str) -> dict:
  return dict(output_dir=out, use_cpu=True, bf16=False, gradient_checkpointing=False,
              learning_rate=opt.lr, weight_decay=opt.weight_decay, adam_beta1=opt.b1,
              adam_beta2=opt.b2, adam_epsilon=1e-8, max_grad_norm=opt.clip,
              lr_scheduler_type="constant", report_to=[], save_strategy="no",
              logging_strategy="no", disable_tqdm=True, seed=0)


def _step(trainer, model, loss, params: Mapping, step: bool) -> tuple[dict[str, np.ndarray],
                                                                      float]:
  """Backward, then (when `step`) the Trainer's clipping (`max_grad_norm`) and one step of its
  own optimizer.

  Returns:
    (the gradients of `params` before clipping, their norm).
  """
  import torch  # pylint: disable=g-import-not-at-top
  model.zero_grad(set_to_none=True)  # a model trained before (the students) keeps its .grad
  loss.backward()
  grads = {k: p.grad.numpy().copy() for k, p in params.items()}
  if not step:
    return grads, float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in params.values()])))
  optimizer = trainer.create_optimizer()
  norm = trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
  optimizer.step()
  return grads, float(norm)


def _release(trainer) -> None:
  """Frees a trainer now: it sits in reference cycles (callbacks hold it), and its optimizer
  state is twice the trained weights."""
  trainer.optimizer = None
  del trainer
  gc.collect()


@contextlib.contextmanager
def _quiet():
  # TRL flags rollout_func and trl.experimental as experimental, and GKD as covered by another
  # trainer, at each use: advice for training runs, noise in a comparison's report.
  old = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
  os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
  trl_logger = logging.getLogger("trl")
  level = trl_logger.level
  trl_logger.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield
  finally:
    trl_logger.setLevel(level)
    if old is None:
      del os.environ["TRL_EXPERIMENTAL_SILENCE"]
    else:
      os.environ["TRL_EXPERIMENTAL_SILENCE"] = old


class _PlainLogProbs:
  """TRL's chunked log-prob kernel (`ChunkedLogProbFunction`) as plain autograd in the
  model's dtype: the kernel folds its tiles in float32 whatever the model's dtype, so a float64
  reference needs this in its place. The same math: z = softcap·tanh(scale·h·Wᵀ/softcap) / T,
  log-softmax, the target's entry, and the entropy."""

  @staticmethod
  def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping,
            logit_scale, outputs):
    import torch  # pylint: disable=g-import-not-at-top
    del chunk_size
    z = hidden @ weight.t()
    if bias is not None:
      z = z + bias
    z = z * logit_scale
    if final_logit_softcapping is not None:
      z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    lp = torch.log_softmax(z / temperature, dim=-1)
    entropy = -(lp.exp() * lp).sum(-1) if "entropy" in outputs else None
    return lp.gather(-1, targets[:, None])[:, 0], entropy, None, None, None


@contextlib.contextmanager
def _float64_head(enabled: bool):
  if not enabled:
    yield
    return
  from trl.trainer import utils  # pylint: disable=g-import-not-at-top
  kernel = utils._ChunkedLogProbFunction  # pylint: disable=protected-access
  utils._ChunkedLogProbFunction = _PlainLogProbs  # pylint: disable=protected-access
  try:
    yield
  finally:
    utils._ChunkedLogProbFunction = kernel  # pylint: disable=protected-access


def grpo_update(model, lcfg: LoraConfig, adapters: Mapping[str, np.ndarray],
                prompts: Sequence[Sequence[int]], owner: Sequence[int],
                completions: Sequence[Sequence[int]], rewards: Mapping[str, np.ndarray],
                weights: Mapping[str, float], group_size: int, beta: float, epsilon: float,
                epsilon_high: float, opt: OptimizerSettings, pad_id: int,
                default_kl: bool = True, step: bool = True) -> dict:
  """One GRPO step of TRL on a PEFT LoRA of `model`, from the given rollouts and rewards.

  Args:
    model: from `trainable_model` (wrapped in place by PEFT), or its `as_float64` copy (then
      TRL's float32 log-prob kernel is replaced by `_PlainLogProbs`).
    lcfg: rank, alpha and targets of the adapters.
    adapters: the initial adapters, {key: PEFT weight} (`adapters_map.lora_to_peft`).
    prompts, owner, completions: the rollouts, prompt-major (row r continues owner[r]).
    rewards: name → [N] rewards; each becomes one TRL reward function, in this order.
    weights: name → weight (TRL's `reward_weights`).
    group_size, beta, epsilon, epsilon_high: GRPO's G, KL weight and clip range.
    opt: the optimizer settings (the Trainer's AdamW and `max_grad_norm`).
    pad_id: the padding id TRL pads with (masked).
    default_kl: also take the gradients under TRL's default `use_bias_correction_kl=True`.
    step: also take the optimizer step ("new" is None without it).

  Returns:
    {"loss", "kl", "grad_norm", "advantages" {aggregation: [N]}, "ref_logp" [N, T],
     "grads", "new" ({key: PEFT weight}), "grads_bias_corrected_kl" (the gradients under
     TRL's default `use_bias_correction_kl=True`, not applied; None without `default_kl`)}.
  """
  # pylint: disable=g-import-not-at-top
  import datasets
  import peft
  import torch
  import trl
  # pylint: enable=g-import-not-at-top
  n = len(completions)
  names = list(rewards)

  def rollout_func(prompt_texts, trainer):
    del prompt_texts, trainer
    return {"prompt_ids": [list(prompts[owner[r]]) for r in range(n)],
            "completion_ids": [list(c) for c in completions],
            "logprobs": [[0.0] * len(c) for c in completions]}

  def reward(name):
    def fn(prompts, completions, row, **_):  # pylint: disable=redefined-outer-name
      del prompts, completions
      return [float(rewards[name][r]) for r in row]
    fn.__name__ = name
    return fn

  rows = [{"prompt": "", "row": r} for r in range(n)]
  lora = peft.LoraConfig(r=lcfg.rank, lora_alpha=lcfg.alpha, lora_dropout=0.0,
                         target_modules=list(lcfg.targets), task_type="CAUSAL_LM")
  eos = model.generation_config.eos_token_id
  eos = eos[0] if isinstance(eos, (list, tuple)) else (pad_id if eos is None else eos)
  tok = id_tokenizer(model.config.vocab_size, pad_id, int(eos))
  float64 = next(model.parameters()).dtype == torch.float64
  with tempfile.TemporaryDirectory(prefix="kdknob-steps-") as out, _quiet(), \
      _float64_head(float64):
    config = trl.GRPOConfig(
        **_training_args(opt, out), per_device_train_batch_size=n, num_generations=group_size,
        max_completion_length=max(len(c) for c in completions), num_iterations=1, beta=beta,
        epsilon=epsilon, epsilon_high=epsilon_high, loss_type="grpo", temperature=1.0,
        use_bias_correction_kl=False, importance_sampling_level="token",
        top_entropy_quantile=1.0, mask_truncated_completions=False,
        reward_weights=[float(weights.get(k, 1.0)) for k in names], scale_rewards="group",
        shuffle_dataset=False, use_vllm=False)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward(k) for k in names], args=config,
                              train_dataset=datasets.Dataset.from_list(rows),
                              processing_class=tok, peft_config=lora, rollout_func=rollout_func)
    peft_model = trainer.model
    params = {}
    for name, p in peft_model.named_parameters():
      key = adapters_map.peft_key(name)
      if key is not None:
        params[key] = p
    missing = sorted(set(adapters) ^ set(params))
    if missing:
      raise ValueError(f"PEFT's adapters and ours differ: {missing[:6]}.")
    with torch.no_grad():
      for key, p in params.items():
        p.copy_(torch.from_numpy(np.asarray(adapters[key], np.float32)))
    peft_model.train()
    # The Trainer's loop sets this before each step; _compute_loss divides by it.
    trainer.current_gradient_accumulation_steps = 1
    advantages = {}
    for aggregation in ("sum_then_normalize", "normalize_then_sum"):  # the last one trains
      trainer.multi_objective_aggregation = aggregation
      inputs = trainer._generate_and_score_completions(rows)  # pylint: disable=protected-access
      advantages[aggregation] = inputs["advantages"].numpy().copy()
    # TRL's default multiplies the KL term by the ratio (1, with a gradient): measured, not
    # trained.
    corrected = None
    if default_kl:
      trainer.args.use_bias_correction_kl = True
      trainer.compute_loss(peft_model, inputs).backward()
      corrected = {k: p.grad.numpy().copy() for k, p in params.items()}
      trainer.args.use_bias_correction_kl = False
    loss = trainer.compute_loss(peft_model, inputs)
    grads, grad_norm = _step(trainer, peft_model, loss, params, step)
    metrics = trainer._metrics["train"]  # pylint: disable=protected-access
    out = {"loss": float(loss.detach()), "kl": float(metrics["kl"][-1]) if beta else 0.0,
           "grad_norm": grad_norm, "advantages": advantages,
           "ref_logp": inputs["ref_per_token_logps"].numpy().copy() if beta else None,
           "grads": grads, "grads_bias_corrected_kl": corrected,
           "new": {k: p.detach().numpy().copy() for k, p in params.items()} if step else None}
  _release(trainer)
  return out


def gkd_update(student, teacher, prompts: Sequence[Sequence[int]], owner: Sequence[int],
               completions: Sequence[Sequence[int]], beta: float, on_policy_share: float,
               opt: OptimizerSettings, pad_id: int, step: bool = True) -> dict:
  """One full fine-tuning step of TRL's `GKDTrainer` loss on the given completions (or only
  its gradients, without `step`).

  The inputs are what its collator (off policy) or `generate_on_policy_outputs` (on policy)
  produce: prompt + completion right-padded, labels −100 on the prompt and the padding; with
  given completions the trainer's own sampling is not called.

  Returns:
    {"loss", "grad_norm", "grads", "new" ({HF name: array}; None without `step`), "names"
    (every HF name, the tied head's too)}.
  """
  # pylint: disable=g-import-not-at-top
  import datasets
  import torch
  with _quiet():
    from trl.experimental.gkd import GKDConfig, GKDTrainer
  # pylint: enable=g-import-not-at-top
  seqs = [list(prompts[owner[r]]) + list(c) for r, c in enumerate(completions)]
  width = max(len(s) for s in seqs)
  ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
  mask = torch.zeros((len(seqs), width), dtype=torch.long)
  labels = torch.full((len(seqs), width), -100, dtype=torch.long)
  for r, s in enumerate(seqs):
    ids[r, :len(s)] = torch.tensor(s)
    mask[r, :len(s)] = 1
    start = len(prompts[owner[r]])
    labels[r, start:len(s)] = ids[r, start:len(s)]
  eos = student.generation_config.eos_token_id
  eos = eos[0] if isinstance(eos, (list, tuple)) else (pad_id if eos is None else eos)
  tok = id_tokenizer(student.config.vocab_size, pad_id, int(eos))
  # HF builds the embedding with padding_idx = config.pad_token_id, and nn.Embedding gives that
  # row no gradient from its lookups; ours does (see `steps.DEPARTURES`). SmolLM2-Instruct's
  # pad token is <|im_end|>, which every chat prompt holds.
  student.get_input_embeddings().padding_idx = None
  data = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "t0"},
                                                   {"role": "assistant", "content": "t0"}]}])
  with tempfile.TemporaryDirectory(prefix="kdknob-steps-") as out, _quiet():
    config = GKDConfig(**_training_args(opt, out), per_device_train_batch_size=len(seqs),
                       beta=beta, lmbda=on_policy_share, temperature=1.0, seq_kd=False,
                       max_new_tokens=max(len(c) for c in completions))
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data,
                         processing_class=tok)
    model = trainer.model
    model.train()
    named = dict(model.named_parameters())
    loss = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": mask,
                                        "labels": labels})
    grads, grad_norm = _step(trainer, model, loss, named, step)
    out = {"loss": float(loss.detach()), "grad_norm": grad_norm, "grads": grads,
           "new": {k: p.detach().numpy().copy() for k, p in named.items()} if step else None,
           "names": list(model.state_dict())}
  model.zero_grad(set_to_none=True)
  _release(trainer)
  return out
