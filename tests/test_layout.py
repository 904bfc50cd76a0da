"""The README's "Layout" block matches the package, and only the registry lists the kinds.

The Layout block is a tree, one entry per line::

    narra_dagster/              the installed package        <- a folder: its name ends with "/"
      registry.py               the only list of kinds       <- inside the folder above
      defs/                     ...
        video/                  ...
          assets.py, frames.py  ...                          <- several names, comma-separated

Each line is two spaces of indentation per level, the name (or names, ", "-separated), then two
or more spaces and a few words of description. A line is a child of the nearest folder line
above it with one level less indentation; lines at the left margin are paths from the
repository's root.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PACKAGE = REPO / "narra_dagster"
INDENT = 2
KIND_NAMES = frozenset({"video", "image", "document"})


def layout_block(readme: str) -> list[str]:
    """The lines of the first fenced code block under the README's ``## Layout`` heading."""
    section = re.search(r"^## Layout[ \t]*\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## Layout' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "README.md's Layout section has no fenced code block"
    return block.group(1).splitlines()


def layout_paths(lines: list[str]) -> list[str]:
    """Every path the tree names, relative to the repository's root; folders end with ``/``.

    Raises:
        AssertionError: on a line whose indentation is not a multiple of two spaces or that is
            indented under something that is not a folder.
    """
    paths: list[str] = []
    parents: list[str | None] = []  # parents[d]: the folder line at depth d (None: not a folder)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        depth, rest = divmod(indent, INDENT)
        assert rest == 0 and depth <= len(parents), (
            f"Layout block line {number} is indented {indent} spaces, which puts it under no "
            f"folder line (two spaces per level): {line!r}")
        del parents[depth:]
        assert not parents or parents[-1] is not None, (
            f"Layout block line {number} is indented under a line that is not one folder: {line!r}")
        names = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        prefix = parents[-1] if parents else ""
        entries = [prefix + name.strip() for name in names.split(",") if name.strip()]
        paths.extend(entries)
        folders = [entry for entry in entries if entry.endswith("/")]
        if len(entries) == 1 and folders:
            parents.append(folders[0])
        else:  # a file, or several names: nothing may be indented under it
            parents.append(None)
    return paths


def _only_docstring(module: Path) -> bool:
    body = ast.parse(module.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
               for node in body)


def package_paths() -> set[str]:
    """What the Layout block must name, relative to the repository's root: every package folder
    under ``narra_dagster/``, and every module directly inside ``narra_dagster/``, its
    ``defs/<folder>/``, ``core/``, ``app/`` and ``resources/``. An ``__init__.py`` counts only
    when it holds more than a docstring (``resources/__init__.py`` builds the default resources;
    ``defs/video/__init__.py`` only names its folder)."""
    def rel(path: Path) -> str:
        return path.relative_to(REPO).as_posix() + ("/" if path.is_dir() else "")

    wanted = {rel(init.parent) for init in PACKAGE.rglob("__init__.py")
              if "__pycache__" not in init.parts}
    folders = [PACKAGE, PACKAGE / "core", PACKAGE / "app", PACKAGE / "resources",
               *(d for d in (PACKAGE / "defs").iterdir() if (d / "__init__.py").exists())]
    for folder in folders:
        for module in folder.glob("*.py"):
            if module.name == "__init__.py" and _only_docstring(module):
                continue
            wanted.add(rel(module))
    return wanted


def test_readme_layout_matches_the_package():
    named = layout_paths(layout_block(README.read_text(encoding="utf-8")))
    absent = sorted(p for p in named
                    if not ((REPO / p).is_dir() if p.endswith("/") else (REPO / p).is_file()))
    unnamed = sorted(package_paths() - set(named))
    problems = []
    if absent:
        problems.append("named in README's Layout block but not in the repository (extra):\n  "
                        + "\n  ".join(absent))
    if unnamed:
        problems.append("in the package but not named in README's Layout block (missing):\n  "
                        + "\n  ".join(unnamed))
    assert not problems, "\n".join(problems)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the constant nodes that are docstrings (module, class, function)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def kind_lists(source: str) -> list[int]:
    """Lines of ``source`` that list every kind name as string literals: one line holding all of
    ``"video"``, ``"image"`` and ``"document"`` as strings, or one dict (keys), tuple, list or set
    literal holding all three, even across lines (reported at its first line). Words inside a
    docstring or a longer string (``"video or audio"``, ``"videos"``) do not count."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    by_line: dict[int, set[str]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and node.value in KIND_NAMES
                and id(node) not in docstrings):
            by_line.setdefault(node.lineno, set()).add(node.value)
    found = {line for line, kinds in by_line.items() if kinds == KIND_NAMES}
    for node in ast.walk(tree):
        items = (node.keys if isinstance(node, ast.Dict)
                 else node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [])
        values = {item.value for item in items
                  if isinstance(item, ast.Constant) and isinstance(item.value, str)}
        if KIND_NAMES <= values:
            found.add(node.lineno)
    return sorted(found)


def test_kind_lists_catch_lookup_tables_not_prose():
    assert kind_lists('LABELS = {"video": 1, "image": 2, "document": 3}\n') == [1]
    assert kind_lists('KINDS = (\n    "video",\n    "image",\n    "document",\n)\n') == [1]
    assert kind_lists('if k not in ("video", "image", "document"):\n    pass\n') == [1]
    assert kind_lists('def f():\n    """One of ``["video", "image", "document"]``."""\n') == []
    assert kind_lists('X = "video, image or document"\nY = {"videos", "images", "documents"}\n') == []


def test_only_the_registry_lists_the_kinds():
    registry = PACKAGE / "registry.py"
    offenders = [
        f"{module.relative_to(REPO).as_posix()}:{line}: "
        f"{module.read_text(encoding='utf-8').splitlines()[line - 1].strip()}"
        for module in sorted(PACKAGE.rglob("*.py"))
        if module != registry and "__pycache__" not in module.parts
        for line in kind_lists(module.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        "only narra_dagster/registry.py may list the media kinds, so that a new kind needs no "
        "edit elsewhere; read them from the registry (registry.names(), registry.get(name)), or "
        "leave the check to a caller that does, instead of naming video, image and document "
        "here:\n  "
        + "\n  ".join(offenders))
