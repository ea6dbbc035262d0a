"""The shape of the code, held as tests: no import circles, imports that point down the layers,
a short top level, ``__all__`` in every public module, plugins on public paths only, and tests
that use no other module's private members.

Each would catch: a new circle (``config`` importing the host and the host importing ``config``
back, even through a late import inside a function); a lower layer importing a higher one (the
runtime importing training); a module dropped at the top of ``wml_framework``; a public module
without ``__all__``; a built-in plugin reaching into a private module; a test calling ``loop._step``.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import pkgutil
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wml_framework", "wml_plugins", "wml_reference")

#: the core's floors, top to bottom: a module may import its own floor's and those below it
LAYERS = (
    "cli",
    "commands",
    "compare",
    "runner",
    "report | verify",
    "training",
    "evaluation",
    "text",
    "config",
    "plugin_system",
    "api | hookspecs",
    "runtime",
)
#: the paths a plugin may import (docs/api.md, "Public import paths")
PUBLIC_FOR_PLUGINS = {
    "wml_framework", "wml_framework.api", "wml_framework.hookspecs", "wml_framework.config",
    "wml_framework.runtime.atomic", "wml_framework.runtime.distributed",
    "wml_framework.text.corpus", "wml_framework.text.tokenizer", "wml_framework.text.tokens",
    "wml_framework.evaluation", "wml_framework.evaluation.heldout", "wml_framework.evaluation.minimal_pairs",
    "wml_framework.evaluation.models", "wml_framework.evaluation.run_reader", "wml_framework.evaluation.submission",
    "wml_framework.training.schedules", "wml_framework.training.attention", "wml_framework.training.progress",
}


@pytest.fixture(scope="module")
def graph():
    # imports inside functions count (a late import is still an arrow); typing-only ones do not run
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


def _edges(graph, prefix: str = "") -> dict[str, set[str]]:
    return {m: {d for d in graph.find_modules_directly_imported_by(m) if d.startswith(PACKAGES)}
            for m in graph.modules if m.startswith(prefix or PACKAGES)}


def test_the_import_graph_has_no_circle(graph):
    try:
        tuple(graphlib.TopologicalSorter(_edges(graph)).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_sees_a_circle_closed_by_a_late_import(tmp_path, monkeypatch):
    """The check itself can fail: on a package whose circle is closed by an import inside a function,
    the same graph (grimp) and the same check (graphlib) find it."""
    pkg = tmp_path / "circular_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from circular_pkg import high  # late\n    return high\n")
    (pkg / "high.py").write_text("from circular_pkg import low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    circular = grimp.build_graph("circular_pkg", exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: set(circular.find_modules_directly_imported_by(m)) for m in circular.modules}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(edges).static_order())


def test_imports_point_down_the_layers(graph):
    layers = [grimp.Layer(*(name.strip() for name in layer.split("|"))) for layer in LAYERS]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers={"wml_framework"})
    chains = sorted(" -> ".join(route.heads and [*route.heads][:1] + list(route.middle) + [*route.tails][:1])
                    for dep in illegal for route in dep.routes)
    assert not illegal, "imports that run back up the layers:\n" + "\n".join(chains)


def test_every_core_module_belongs_to_a_layer(graph):
    named = {n.strip() for layer in LAYERS for n in layer.split("|")}
    top = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1 and m.startswith("wml_framework.")}
    unplaced = sorted(top - named - {"_moved", "__main__", "data"})
    assert not unplaced, f"modules or packages of wml_framework in no layer of LAYERS: {unplaced}"


def test_the_top_of_the_core_stays_short():
    modules = sorted(p.name for p in (ROOT / "wml_framework").glob("*.py"))
    assert len(modules) <= 10, modules


def _public_modules():
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, f"{package}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                yield importlib.import_module(info.name)


def test_every_public_module_declares_all():
    missing = [m.__name__ for m in _public_modules() if "__all__" not in vars(m)]
    assert not missing, f"public modules without __all__ (or make them private with a leading underscore): {missing}"


def test_all_names_exist():
    wrong = [f"{m.__name__}.{n}" for m in _public_modules() for n in vars(m).get("__all__", ()) if not hasattr(m, n)]
    assert not wrong


def test_built_in_plugins_use_public_paths_only(graph):
    reached = {d for m in graph.modules if m.startswith("wml_plugins")
               for d in graph.find_modules_directly_imported_by(m) if d.startswith("wml_framework")}
    assert reached <= PUBLIC_FOR_PLUGINS, sorted(reached - PUBLIC_FOR_PLUGINS)


def test_the_public_paths_are_documented():
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert all(f"`{path}`" in doc for path in PUBLIC_FOR_PLUGINS), \
        sorted(p for p in PUBLIC_FOR_PLUGINS if f"`{p}`" not in doc)


def _private_uses(source: str) -> list[str]:
    """``obj._name`` (not on ``self``/``cls``) and ``from wml... import _name`` in one file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wml"):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return sorted(found, key=lambda s: int(s.split(":")[0].split()[1]))


def test_the_private_member_check_can_fail():
    assert _private_uses("loop._step()\nfrom wml_framework.text.tokens import _batches\nself._x = 1\n") == [
        "line 1: ._step", "line 2: import _batches"]


def test_tests_and_benchmarks_use_no_private_member_of_another_module():
    found = {str(f.relative_to(ROOT)): uses for d in ("tests", "benchmarks") for f in sorted((ROOT / d).rglob("*.py"))
             if (uses := _private_uses(f.read_text(encoding="utf-8")))}
    assert not found, found


def test_old_import_paths_still_work_with_a_warning():
    import sys
    import warnings

    sys.modules.pop("wml_framework.heldout", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from wml_framework.heldout import block_starts  # noqa: F401 - the path plugins were told to use

        from wml_framework import tokens
    from wml_framework.teacher import family_for, load_teacher  # noqa: F401 - teacher.py, split in two

    from wml_framework.evaluation.heldout import block_starts as new
    from wml_framework.text.tokens import prepare_for
    from wml_framework.training.families import family_for as moved

    assert block_starts is new and tokens.prepare_for is prepare_for and family_for is moved
    assert any("wml_framework.evaluation.heldout" in str(w.message) for w in caught
               if issubclass(w.category, DeprecationWarning))
