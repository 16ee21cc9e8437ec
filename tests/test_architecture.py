"""The layout's rules, checked on the source: stages import only stages below them, no import cycles, no
imports hidden in functions outside the command line, `trainer.spec` and `trainer.config` free of
TensorFlow, and no module shadowing an API name."""
import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("trainer", "serving")
# Stages from the bottom up; a module may import its own stage and the ones before it. Leaves (errors,
# files, tables, registry, keras_env) sit below every stage; the command line sits on top of both packages.
STAGES = ["trainer.<leaf>", "trainer.spec", "trainer.config", "trainer.data", "trainer.preprocessing",
          "trainer.layers", "trainer.losses", "trainer.models", "trainer.training", "trainer.evaluation",
          "trainer.api", "serving.tf_serving", "serving.savedmodel", "serving.onnx", "serving.item_store",
          "serving.service",
          "trainer.cli"]
LEAVES = {"trainer.errors", "trainer.files", "trainer.tables", "trainer.registry", "trainer.keras_env"}
PACKAGE_ROOTS = {"trainer", "serving"}  # their __init__ modules: lazy API names, imported by everything
COMMAND_LINE = {"trainer.cli", "trainer.task"}


def _modules() -> dict[str, str]:
    out = {}
    for top in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> list[tuple[str, bool]]:
    """(imported project module, inside a function?) for every import statement of the module."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: from the package, `level - 1` packages up
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for target in names:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, id(node) in in_function))
    return found


def _stage(module: str) -> int:
    if module in COMMAND_LINE:
        return STAGES.index("trainer.cli")
    if module in LEAVES or module in PACKAGE_ROOTS:
        return 0
    return max(i for i, s in enumerate(STAGES) if module == s or module.startswith(s + "."))


def test_every_module_belongs_to_a_stage():
    for module in MODULES:
        _stage(module)  # raises ValueError (max of nothing) for a module outside every stage


def test_stages_import_only_stages_below_them():
    upward = [f"{m} (stage {STAGES[_stage(m)]}) imports {t} (stage {STAGES[_stage(t)]})"
              for m, path in MODULES.items() for t, _ in _imports(m, path)
              if t not in PACKAGE_ROOTS and _stage(t) > _stage(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = {m: {t for t, _ in _imports(m, p) if t not in PACKAGE_ROOTS} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_only_in_the_command_line():
    hidden = [f"{m} imports {t} inside a function" for m, p in MODULES.items() if m not in COMMAND_LINE
              for t, in_function in _imports(m, p) if in_function]
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize("module", ["trainer.spec", "trainer.config", "trainer.cli", "serving.item_store.reader"])
def test_importing_leaves_tensorflow_unloaded(module):
    code = f"import sys, {module}; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_no_module_shadows_an_api_name():
    import serving
    import trainer
    for package in (trainer, serving):
        folder = os.path.dirname(package.__file__)
        for name in package.__all__:
            assert not os.path.exists(os.path.join(folder, f"{name}.py")), name
            assert not os.path.isdir(os.path.join(folder, name)), name
