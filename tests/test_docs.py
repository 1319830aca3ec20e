"""The API reference in docs/api against the public names, without building the site.

Every public name of the package and of its public subpackages is documented by a
`::: module.Name` block under its public path, and every block names an object that
exists. A package's public names are its `__all__`, which must list exactly what its
`__init__.py` re-exports (`from ._x import Y as Y`).
"""

import ast
import importlib
import pathlib
import re
import types

import pytest


DOCS = pathlib.Path(__file__).parents[1] / "docs"
PACKAGES = (
    "adaptive_diffusion",
    "adaptive_diffusion.nn",
    "adaptive_diffusion.data",
    "adaptive_diffusion.metrics",
    "adaptive_diffusion.train",
)
_DIRECTIVE = re.compile(r"^:::\s*(\S+)\s*$", re.MULTILINE)


def _directives(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Each `:::` target in the Markdown pages under `folder`, with the pages naming it."""
    found: dict[str, list[pathlib.Path]] = {}
    for page in sorted(folder.rglob("*.md")):
        for target in _DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            found.setdefault(target, []).append(page)
    return found


def _reexports(package: types.ModuleType) -> list[str]:
    """The names `package/__init__.py` imports as themselves (`import Y as Y`)."""
    assert package.__file__ is not None
    tree = ast.parse(pathlib.Path(package.__file__).read_text(encoding="utf-8"))
    return [
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    ]


def _resolve(target: str) -> object:
    """The object a dotted path names: the longest importable module prefix, then
    attributes."""
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(target)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_the_reexports(name):
    package = importlib.import_module(name)
    assert hasattr(package, "__all__"), f"{name} has no __all__"
    assert sorted(package.__all__) == sorted(_reexports(package))
    assert len(set(package.__all__)) == len(package.__all__)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_is_documented(name):
    package = importlib.import_module(name)
    documented = _directives(DOCS / "api")
    missing = [n for n in package.__all__ if f"{name}.{n}" not in documented]
    assert not missing, f"no `::: {name}.X` block in docs/api for: {missing}"


def test_every_directive_names_an_object():
    directives = _directives(DOCS)
    assert directives
    broken = []
    for target, pages in directives.items():
        if not target.startswith("adaptive_diffusion"):
            broken.append((target, "not in adaptive_diffusion", pages))
            continue
        try:
            _resolve(target)
        except (ImportError, AttributeError) as error:
            broken.append((target, repr(error), pages))
    assert not broken


def test_each_name_is_documented_once():
    repeated = {t: p for t, p in _directives(DOCS).items() if len(p) > 1}
    assert not repeated, f"documented more than once (mkdocstrings would duplicate ids): {repeated}"
