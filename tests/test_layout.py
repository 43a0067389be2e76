"""The layout of the code base: where Keras internals may be used, and how big things get.

Measured on the source with `ast`, not by convention: a module outside
keras_resume/backend/ that imports `keras.src`, `jax`, `tensorflow` or `torch`
(anywhere, a function body included) fails here, and so does a module or a
function that outgrows its limit. `import keras` (the public API) is allowed
everywhere.
"""

import ast
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_resume"
BACKEND = PACKAGE / "backend"

FORBIDDEN = ("keras.src", "jax", "tensorflow", "torch")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Being split in issue 15: modules over MAX_MODULE_LINES today, relative to keras_resume/.
# Empty this set as each one is split; an entry that fits the limit fails the test.
MODULES_BEING_SPLIT = {
    "runs.py",
    "directory.py",
    "storage.py",
    "manifest.py",
    "state/model_state.py",
    "callbacks/session.py",
}

# Being split in issue 15: functions over MAX_FUNCTION_LINES today, by qualified name.
# Empty this set as each one is split; an entry that fits the limit fails the test.
FUNCTIONS_BEING_SPLIT = {
    "keras_resume.runs.export_model",
    "keras_resume.plotting.plot",
    "keras_resume.runs.prune",
}


def _modules():
    found = sorted(PACKAGE.rglob("*.py"))
    assert len(found) > 30, found  # the walk found the package
    return found


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_forbidden(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in FORBIDDEN)


def _imported(tree: ast.Module):
    """`(line, module)` for every import in `tree`, at any depth, absolute ones only.

    `from keras import src` counts as `keras.src`; `importlib.import_module("x")`
    and `__import__("x")` with a literal name count as imports of `x`.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            name = ast.unparse(node.func)
            first = node.args[0]
            if name in ("importlib.import_module", "import_module", "__import__") and (
                isinstance(first, ast.Constant) and isinstance(first.value, str)
            ):
                yield node.lineno, first.value


def _functions(tree: ast.Module, prefix: str):
    """`(qualified name, lines)` of every function and method, nested ones included."""

    def walk(node, qualname):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{qualname}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield inner, child.end_lineno - child.lineno + 1
                yield from walk(child, inner)
            else:
                yield from walk(child, qualname)

    yield from walk(tree, prefix)


def test_only_backend_imports_keras_internals():
    offenders = []
    for path in _modules():
        if BACKEND in path.parents:
            continue
        for line, module in _imported(_parse(path)):
            if _is_forbidden(module):
                offenders.append(f"keras_resume/{_relative(path)}:{line}: {module}")
    assert not offenders, (
        "Only keras_resume/backend/ may import Keras internals or a backend's own "
        "package; add a function there and call it:\n" + "\n".join(offenders)
    )


def test_the_import_check_catches_every_form():
    source = """
import jax
import tensorflow as tf
from torch.utils import data
from keras import src
import keras
from keras import ops

def late():
    from keras.src.saving import saving_lib
    importlib.import_module("torch")
"""
    caught = sorted({m for _, m in _imported(ast.parse(source)) if _is_forbidden(m)})
    assert caught == [
        "jax",
        "keras.src",
        "keras.src.saving",
        "keras.src.saving.saving_lib",
        "tensorflow",
        "torch",
        "torch.utils",
        "torch.utils.data",
    ]


def test_modules_fit_the_line_limit():
    measured = {_relative(path): len(path.read_text().splitlines()) for path in _modules()}
    too_long = [
        f"keras_resume/{name}: {lines} lines"
        for name, lines in sorted(measured.items())
        if lines > MAX_MODULE_LINES and name not in MODULES_BEING_SPLIT
    ]
    assert not too_long, f"Over {MAX_MODULE_LINES} lines; split by concern:\n" + "\n".join(too_long)
    fit_now = sorted(n for n in MODULES_BEING_SPLIT if measured.get(n, 0) <= MAX_MODULE_LINES)
    assert not fit_now, f"Gone or within the limit; remove from MODULES_BEING_SPLIT: {fit_now}"


def test_functions_fit_the_line_limit():
    too_long, seen = [], set()
    for path in _modules():
        for qualname, lines in _functions(_parse(path), _dotted(path)):
            if qualname in FUNCTIONS_BEING_SPLIT:
                seen.add(qualname)
                continue
            if lines > MAX_FUNCTION_LINES:
                too_long.append(f"{qualname}: {lines} lines")
    assert not too_long, (
        f"Over {MAX_FUNCTION_LINES} lines; split into well-named helpers:\n" + "\n".join(too_long)
    )
    measured = {
        q: n
        for path in _modules()
        for q, n in _functions(_parse(path), _dotted(path))
        if q in FUNCTIONS_BEING_SPLIT
    }
    fit_now = sorted(q for q in FUNCTIONS_BEING_SPLIT if measured.get(q, 0) <= MAX_FUNCTION_LINES)
    assert not fit_now, f"Gone or within the limit; remove from FUNCTIONS_BEING_SPLIT: {fit_now}"


def _backend_imports(path: Path) -> set[str]:
    """The modules of keras_resume/backend/ that `path` imports (`__init__` for the package)."""
    tree = _parse(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:  # from .x import y; from . import x
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    for _, module in _imported(tree):
        if module == "keras_resume.backend":
            found.add("__init__")
        elif module.startswith("keras_resume.backend."):
            found.add(module.split(".")[2])
    return found


def test_backend_modules_import_only_lower_modules():
    modules = [path for path in BACKEND.glob("*.py") if path.stem != "__init__"]
    graph = {path.stem: _backend_imports(path) for path in modules}
    assert len(graph) >= 5, graph
    importing_package = sorted(m for m, deps in graph.items() if "__init__" in deps)
    assert not importing_package, f"{importing_package} import the package's __init__"
    unknown = {d for deps in graph.values() for d in deps} - set(graph)
    assert not unknown, unknown
    done: set = set()

    def visit(module, path):
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module not in done:
            for dep in sorted(graph[module]):
                visit(dep, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_backend_modules_say_their_job_and_shadow_no_name():
    from keras_resume import backend

    for path in BACKEND.glob("*.py"):
        assert ast.get_docstring(_parse(path)), f"{path.name} has no module docstring"
        if path.stem != "__init__":
            # `backend.X` must stay the function X, never the submodule X.
            assert path.stem not in backend.__all__, path.stem
            assert isinstance(getattr(backend, path.stem, types), types.ModuleType), path.stem


def test_importing_the_backend_package_loads_no_backend_package_of_its_own():
    # `import keras` loads the backend it runs on; keras_resume.backend adds nothing
    # but its own modules (jax, torch and tensorflow are imported where they are used).
    code = (
        "import sys, keras; before = set(sys.modules); import keras_resume.backend; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['keras_resume']", proc.stdout
