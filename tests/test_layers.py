"""Arrows point down: surfaces -> application -> definitions -> resources (README, Layout).

Checked on each module's top-level imports (what loads with it), so a layer can never pull a
layer above it in; a call-time import is a deliberate exception and is named in a comment where
it is made.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "narra_dagster"

# layer -> the narra_dagster modules (prefixes) it must not import at top level
FORBIDDEN = {
    "resources": ("narra_dagster.core", "narra_dagster.defs", "narra_dagster.registry",
                  "narra_dagster.app", "narra_dagster.cli", "narra_dagster.definitions"),
    "core": ("narra_dagster.defs", "narra_dagster.registry", "narra_dagster.app",
             "narra_dagster.cli", "narra_dagster.definitions"),
    "defs": ("narra_dagster.app", "narra_dagster.cli", "narra_dagster.definitions"),
    "app": ("narra_dagster.cli",),
}
# what resources may use of core: the pieces with no Dagster definitions in them
RESOURCES_MAY_USE = ("narra_dagster.core.media", "narra_dagster.core.threads")


def _top_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            # `from narra_dagster import registry` imports the module narra_dagster.registry
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_no_layer_imports_a_layer_above_it():
    wrong = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in _top_level_imports(path):
                if name.startswith(forbidden) and not (
                        layer == "resources" and name.startswith(RESOURCES_MAY_USE)):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_each_kind_folder_imports_no_other_kind():
    """A kind's folder is self-contained: it may use core, resources and the search settings,
    never another kind's folder."""
    kinds = [p.name for p in (PACKAGE / "defs").iterdir()
             if p.is_dir() and (p / "kind.py").exists()]
    wrong = []
    for kind in kinds:
        others = tuple(f"narra_dagster.defs.{k}" for k in kinds if k != kind)
        for path in sorted((PACKAGE / "defs" / kind).rglob("*.py")):
            wrong += [f"{path.relative_to(PACKAGE.parent)} imports {name}"
                      for name in _top_level_imports(path) if name.startswith(others)]
    assert len(kinds) >= 3 and not wrong, "\n".join(wrong)
