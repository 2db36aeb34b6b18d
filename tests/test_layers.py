"""The one design rule: dependencies point down the layers (read from the imports, not trusted)."""
import ast
from pathlib import Path

import herd

ROOT = Path(herd.__file__).parent

# rank of each part of herd; a module may import only parts of lower or equal rank
RANK = {
    "errors": 0, "config": 0,
    "model": 1, "tokenizer": 1,
    "hub": 2,
    "engine": 3,
    "serve": 4, "agents": 4, "safety": 4, "rag": 4, "eval": 4, "sdg": 4, "tools": 4,
    "cli": 5, "__init__": 5,
}
# extra rules that ranks cannot say
FORBIDDEN = {
    "model": {"tokenizer", "hub", "engine"},
    "tokenizer": {"model", "hub", "engine"},
    "train": {"engine", "serve", "hub", "cli", "agents", "safety", "rag", "eval", "sdg", "tools"},
}


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def herd_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            bits = n.split(".")
            if bits[0] == "herd" and len(bits) > 1:
                found.add(bits[1])
    return found


def test_every_module_imports_only_downwards():
    problems = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 10
    for f in files:
        me = part_of(f)
        for dep in herd_imports(f) - {me}:
            if dep == "__version__":
                continue
            if dep in FORBIDDEN.get(me, set()):
                problems.append(f"{f.relative_to(ROOT)} imports herd.{dep}")
            elif me in RANK and dep in RANK and RANK[dep] > RANK[me]:
                problems.append(f"{f.relative_to(ROOT)} (layer {me}) imports herd.{dep} from above")
    assert not problems, "\n".join(problems)


def test_layer_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from herd.engine.engine import LLM\nimport herd.serve.app\n")
    assert herd_imports(bad) == {"engine", "serve"}
