"""Typed settings: the frozen, nested dataclasses the library reads, built once from a config
file's values at the command line (`from_mapping`), and the ConfigDict that a config file
starts from, made from the same dataclass defaults (`to_configdict`), so each default lives in
one place. A leaf module: it imports nothing of the package but its errors.

Config files stay ml_collections `get_config(arg)` files and `--config.key=value` keeps working;
below the entry points, `cli.py` and the typed-config builders no module sees a ConfigDict.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping

from kdknob_jax.errors import ConfigError


def need(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless ok: the one form of every config check."""
  if not ok:
    raise ConfigError(message)


def _element_type(hint) -> type | None:
  """The dataclass of a `tuple[SomeDataclass, ...]` hint, else None."""
  if typing.get_origin(hint) is tuple:
    args = typing.get_args(hint)
    if args and dataclasses.is_dataclass(args[0]):
      return args[0]
  return None


def _plain(value: Any) -> Any:
  """Lists become tuples, mappings plain dicts, recursively (frozen settings hold no lists)."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def from_mapping(cls, values: Mapping[str, Any], where: str = "config"):
  """Builds the dataclass `cls` from nested mappings (a `ConfigDict.to_dict()`).

  Missing keys take the dataclass defaults; nested dataclass fields (and tuples of them) are
  built recursively.

  Raises:
    ConfigError: a key that is no setting of `cls`, named with its path and the known keys.
  """
  if hasattr(values, "to_dict"):
    values = values.to_dict()
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  need(not unknown, f"{where} has no setting {', '.join(unknown)}; its settings are "
       f"{sorted(fields)}.")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in values.items():
    hint = hints[name]
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
      kwargs[name] = from_mapping(hint, value, f"{where}.{name}")
    elif _element_type(hint) is not None:
      kwargs[name] = tuple(from_mapping(_element_type(hint), v, f"{where}.{name}[{i}]")
                           for i, v in enumerate(value))
    else:
      kwargs[name] = _plain(value)
  return cls(**kwargs)


def build(cls, values: Mapping[str, Any], check: Callable[[Any], None]):
  """`from_mapping(cls, values)`, then `check` on the result: a command's one way in."""
  typed = from_mapping(cls, values)
  check(typed)
  return typed


def as_dict(settings) -> dict[str, Any]:
  """The settings as nested plain dicts (JSON-able: identities, hparams, cache metadata)."""
  return dataclasses.asdict(settings)


def to_configdict(settings):
  """An ml_collections ConfigDict of the settings' values: what a config file edits. Tuples of
  dataclasses become lists of dicts (config files assign lists there)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  def convert(value):
    if dataclasses.is_dataclass(value):
      return ml_collections.ConfigDict({f.name: convert(getattr(value, f.name))
                                        for f in dataclasses.fields(value)})
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
      return [dataclasses.asdict(v) for v in value]
    if isinstance(value, Mapping):
      return ml_collections.ConfigDict(dict(value))
    return value
  return convert(settings)


def flat(settings) -> dict[str, int | float | str | bool]:
  """The scalar settings as flat {"a.b": value} pairs, for TensorBoard's hparams view."""
  out = {}

  def walk(prefix, value):
    if isinstance(value, Mapping):
      for k, v in value.items():
        walk(f"{prefix}{k}.", v)
    elif isinstance(value, (int, float, str, bool)):
      out[prefix[:-1]] = value
  walk("", as_dict(settings))
  return out
