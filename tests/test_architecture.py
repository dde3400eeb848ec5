"""The package's shape: imports point one way, no cycles (lazy imports included), small modules.

Checked on the source (ast), so a lazy ``import`` inside a function counts like a top-level one.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("whisper_t5x", "partitioning")
MAX_LINES = 600
# Layers, bottom up: a module may import only from its own layer or below (app is the top).
LAYERS = [
    {"whisper_t5x.audio.constants"},
    {"whisper_t5x.model", "whisper_t5x.text", "whisper_t5x.audio", "whisper_t5x.checkpoints",
     "whisper_t5x.compile_cache", "whisper_t5x.program_cache", "whisper_t5x.results"},
    {"whisper_t5x.decoding", "whisper_t5x.model.pretrained"},  # the HF-style facade generates with decoding
    {"whisper_t5x.longform"},
    {"whisper_t5x.pipeline"},
    {"whisper_t5x.app", "whisper_t5x.main"},
]


def _modules():
    mods = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mods[name[:-9] if name.endswith(".__init__") else name] = path
    return mods


MODULES = _modules()


def _imports(name, path):
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                parts = name.split(".")
                if not path.endswith("__init__.py"):
                    parts = parts[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + [node.module])
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES else base) if (full in MODULES or base in MODULES) else None
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module):
    best = None
    for k, names in enumerate(LAYERS):
        for n in names:
            if module == n or module.startswith(n + "."):
                if best is None or len(n) > best[1]:
                    best = (k, len(n))
    return None if best is None else best[0]


def test_no_import_cycles():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_partitioning_never_imports_whisper_t5x():
    assert [m for m in GRAPH if m.startswith("partitioning") and any(d.startswith("whisper_t5x") for d in GRAPH[m])] \
        == []


def test_imports_point_down_the_layers():
    upward = []
    for m, deps in GRAPH.items():
        lm = _layer(m)
        if lm is None:
            continue
        for d in deps:
            ld = _layer(d)
            if ld is not None and ld > lm:
                upward.append((m, d))
    assert upward == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    assert sum(1 for _ in open(MODULES[module], encoding="utf-8")) <= MAX_LINES


def test_package_inits_only_reexport():
    for m, path in MODULES.items():
        if not path.endswith("__init__.py"):
            continue
        for node in ast.parse(open(path, encoding="utf-8").read()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                # whisper_t5x/__init__.py resolves its exports lazily (a re-export, not logic).
                assert node.name == "__getattr__" or (m == "whisper_t5x.app.serving" and node.name in
                                                      ("main", "create_app")), (m, node.name)
