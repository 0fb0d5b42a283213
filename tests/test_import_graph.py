"""No import cycles among the project's modules, imports inside functions included.

The graph is read from the source with `ast` (nothing is imported): every `import` and
`from ... import` statement anywhere in a module (top level, functions, methods, `if`
blocks, TYPE_CHECKING blocks) is an edge to the project module it names. `from pkg import
name` points at `pkg.name` when that is a module, else at `pkg`. The implicit import of a
parent package's __init__ is not counted (every submodule import does that).
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Import name -> folder, as setup.py maps them.
PACKAGES = {'promot_t5x': REPO / 'promot_t5x', 'promot_t5x_tasks': REPO / 'tasks',
            'promot_t5x_launch': REPO / 'launch'}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for name, root in PACKAGES.items():
    for path in root.rglob('*.py'):
      parts = list(path.relative_to(root).with_suffix('').parts)
      if parts[-1] == '__init__':
        parts = parts[:-1]
      out['.'.join([name, *parts])] = path
  return out


def _resolve(name: str, modules) -> str | None:
  """The longest prefix of `name` that is a project module."""
  parts = name.split('.')
  while parts:
    candidate = '.'.join(parts)
    if candidate in modules:
      return candidate
    parts.pop()
  return None


def import_graph() -> dict[str, set[str]]:
  """{module: the project modules it imports anywhere in its source}."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(anchor + ([base] if base else []))
        targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names]
      for target in targets:
        resolved = _resolve(target, modules)
        if resolved and resolved != module:
          graph[module].add(resolved)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def test_the_checker_finds_a_cycle_through_a_function_level_import():
  graph = {'a': {'b'}, 'b': set(), 'c': {'a'}}
  assert cycles(graph) == []
  graph['b'].add('c')  # e.g. `def f(): from pkg import c` inside b
  assert cycles(graph) == [['a', 'b', 'c']]


def test_the_graph_sees_imports_inside_functions():
  graph = import_graph()
  # manager.restore_params used to import sources inside the function; now at the top, and
  # sources resolves sources without manager. Both directions are read from the source.
  assert 'promot_t5x.checkpoints.sources' in graph['promot_t5x.checkpoints.manager']
  assert 'promot_t5x.checkpoints.manager' not in graph['promot_t5x.checkpoints.sources']
  assert 'promot_t5x.results' in graph['promot_t5x.reports']
  assert 'promot_t5x.evaluation' not in graph['promot_t5x.reports']


@pytest.mark.parametrize('package', sorted(PACKAGES))
def test_no_import_cycles(package):
  graph = import_graph()
  found = [c for c in cycles(graph) if any(m.split('.')[0] == package for m in c)]
  assert not found, ('import cycles (move the shared part into a module below both): '
                     + '; '.join(' <-> '.join(c) for c in found))
