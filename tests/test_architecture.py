"""The layers of docs/architecture.md, enforced: no import cycles, no import up the layers, small rooms.

Every module of rn_deploy (and train/, installed as rn_deploy.train) is parsed with ``ast``; every
import it makes (module level and inside functions, relative and absolute, and type-only imports under
``if TYPE_CHECKING:``) is an edge. No module is over MAX_LINES lines, each opens with a docstring whose
first line says its concern, and datasets sit below training: only the CLI and the demo import
rn_deploy.train.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Layer of each module (the longest matching prefix wins); a module may import its own layer or below.
LAYERS = ["foundation", "model", "artifacts", "runtime", "verdicts", "service", "surface"]
LAYER_OF = {
    "rn_deploy.errors": "foundation", "rn_deploy.names": "foundation", "rn_deploy._io": "foundation", "rn_deploy.log": "foundation",
    "rn_deploy.version": "foundation", "rn_deploy.filekind": "foundation", "rn_deploy.preprocess": "foundation",
    "rn_deploy.strictjson": "foundation", "rn_deploy.metrics": "foundation", "rn_deploy.summary": "foundation",
    "rn_deploy.datasets": "foundation",
    "rn_deploy.models": "model", "rn_deploy.checkpoint": "model", "rn_deploy.importers": "model", "rn_deploy.train": "model",
    "rn_deploy.sizes": "model", "rn_deploy.modeltable": "model",
    "rn_deploy.build": "artifacts",  # the builder's old import path (re-exports rn_deploy.builder)
    "rn_deploy.onnxfile": "artifacts", "rn_deploy.export": "artifacts", "rn_deploy.builder": "artifacts",
    "rn_deploy.triton": "artifacts", "rn_deploy.foreign": "artifacts",
    # The manifest format and profiles: written by build, read by the runtime checks; a description of an artifact.
    "rn_deploy.runtime.manifest": "artifacts",
    "rn_deploy.runtime": "runtime", "rn_deploy.runners": "runtime", "rn_deploy.engine": "runtime",
    "rn_deploy.compare": "verdicts", "rn_deploy.benchmark": "verdicts", "rn_deploy.evaluate": "verdicts",
    "rn_deploy.validate": "verdicts", "rn_deploy.report": "verdicts", "rn_deploy.doctor": "verdicts",
    "rn_deploy.reference": "verdicts", "rn_deploy.results": "verdicts",
    # quantize writes a Q/DQ artifact but only behind its accuracy gate (evaluate on real data): a verdict that writes.
    "rn_deploy.quantize": "verdicts",
    # optimize composes the artifacts (export, quantize, build) with the verdicts (eval's gates, compare, timing).
    "rn_deploy.optimize": "verdicts",
    "rn_deploy.serve": "service", "rn_deploy.client": "service", "rn_deploy.loadtest": "service",
    "rn_deploy.serverstats": "service", "rn_deploy.httpload": "service", "rn_deploy.http1": "service", "rn_deploy.loadlevel": "service", "rn_deploy.tune": "service", "rn_deploy.tuned": "artifacts",
    "rn_deploy.cli": "surface", "rn_deploy.demo": "surface", "rn_deploy.__main__": "surface", "rn_deploy": "surface",
}
# Known upward imports still to untangle, each with its reason (the list may only shrink).
ALLOWED_UP: set[tuple[str, str]] = set()


@functools.cache
def _tree(f: Path) -> ast.Module:
    return ast.parse(f.read_text(), str(f))


@functools.cache
def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for base, prefix in (("rn_deploy", "rn_deploy"), ("train", "rn_deploy.train")):
        for f in sorted((ROOT / base).rglob("*.py")):
            parts = list(f.relative_to(ROOT / base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = f
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _from_target(mod: str, f: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` in module ``mod`` (file ``f``) names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base) + ("." + node.module if node.module else "")


IMPORT_CALLS = ("import_module", "__import__")  # importlib.import_module("a.b") / __import__("a.b") with a literal name


def _import_call(node: ast.AST) -> str | None:
    """The module a literal ``importlib.import_module("x")`` / ``__import__("x")`` call names (None otherwise)."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    return node.args[0].value if name in IMPORT_CALLS and not node.args[0].value.startswith(".") else None


