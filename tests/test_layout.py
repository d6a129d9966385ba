"""The package's layout holds: imports run down the layers, no import circles, no private name
imported from another module, and ml_collections stays at the command-line boundary. Read from
the source with `ast` (nothing is imported), so it takes milliseconds."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "kdknob_jax"

# Rank of each top-level module or package; a module may import only modules of a lower rank
# or, within its own rank, a different package of that rank (peers).
RANKS = {
    "errors": 0, "settings": 0, "sharding": 0, "distributed": 0, "data": 0,
    "ops": 1,
    "models": 2,
    "hf": 3, "decode": 3, "evals": 3, "diagnostics": 3,
    "runs": 4, "train": 4,
    "calibration": 5, "distillation": 5,
    "experiments": 6, "planning": 6,
    "cli": 7, "plan": 7, "calibrate": 7, "distill": 7, "pipeline": 7, "pilot": 7, "evaluate": 7,
    "export": 7, "generate": 7, "compare": 7, "bench": 7, "knob": 7, "__init__": 7,
}
# Peers that must not import each other (siblings of one layer with separate concerns).
INDEPENDENT = [("calibration", "distillation")]
# Only these may import ml_collections: the boundary where a ConfigDict becomes typed settings.
ML_COLLECTIONS_OK = ("settings", "cli", "calibrate", "distill", "pipeline", "pilot", "plan")


def _module_name(path: Path) -> str:
  rel = path.relative_to(PKG.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
  return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"))
          for p in sorted(PKG.rglob("*.py"))}


def _imports(tree: ast.Module, modules: set[str]):
  """(imported module, imported names) of every kdknob_jax import, at any depth."""
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdknob_jax"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in modules:  # `from pkg import module`
          yield sub, []
        else:
          yield node.module, [alias.name]
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("kdknob_jax"):
          yield alias.name, []


def _top(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _graph():
  trees = _modules()
  names = set(trees)
  return trees, {m: list(_imports(t, names)) for m, t in trees.items()}


def test_every_top_level_module_has_a_rank():
  trees, _ = _graph()
  assert sorted({_top(m) for m in trees} - set(RANKS)) == []


def test_imports_run_down_the_layers():
  _, graph = _graph()
  bad = []
  for mod, imports in graph.items():
    src = _top(mod)
    for target, _ in imports:
      dst = _top(target)
      if dst == src:
        continue
      if RANKS[dst] > RANKS[src] or (src, dst) in INDEPENDENT or (dst, src) in INDEPENDENT:
        bad.append(f"{mod} -> {target}")
  assert bad == []


def test_nothing_in_ops_imports_the_models():
  _, graph = _graph()
  bad = [(m, t) for m, imports in graph.items() if _top(m) == "ops"
         for t, _ in imports if _top(t) != "ops"]
  assert bad == []


def test_no_private_name_is_imported_from_another_module():
  _, graph = _graph()
  bad = [(m, t, n) for m, imports in graph.items() for t, names in imports for n in names
         if n.startswith("_") and t != m]
  assert bad == []


def test_no_import_circles():
  _, graph = _graph()
  edges = {m: {t for t, _ in imports if t in graph and t != m} for m, imports in graph.items()}
  # A package's __init__ re-exporting its own modules is not a circle of concerns.
  for m in edges:
    edges[m] = {t for t in edges[m] if not t.startswith(m + ".")}
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges[node]):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])
  assert cycles == []


def test_ml_collections_stays_at_the_boundary():
  trees, _ = _graph()
  users = set()
  for mod, tree in trees.items():
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      if any(n.split(".")[0] == "ml_collections" for n in names):
        users.add(mod)
  allowed = {m for m in users if _top(m) in ML_COLLECTIONS_OK}
  assert sorted(users - allowed) == []
