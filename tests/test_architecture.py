"""The package's shape, read from its source with `ast` (nothing is imported):

(a) no import cycle between modules (function-level and TYPE_CHECKING imports count: each is a
    dependency of one module on another);
(b) core/ imports nothing of the package outside core/ and errors.py;
(c) the layers core < nets < data < io < metrics < tasks < inference < training < app < cli: a module
    imports only its own layer and lower ones (errors.py from anywhere; nanodiffusion/__init__.py,
    the compatibility aliases for the old paths, is exempt), and no module imports an old path;
(d) nothing imports another module's private name;
(e) no library module outside cli/ names a command-line flag or a `nanodiff <command>` in a
    NanodiffError message.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "nanodiffusion"
SRC = Path(__file__).resolve().parent.parent / "src" / PACKAGE
LAYERS = ("core", "nets", "data", "io", "metrics", "tasks", "inference", "training", "app", "cli")
ERRORS = f"{PACKAGE}.errors"


@dataclass
class Import:
    importer: str  # module name
    target: str  # the module imported (a submodule when `from pkg import submodule`)
    line: int
    names: list[str] = field(default_factory=list)  # names taken from the target by `from x import`
    old_path: str | None = None  # the old (aliased) path written in the source, if any


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


SOURCES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in SOURCES.items()}


def old_paths() -> dict[str, str]:
    """nanodiffusion/__init__.py's MOVED: old module path -> new one (full names)."""
    for node in TREES[PACKAGE].body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "MOVED" for t in targets):
            moved = ast.literal_eval(node.value)
            return {f"{PACKAGE}.{old}": f"{PACKAGE}.{new}" for old, new in moved.items()}
    return {}


MOVED = old_paths()


def resolve(name: str) -> tuple[str, str | None]:
    """(the real module, the old path written) for an imported module name."""
    if name in MOVED:
        return MOVED[name], name
    return name, None


