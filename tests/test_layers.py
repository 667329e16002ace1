"""The engine's layers, read from the code: no module imports from a layer above its own, and none is unplaced."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top; a module may import its own layer and those before it (docs/architecture.md draws this).
LAYERS = ["core", "models", "compress", "runtimes", "measure", "results", "jobs", "bundle", "api", "cli", "__main__"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "dashboard":
        return len(LAYERS)  # the dashboard sits on top, beside the CLI
    if parts[0] != "engine":
        return None
    if len(parts) == 1 or parts[1] == "__init__":
        return -1  # `engine` itself: the version string, importable from anywhere
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "engine":
                out += [(node.lineno, f"engine.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _modules() -> list[tuple[Path, str]]:
    files = sorted(ROOT.glob("engine/**/*.py")) + sorted(ROOT.glob("dashboard/**/*.py"))
    return [(f, ".".join(f.relative_to(ROOT).with_suffix("").parts)) for f in files if "shims" not in f.parts]


def test_every_engine_module_has_a_layer():
    unplaced = [m for _, m in _modules() if _layer(m) is None]
    assert not unplaced, f"modules in no layer (add their folder to LAYERS and docs/architecture.md): {unplaced}"


def test_no_import_points_up_a_layer():
    upward = []
    for path, module in _modules():
        mine = _layer(module)
        for line, name in _imports(path):
            theirs = _layer(name)
            if theirs is not None and theirs > mine:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {name}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_models_registry_and_user_models_do_not_import_each_other():
    def names(f: str) -> set[str]:
        return {n for _, n in _imports(ROOT / f)}

    assert not ({"engine.models.user"} & names("engine/models/registry.py")
                and {"engine.models.registry"} & names("engine/models/user.py"))