@functools.cache  # every rule walks the same graph: parse the tree once per run
def _edges(type_only: bool = True, packages: bool = False) -> dict[str, dict[str, bool]]:
    """module -> {imported module: imported at module level}.

    ``type_only=False`` leaves out ``if TYPE_CHECKING:`` imports; ``packages=True`` adds the packages whose
    ``__init__`` an import runs on the way (``from rn_deploy.runtime.manifest import X`` runs ``rn_deploy.runtime``),
    except the importer's own packages and the lazy root ``rn_deploy``.
    """
    mods = _modules()
    edges: dict[str, dict[str, bool]] = {}
    for mod, f in mods.items():
        tree = _tree(f)
        skip = set() if type_only else _type_checking_nodes(tree)
        # Function bodies run later; everything else (module level, class bodies) runs at import.
        later = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                 for n in ast.walk(fn) if n is not fn}
        deps: dict[str, bool] = {}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if (called := _import_call(node)) is not None:
                targets = [called]
            elif not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                tgt = _from_target(mod, f, node)
                subs = [f"{tgt}.{a.name}" for a in node.names if f"{tgt}.{a.name}" in mods]
                targets = subs + ([tgt] if len(subs) < len(node.names) else [])
            for t in targets:
                while t and t not in mods:  # `import a.b.c` of a name inside a module: the module
                    t = t.rpartition(".")[0]
                found = [t]
                if packages:  # and the packages on the way, other than the importer's own and the root
                    parent = t.rpartition(".")[0]
                    while parent and parent != "rn_deploy":
                        if parent in mods and not (mod == parent or mod.startswith(parent + ".")):
                            found.append(parent)
                        parent = parent.rpartition(".")[0]
                for t in found:
                    if t and t != mod:
                        deps[t] = deps.get(t, False) or id(node) not in later
        edges[mod] = deps
    return edges