def scan(module: str) -> tuple[list[Import], dict[str, str]]:
    """Every import of a package module anywhere in `module`'s source (module level, functions,
    TYPE_CHECKING blocks), relative imports resolved; and the local names bound to package modules."""
    package = module if is_package(SOURCES[module]) else module.rpartition(".")[0]
    found, bound = [], {}
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    target, old = resolve(alias.name)
                    found.append(Import(module, target, node.lineno, old_path=old))
                    if alias.asname:
                        bound[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            source, old = resolve(source)
            names = []
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in SOURCES or submodule in MOVED:
                    target, sub_old = resolve(submodule)
                    found.append(Import(module, target, node.lineno, old_path=sub_old or old))
                    bound[alias.asname or alias.name] = target
                else:
                    names.append(alias.name)
            if names:
                found.append(Import(module, source, node.lineno, names, old_path=old))
    return found, bound


SCANS = {module: scan(module) for module in SOURCES}
IMPORTS = {module: imports for module, (imports, _) in SCANS.items()}


def layer(module: str) -> str | None:
    """The layer a module belongs to: core ... cli; 'errors'; None for the package root and any
    module outside the layers."""
    if module == ERRORS:
        return "errors"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def where(imp: Import) -> str:
    return f"{SOURCES[imp.importer].relative_to(SRC.parent)}:{imp.line}"


def test_the_source_is_found_and_parsed():
    assert {f"{PACKAGE}.{name}" for name in LAYERS} <= set(SOURCES)
    assert ERRORS in SOURCES and f"{PACKAGE}.core.samplers" in SOURCES
    assert MOVED[f"{PACKAGE}.pipelines"] == f"{PACKAGE}.inference.pipelines"
    samplers = {imp.target for imp in IMPORTS[f"{PACKAGE}.core.samplers"]}
    assert ERRORS in samplers


def test_modules_outside_the_layers():
    """Every module but the package root lives in a layer (or is errors.py)."""
    stray = [m for m in SOURCES if m != PACKAGE and layer(m) is None]
    assert not stray, "modules outside the layers: " + ", ".join(stray)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-import (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component: start -> ... -> start."""
    members, start = set(component), component[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & members):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return component


def test_cycle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert cycles(graph) == [["a", "b", "c"], ["e"]]
    assert cycle_path(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    graph = {
        m: {imp.target for imp in IMPORTS[m] if imp.target in SOURCES and imp.target != PACKAGE}
        for m in SOURCES
    }
    found = cycles(graph)
    lines = []
    for component in found:
        path = cycle_path(graph, component)
        steps = []
        for a, b in zip(path, path[1:], strict=False):
            line = next(imp.line for imp in IMPORTS[a] if imp.target == b)
            steps.append(f"{a} (line {line})")
        lines.append(" -> ".join(steps + [path[-1]]))
    assert not found, "import cycles:\n" + "\n".join(lines)


def test_core_imports_only_core_and_errors():
    bad = [
        f"{where(imp)} imports {imp.target}"
        for module in SOURCES
        if layer(module) == "core"
        for imp in IMPORTS[module]
        if layer(imp.target) not in ("core", "errors")
    ]
    assert not bad, "core/ imports outside core/ and errors.py:\n" + "\n".join(bad)


def test_layers_import_only_their_own_and_lower_layers():
    bad = []
    for module in SOURCES:
        if module == PACKAGE or layer(module) is None:
            continue  # the compatibility aliases are exempt; strays fail their own test
        own = -1 if layer(module) == "errors" else LAYERS.index(layer(module))
        for imp in IMPORTS[module]:
            target = layer(imp.target)
            if target == "errors":
                continue
            if target is None or LAYERS.index(target) > own:
                bad.append(f"{where(imp)}: {layer(module)} imports {imp.target} ({target or 'no layer'})")
    assert not bad, f"imports against the layer order {' < '.join(LAYERS)}:\n" + "\n".join(bad)


def test_no_module_imports_an_old_path():
    """The old paths are aliases for users' code, going in the next release; the package itself
    imports the new ones."""
    bad = [
        f"{where(imp)} imports {imp.old_path}: use {imp.target}"
        for module in SOURCES
        for imp in IMPORTS[module]
        if imp.old_path
    ]
    assert not bad, "imports of old paths:\n" + "\n".join(bad)


def private_uses(module: str) -> list[str]:
    """`from x import _name` of a package module, and `x._name` on a package module bound by an import."""
    found = [
        f"{where(imp)} imports {imp.target}.{name}"
        for imp in IMPORTS[module]
        for name in imp.names
        if is_private(name)
    ]
    bound = SCANS[module][1]  # local name -> the package module it stands for
    for node in ast.walk(TREES[module]):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and is_private(node.attr)
            and bound[node.value.id] != module
        ):
            path = SOURCES[module].relative_to(SRC.parent)
            found.append(f"{path}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_private_name_finder_on_a_known_module():
    source = """
from nanodiffusion.core.samplers import _noise, get_sampler
from nanodiffusion.core import denoisers as d
from .schedules import _table
import nanodiffusion.core.guidance as g
def f(x):
    from nanodiffusion.io.config import __all__
    return d._expand(x) + d.expand_sigma(x) + g._private + _noise(x)
"""
    probe = f"{PACKAGE}.core.probe"
    TREES[probe], SOURCES[probe] = ast.parse(source), SRC / "core" / "probe.py"
    try:
        SCANS[probe] = scan(probe)
        IMPORTS[probe] = SCANS[probe][0]
        assert sorted(private_uses(probe)) == [
            "nanodiffusion/core/probe.py:2 imports nanodiffusion.core.samplers._noise",
            "nanodiffusion/core/probe.py:4 imports nanodiffusion.core.schedules._table",
            "nanodiffusion/core/probe.py:8 uses nanodiffusion.core.denoisers._expand",
            "nanodiffusion/core/probe.py:8 uses nanodiffusion.core.guidance._private",
        ]
    finally:
        for table in (TREES, SOURCES, SCANS, IMPORTS):
            del table[probe]


def test_no_module_imports_another_modules_private_name():
    bad = [use for module in SOURCES for use in private_uses(module)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


# (e): a command-line flag in a library error

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
COMMAND = re.compile(r"\bnanodiff\s+[a-z][a-z-]*")
INSTALL = re.compile(r"\b(?:pip|apt-get|apt) install\b[^,;()]*")  # an installer's flags are not ours


def strings_in(node: ast.AST, assigned: dict[str, list[ast.AST]], depth: int = 0) -> list[str]:
    """The string pieces of an expression, following names to what they were assigned (2 levels)."""
    pieces = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            pieces.append(sub.value)
        elif isinstance(sub, ast.Name) and depth < 2:
            for value in assigned.get(sub.id, []):
                pieces += strings_in(value, assigned, depth + 1)
    return pieces


def assignments(scope: ast.AST) -> dict[str, list[ast.AST]]:
    found: dict[str, list[ast.AST]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            found.setdefault(node.target.id, []).append(node.value)
    return found


def raises_nanodiff_error(node: ast.AST) -> ast.Call | None:
    exc = node.exc if isinstance(node, ast.Raise) else None
    if isinstance(exc, ast.Call):
        func = exc.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == "NanodiffError":
            return exc
    return None


def cli_words_in_errors(module: str) -> list[str]:
    tree, found = TREES[module], []
    top = [n for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign)]
    module_level = assignments(ast.Module(body=top, type_ignores=[]))
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
        call = raises_nanodiff_error(node)
        if call is None:
            continue
        scope = min(
            (f for f in functions if f.lineno <= node.lineno <= f.end_lineno),
            key=lambda f: f.end_lineno - f.lineno,
            default=None,
        )
        assigned = {**module_level, **(assignments(scope) if scope else {})}
        text = " ".join(piece for arg in call.args for piece in strings_in(arg, assigned))
        text = INSTALL.sub("", text)
        words = FLAG.findall(text) + COMMAND.findall(text)
        if words:
            path = SOURCES[module].relative_to(SRC.parent)
            found.append(f"{path}:{node.lineno}: {', '.join(dict.fromkeys(words))}")
    return found


def test_the_flag_finder_on_known_messages():
    source = """
HINT = "pip install --no-deps some-package"
def f(x):
    message = f"resume it with --resume, or {x}"
    if x:
        raise NanodiffError(message)
    if not x:
        raise NanodiffError(f"needs weights: {HINT}")
    raise NanodiffError("train one with nanodiff train first; a-b--c and x-->y are no flags")
"""
    tree = ast.parse(source)
    TREES["probe"], SOURCES["probe"] = tree, SRC / "probe.py"
    try:
        assert cli_words_in_errors("probe") == [
            "nanodiffusion/probe.py:6: --resume",
            "nanodiffusion/probe.py:9: nanodiff train",
        ]
    finally:
        del TREES["probe"], SOURCES["probe"]


def test_no_library_error_names_a_command_line_flag():
    bad = [hit for module in SOURCES if layer(module) != "cli" for hit in cli_words_in_errors(module)]
    assert not bad, "NanodiffError messages outside cli/ that name the command line:\n" + "\n".join(bad)


@pytest.mark.parametrize("rule", ["cycles", "core", "layers", "private", "flags"])
def test_rules_are_not_vacuous(rule):
    """Each rule sees the package: there are imports, layers and error messages to check."""
    if rule == "cycles":
        assert sum(len(v) for v in IMPORTS.values()) > 50
    elif rule == "core":
        assert sum(1 for m in SOURCES if layer(m) == "core") >= 5
    elif rule == "layers":
        assert {layer(m) for m in SOURCES} >= set(LAYERS)
    elif rule == "private":
        assert any(imp.names for imports in IMPORTS.values() for imp in imports)
    else:
        assert sum(1 for m in SOURCES for n in ast.walk(TREES[m]) if raises_nanodiff_error(n)) > 50
