"""Device mesh and logical-axis sharding rules.

Params and activations carry logical axis names ("vocab", "embed", "heads", ...). A config holds
the mesh axis sizes and the rules mapping logical names to mesh axes; `shardings_for` turns an
abstract param tree into `NamedSharding`s so that weights load straight into their shards.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kdknob_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (a tuple shards over their product). Configs may override.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("length", None),
    ("cache_length", None),
)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over (data, fsdp, tensor); one size may be -1, meaning "the remaining devices".

  Raises:
    ConfigError (a ValueError): when the sizes do not multiply to the device count.
  """
  devices = list(devices if devices is not None else jax.devices())
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"Mesh axes {unknown} are not ours; use {MESH_AXES} (config.mesh).")
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise ConfigError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if len(devices) % known:
      raise ConfigError(f"{len(devices)} devices cannot be split by the fixed mesh axes "
                        f"{dict(sizes)}; make their product divide {len(devices)} (config.mesh).")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ConfigError(f"Mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} "
                      f"devices, but {len(devices)} are available; fix config.mesh (one axis "
                      "may be -1: the remaining devices).")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def spec_for(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh,
             rules: Sequence[tuple[str, object]] = DEFAULT_RULES) -> PartitionSpec:
  """The PartitionSpec of one array. A mesh axis is dropped for a dimension it does not divide
  (e.g. 8 KV heads on 16-way tensor parallelism) or when an earlier dimension already uses it."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for dim, name in zip(shape, axes):
    target = table.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for ax in mesh_axes:
      size = mesh.shape[ax]
      if ax in used or size == 1:
        continue
      if dim % (size * int(np.prod([mesh.shape[k] for k in kept]))) == 0:
        kept.append(ax)
    used.update(kept)
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return PartitionSpec(*out)


def shardings_for(abstract: object, axes: object, mesh: Mesh,
                  rules: Sequence[tuple[str, object]] = DEFAULT_RULES) -> object:
  """NamedShardings for a tree of ShapeDtypeStructs, given its tree of logical PartitionSpecs."""
  return jax.tree_util.tree_map(
      lambda a, p: NamedSharding(mesh, spec_for(a.shape, tuple(p), mesh, rules)),
      abstract, axes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def parse_mesh(spec: str | None) -> dict[str, int] | None:
  """'data=2,tensor=-1' -> {'data': 2, 'tensor': -1}; None stays None."""
  if not spec:
    return None
  out = {}
  for part in spec.split(","):
    name, _, size = part.partition("=")
    if name not in MESH_AXES or not size.lstrip("-").isdigit():
      raise ValueError(f"Bad mesh entry {part!r}: use axis=size with axes {MESH_AXES}, "
                       "e.g. data=2,tensor=-1.")
    out[name] = int(size)
  return out


def mesh_context(mesh: Mesh | None, rules: Sequence = ()):
  """A context that runs traced code under `mesh` with the logical-axis `rules` (logical
  constraints resolve against them); a null context without a mesh."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  if mesh is None:
    return contextlib.nullcontext()
  stack = contextlib.ExitStack()
  stack.enter_context(use_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def use_mesh(mesh: Mesh):
  """The context, entered while a jitted function traces, that makes `mesh` the one its
  code sees. Flax's logical constraints look for it with `jax.sharding.get_abstract_mesh()`,
  which the older `with mesh:` leaves empty on current JAX: under `with mesh:` alone every
  constraint was silently dropped."""
  use_abstract = getattr(jax.sharding, "use_abstract_mesh", None)
  return use_abstract(mesh.abstract_mesh) if use_abstract is not None else mesh
