"""Every public name's docstring example runs as written.

For each name in `keras_resume.__all__` the example (the `>>>` lines of its
docstring; for a class, the class docstring; for a constant, the string right
after its assignment) is run by `doctest` in fresh globals: it imports what it
uses and builds its own tiny model, data and temporary directory. A name with
no example fails. The examples run on the backend `KERAS_BACKEND` names, as the
rest of the in-process suite does (see tests/conftest.py).
"""

import ast
import doctest
import importlib
import inspect
import tempfile

import pytest

import keras_resume as kr

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(autouse=True)
def inside_tmp_path(tmp_path, monkeypatch):
    """The examples' `tempfile.mkdtemp()` and relative paths land under `tmp_path`."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def source_docstring(module, name: str) -> tuple[str | None, int]:
    """The docstring of the top-level `name` in `module`'s source, and the 0-based
    line it starts on. For a constant it is the string literal right after
    `name = ...` (PEP 257's attribute docstring, what Sphinx shows)."""
    body = ast.parse(inspect.getsource(module)).body
    for node, following in zip(body, [*body[1:], None]):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            docstring = node.body[0]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            docstring = following
        else:
            continue
        if isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant):
            if isinstance(docstring.value.value, str):
                return docstring.value.value, docstring.lineno - 1
        return None, node.lineno - 1
    return None, 0


def example_of(name: str) -> doctest.DocTest:
    """The doctest of `keras_resume.<name>`'s own docstring, with fresh globals."""
    obj = getattr(kr, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        module = inspect.getmodule(obj)
        _, lineno = source_docstring(module, obj.__name__)
        # A class's own docstring: `inspect.getdoc` would inherit its base's.
        doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    else:  # a constant: an int's __doc__ is int's own, so read the source
        module = importlib.import_module(kr._EXPORTS[name])
        doc, lineno = source_docstring(module, name)
    filename = inspect.getsourcefile(module)
    qualified = f"keras_resume.{name}"
    if not doc or ">>>" not in doc:
        pytest.fail(
            f"{qualified} has no `>>>` example in its docstring ({filename}); add an "
            "'Example:' section that runs as written",
            pytrace=False,
        )
    globs = {"__name__": f"doctest_{name}"}
    return doctest.DocTestParser().get_doctest(doc, globs, qualified, filename, lineno)


@pytest.mark.parametrize("name", kr.__all__)
def test_docstring_example_runs(name):
    example = example_of(name)
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    result = runner.run(example, out=report.append)
    assert result.attempted > 0
    assert result.failed == 0, f"the example of keras_resume.{name} failed:\n" + "".join(report)
