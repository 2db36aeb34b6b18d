"""The design rules, read from the imports (not trusted): dependencies point down the layers, no import
cycles (function-local imports included: a lazy import must not hide a loop), no `_private` name imported
across modules, and the stack reaches the model only through its public modules."""
from __future__ import annotations

import ast
from pathlib import Path

import herd

ROOT = Path(herd.__file__).parent
BENCHMARKS = ROOT.parent / "benchmarks"

# rank of each part of herd; a module may import only parts of lower or equal rank
RANK = {
    "errors": 0, "config": 0, "home": 0, "gguf_meta": 0,
    "model": 1, "tokenizer": 1,
    "hub": 2,
    "engine": 3, "llm": 3, "generator": 3, "generator_http": 3,
    "serve": 4, "agents": 4, "safety": 4, "rag": 4, "eval": 4, "sdg": 4, "tools": 4,
    "train": 4,
    "cli": 5, "__init__": 5,
}
# extra rules that ranks cannot say
FORBIDDEN = {
    "model": {"tokenizer", "hub", "engine"},
    "tokenizer": {"model", "hub", "engine"},
    "train": {"engine", "serve", "hub", "cli", "agents", "safety", "rag", "eval", "sdg", "tools", "llm"},
    # the stack reaches serve's in-process Generator only through the herd.generator protocol
    "agents": {"serve"},
    "tools": {"serve", "agents"},
    # retrieval is a library under the tools, agents and the server: it never reaches up to them
    "rag": {"serve", "agents", "tools", "engine", "llm"},
}
STACK = {"serve", "agents", "safety", "rag", "eval", "sdg", "tools"}
# what the stack may import from herd.model: the model itself and the sentence encoder; the rest
# (loading, kernels, fused blocks, quantization) is reached through herd.hub and the engine
MODEL_PUBLIC = {"herd.model.llama", "herd.model.bert"}


# ---- reading imports ---------------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    """`herd/serve/app.py` -> `herd.serve.app` (a package's __init__ is the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: str) -> list[tuple[str, str]]:
    """(module, name) of every import of `package` in the file, function-local ones included and
    `if TYPE_CHECKING:` ones left out; `import a.b` gives ("a.b", "")."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == package]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == package:
            found += [(node.module, a.name) for a in node.names]
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for module, name in imports(path, root.name):
            full = f"{module}.{name}" if name else module
            deps.add(full if full in files else module)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports(root: Path) -> list[str]:
    """`from a.b import _name` where a.b is another module (or package) than the importer's own."""
    problems = []
    for path in root.rglob("*.py"):
        me = module_name(path, root)
        for module, name in imports(path, root.name):
            if name.startswith("_") and not name.startswith("__") and module != me:
                problems.append(f"{me} imports {module}.{name}")
    return problems


# ---- the rules on herd ---------------------------------------------------------------------------


def part_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def test_every_module_imports_only_downwards():
    problems = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 10
    for f in files:
        me = part_of(f)
        assert me in RANK, f"herd/{me} has no layer: add it to RANK in tests/test_layers.py (and DESIGN.md)"
        for dep in {m.split(".")[1] for m, _ in imports(f, "herd") if "." in m} - {me}:
            if dep == "__version__":
                continue
            if dep in FORBIDDEN.get(me, set()):
                problems.append(f"{f.relative_to(ROOT)} imports herd.{dep}")
            elif dep in RANK and RANK[dep] > RANK[me]:
                problems.append(f"{f.relative_to(ROOT)} (layer {me}) imports herd.{dep} from above")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    assert cycles(import_graph(ROOT)) == []
    assert cycles(import_graph(BENCHMARKS)) == []


def test_no_private_names_cross_modules():
    assert private_imports(ROOT) == []


def test_the_stack_reaches_the_model_through_its_public_modules():
    problems = []
    for f in ROOT.rglob("*.py"):
        if part_of(f) in STACK:
            for module, name in imports(f, "herd"):
                full = f"{module}.{name}" if name else module
                if module.startswith("herd.model") and full not in MODEL_PUBLIC and module not in MODEL_PUBLIC:
                    problems.append(f"{f.relative_to(ROOT)} imports {full}")
    assert not problems, "\n".join(problems)


# ---- the checkers themselves, on planted faults ----------------------------------------------------


def test_layer_checker_reads_every_kind_of_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from herd.engine.engine import LLM\nimport herd.serve.app\n"
                   "def f():\n    from herd.cli import main\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from herd.agents import x\n")
    assert {m.split(".")[1] for m, _ in imports(bad, "herd")} == {"engine", "serve", "cli"}


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cycle_checker_finds_a_planted_cycle_hidden_in_a_function(tmp_path):
    root = _package(tmp_path, {"a.py": "from pkg.b import g\n",
                               "b.py": "def g():\n    from pkg.c import h\n    return h\n",
                               "c.py": "import pkg.a\nfrom typing import TYPE_CHECKING\n",
                               "d.py": "from pkg.a import g\n"})
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.c"]]
    (root / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    assert cycles(import_graph(root)) == []  # typing-only imports make no loop


def test_private_checker_finds_a_planted_private_import(tmp_path):
    root = _package(tmp_path, {"a.py": "def _helper():\n    pass\n",
                               "sub/__init__.py": "from pkg.sub.x import _y\n", "sub/x.py": "_y = 1\n",
                               "b.py": "from pkg.a import _helper, __doc__\n"})
    assert sorted(private_imports(root)) == ["pkg.b imports pkg.a._helper", "pkg.sub imports pkg.sub.x._y"]