def _sccs(edges: dict[str, dict[str, bool]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> str:
    # The root package names only itself ("rn_deploy.anything" unmapped must fail, not fall into the surface).
    best = max((k for k in LAYER_OF if mod == k or (k != "rn_deploy" and mod.startswith(k + "."))), key=len, default=None)
    assert best is not None, f"{mod}: no layer in LAYER_OF; add it (and to docs/architecture.md)"
    return LAYER_OF[best]


def test_the_import_graph_is_what_the_walker_sees():
    edges = _edges()
    # The walker finds what it must: relative, absolute, function-level imports.
    assert "rn_deploy.errors" in edges["rn_deploy.runners.base"]
    assert edges["rn_deploy.runners.trt"]["rn_deploy.runtime"] is False  # imported inside a function
    assert "rn_deploy.datasets.sources" in edges["rn_deploy.train.data"]
    assert "rn_deploy.train.cli" in edges["rn_deploy.cli.group"]  # importlib.import_module("rn_deploy.train.cli")
    # importing a submodule runs its package's __init__: an edge when asked for (the cycle test asks)
    assert "rn_deploy.runtime" in _edges(packages=True)["rn_deploy.builder.profiles"]
    assert len(edges) > 30
    # Type-only imports are edges too (a cycle through one is still a cycle), unless asked otherwise.
    assert "rn_deploy.checkpoint" in edges["rn_deploy"] and "rn_deploy.checkpoint" not in _edges(type_only=False)["rn_deploy"]


def test_no_import_cycles_type_only_included():
    cycles = [c for c in _sccs(_edges(packages=True)) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_imports_go_down_the_layers_only():
    for mod in _modules():  # every module has a layer (an unmapped one fails here, even if nothing imports it)
        _layer(mod)
    up = []
    for mod, deps in _edges().items():  # type-only imports included: a type from above is still a dependency
        for dep in deps:
            if LAYERS.index(_layer(dep)) > LAYERS.index(_layer(mod)) and (mod, dep) not in ALLOWED_UP:
                up.append(f"{mod} ({_layer(mod)}) -> {dep} ({_layer(dep)})")
    assert not up, "imports up the layers:\n" + "\n".join(sorted(up))


def test_train_is_imported_lazily_by_rn_deploy():
    eager = [f"{m} -> {d}" for m, deps in _edges(type_only=False).items() if not m.startswith("rn_deploy.train")
             for d, top in deps.items() if d.startswith("rn_deploy.train") and top]
    assert not eager, f"rn_deploy imports train at module level: {eager}"


# Only the command line and the demo (the surface) start training; everything else reads data from rn_deploy.datasets.
TRAIN_IMPORTERS = ("rn_deploy.train", "rn_deploy.cli", "rn_deploy.demo")


def test_datasets_sit_below_training():
    bad = [f"{m} -> {d}" for m, deps in _edges().items()
           if not (m in TRAIN_IMPORTERS or m.startswith(tuple(p + "." for p in TRAIN_IMPORTERS)))
           for d in deps if d == "rn_deploy.train" or d.startswith("rn_deploy.train.")]
    assert not bad, "only the CLI and the demo may import rn_deploy.train (datasets are rn_deploy.datasets):\n" + "\n".join(bad)
    assert _layer("rn_deploy.datasets.sources") == "foundation"
    # training, evaluation, quantization calibration, the client and the demo read data through it
    users = {m for m, deps in _edges().items() if any(d.startswith("rn_deploy.datasets") for d in deps)}
    for who in ("rn_deploy.train", "rn_deploy.evaluate", "rn_deploy.quantize", "rn_deploy.loadtest", "rn_deploy.demo"):
        assert any(u == who or u.startswith(who + ".") for u in users), f"{who} does not read data through rn_deploy.datasets"


MAX_LINES = 400


def test_no_module_over_400_lines_and_each_says_its_concern():
    long, undocumented = [], []
    for f in _modules().values():
        n = len(f.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{f.relative_to(ROOT)}: {n} lines")
        doc = ast.get_docstring(_tree(f))
        if not (doc and doc.splitlines()[0].strip() and "\n" not in doc.split("\n\n")[0]):  # a one-line summary first
            undocumented.append(str(f.relative_to(ROOT)))
    assert not long, f"modules over {MAX_LINES} lines (split them by concern):\n" + "\n".join(long)
    assert not undocumented, f"modules without a one-line docstring saying their concern: {undocumented}"


def test_runtime_never_imports_build_time_code():
    build_time = ("rn_deploy.builder", "rn_deploy.export", "rn_deploy.quantize", "rn_deploy.train")
    bad = [f"{m} -> {d}" for m, deps in _edges().items() if m.startswith(("rn_deploy.runtime", "rn_deploy.runners", "rn_deploy.engine"))
           for d in deps if d.startswith(build_time)]
    assert not bad, f"runtime imports build-time code: {bad}"


def test_importing_the_package_is_light():
    code = ("import sys, rn_deploy; assert rn_deploy.__version__; "
            "print(sorted(m for m in ('torch', 'onnx', 'rn_deploy.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    # The public names still resolve, lazily.
    code = "import rn_deploy; print(rn_deploy.Engine.__module__, rn_deploy.ModelConfig.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["rn_deploy.engine", "rn_deploy.checkpoint"], out.stderr


def test_no_code_folder_is_named_like_build_output():
    """`.gitignore` templates and code-mapping tools drop unanchored `build/` (and `dist/`) folders: no package may be one."""
    bad = [str(d.relative_to(ROOT)) for base in ("rn_deploy", "train") for d in (ROOT / base).rglob("*")
           if d.is_dir() and d.name in ("build", "dist") and any(d.glob("*.py"))]
    assert not bad, f"code in folders that ignore rules and tools treat as output: {bad}"


def test_the_builder_keeps_its_old_import_path():
    import rn_deploy.build as old
    import rn_deploy.builder as new

    assert set(old.__all__) == set(new.__all__) and {"build_engine", "Profile", "profiles_from_sizes"} <= set(old.__all__)
    assert all(getattr(old, n) is getattr(new, n) for n in new.__all__)


def _internal_from_imports() -> list[tuple[str, Path, ast.ImportFrom, str]]:
    """(module, file, node, absolute target) of every ``from X import ...`` of rn_deploy/train code by rn_deploy/train code."""
    out = []
    for mod, f in _modules().items():
        for node in ast.walk(_tree(f)):
            if isinstance(node, ast.ImportFrom) and (tgt := _from_target(mod, f, node)).startswith("rn_deploy"):
                out.append((mod, f, node, tgt))
    return out


def test_a_private_name_stays_in_its_module():
    """After a split, a helper two modules share is public there (STYLE.md); `_name` imported elsewhere means a missed rename."""
    bad = [f"{f.relative_to(ROOT)}:{node.lineno} imports {a.name} from {tgt}" for _, f, node, tgt in _internal_from_imports()
           for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_a_package_module_imports_its_siblings_not_its_package():
    """`from . import x` inside a package runs its `__init__` (which imports the siblings): the start of a cycle."""
    bad = [f"{f.relative_to(ROOT)}:{node.lineno}" for mod, f, node, tgt in _internal_from_imports()
           if f.name not in ("__init__.py", "__main__.py") and tgt == mod.rpartition(".")[0]
           and not any(f"{tgt}.{a.name}" in _modules() for a in node.names)]
    assert not bad, "package modules importing names from their own package's __init__:\n" + "\n".join(bad)


def test_moved_names_still_import_from_the_paths_the_readme_gives():
    """README "Python imports beyond Engine": the old paths it promises and the new homes it names."""
    import importlib

    same = [("rn_deploy.build", "rn_deploy.builder", "build_engine"), ("rn_deploy.build", "rn_deploy.builder", "Profile"),
            ("rn_deploy.evaluate", "rn_deploy.datasets.sources", "load_split"),
            ("rn_deploy.evaluate", "rn_deploy.evaluate.sizes", "run_sizes"),
            ("rn_deploy.evaluate", "rn_deploy.datasets", "canonical_dataset"),
            ("rn_deploy.validate", "rn_deploy.results", "ValidationReport"),
            ("rn_deploy.validate", "rn_deploy.results", "NOTHING_COMPARED"),
            ("rn_deploy.serve", "rn_deploy.serve.backend", "TritonPythonModel"),
            ("rn_deploy.train.loop", "rn_deploy.train.config", "TrainConfig"),
            ("rn_deploy.quantize", "rn_deploy.quantize.recipes", "quantize_file"),
            ("rn_deploy.export", "rn_deploy.export.workflow", "export_onnx")]
    for old, new, name in same:
        assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name), (old, name)
    assert importlib.import_module("rn_deploy.builder.profiles").profiles_from_sizes
    for name in ("load_fashion_mnist", "load_image_folder", "load_mnist_png", "load_dataset"):
        assert callable(getattr(importlib.import_module("rn_deploy.datasets.sources"), name))
