"""The import graph of the package: every import (module level or inside a function) points down
the layers below, and no module imports itself back through others (no cycles).

Layers, bottom up: what a lower layer imports never depends on a higher one. A module not listed
belongs to the layer of its package (``microdit.train.trainer`` -> ``microdit.train``)."""

import ast
from pathlib import Path

import microdit

ROOT = Path(microdit.__file__).parent
LAYERS = [
    ["microdit", "microdit.progress", "microdit.files", "microdit.locks", "microdit.launch", "microdit.devices",
     "microdit.host_memory", "microdit.pretrained"],
    ["microdit.encoders"],
    ["microdit.data"],
    ["microdit.nn"],
    ["microdit.masking"],
    ["microdit.models"],
    ["microdit.diffusion"],
    # the run's description: its typed config, the configs of its parts and the stage resolver
    ["microdit.train.flops", "microdit.train.optim", "microdit.train.ema", "microdit.train.schedule",
     "microdit.train.cost", "microdit.train.guard", "microdit.train.logging"],
    ["microdit.train.config"],
    ["microdit.train.plan"],
    ["microdit.run"],  # a trained run as its readers see it
    ["microdit.train"],  # the trainer, its step and the checkpoint writer
    ["microdit.eval"],
    ["microdit.experiment"],  # the experiment language: compose a config, a sweep's points
    ["microdit.job_runs"],  # a job's runs, in one process or worker processes
    ["microdit.pipeline"],  # jobs
    ["microdit.perf"],
    ["microdit.cli"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    while module not in RANK:
        module = module.rpartition(".")[0]
    return RANK[module]


def imports() -> dict[str, set[str]]:
    """Module -> the microdit modules it imports (``from microdit.x import y``: ``microdit.x.y``
    when that is a module, else ``microdit.x``)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("microdit"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("microdit")}
        graph[name] = {m for m in found if m != name and m in modules}
    return graph


def test_every_import_points_down():
    graph = imports()
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if layer(b) > layer(a) and not (a == "microdit" or b.startswith(a + ".")))
    assert upward == []


def test_no_import_cycles():
    graph = imports()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if dep.startswith(node + "."):  # a package's __init__ re-exporting its modules
                continue
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_every_module_has_a_layer():
    assert all(layer(m) >= 0 for m in imports())
