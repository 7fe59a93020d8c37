"""The package's layers: each subpackage (or root module) imports only from layers below it and from itself, and
the import graph has no cycles. Imports inside functions count too: a lazy import is still a dependency.

A lower layer reaches a higher one only through a table of names loaded on use, never an import: the CLI's
command table (`cli.COMMANDS`), the recipes' (`recipes.RECIPES`), the models built on first use
(`checkpoints.folders.CACHED_MODELS`, and `ADAPTER_BUILDER` for adapter folders) and the public names of the
package root (`diffusionvl._EXPORTS`).
"""

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diffusionvl"

# Bottom to top. A unit is a subpackage or a root module; units on one line are independent of each other.
LAYERS = [
    ("errors",),                    # the exception classes every layer raises
    ("modeling",),                  # the wrapper's parts: config, tokens, masks, noise, loss, backbones, ...
    ("decoding", "checkpoints"),    # the block decoder; checkpoint folders and released layouts
    ("model",),                     # DiffusionVL: wraps modeling/, generates with decoding/, loads checkpoints/
    ("loading",),                   # load_model / load_processor: open any folder
    ("training", "inference"),      # translate a model (convert, finetune); answer conversations
    ("cli",),                       # the command line's shared parts (its commands are loaded by name)
    ("evaluation", "chat", "toy"),  # apps on the engine
    ("minivl", "smollm2"),          # the studies, each with its data, recipe and evaluation
    ("benchmarks", "serving"),      # benchmarks (on MiniVL) and the server
    ("recipes", "__main__"),        # entry points
]
LAYER = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}
MAX_ROOT_MODULES = 10


def module_name(path: Path, package: Path) -> str:
    parts = path.with_suffix("").relative_to(package.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports with relative imports, anywhere in the file."""
    here = module_name(path, package).split(".")
    base_package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = base_package[: len(base_package) - node.level + 1] + ([node.module] if node.module else [])
            base = ".".join(parts)
            for alias in node.names:  # `from .x import y`: y is a submodule of x, or a name in x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return (found & modules) - {module_name(path, package)}


def import_graph(package: Path) -> dict[str, set[str]]:
    files = list(package.rglob("*.py"))
    modules = {module_name(f, package) for f in files}
    return {module_name(f, package): imports_of(f, package, modules) for f in files}


def unit_of(module: str) -> str | None:
    """The layer unit of a dotted module name: its first part under the package; None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(package: Path) -> list[str]:
    """Every import that goes sideways or up between units, and every unit missing from LAYERS."""
    found = []
    for module, imported in sorted(import_graph(package).items()):
        unit = unit_of(module)
        if unit is None:
            continue
        if unit not in LAYER:
            found.append(f"{module}: its unit {unit!r} has no layer in LAYERS")
            continue
        for target in sorted(imported):
            other = unit_of(target)
            if other is None or other == unit:
                continue  # the package root (its version) and the unit itself
            if other not in LAYER or LAYER[other] >= LAYER[unit]:
                found.append(f"{module} ({unit}, layer {LAYER[unit]}) imports {target} "
                             f"({other}, layer {LAYER.get(other)})")
    return found


def test_every_import_goes_down_the_layers():
    assert violations(PACKAGE) == []


def test_the_check_fails_on_an_upward_import(tmp_path):
    copy = tmp_path / "diffusionvl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    engine = copy / "decoding" / "engine.py"
    engine.write_text(engine.read_text() + "\n\ndef _upward():\n    from ..serving import scheduler  # noqa\n")
    sideways = copy / "minivl" / "models.py"
    sideways.write_text(sideways.read_text() + "\nfrom ..smollm2 import prompts  # noqa\n")
    found = violations(copy)
    assert len(found) == 2
    assert found[0].startswith("diffusionvl.decoding.engine (decoding, layer 2) imports diffusionvl.serving.scheduler")
    assert found[1].startswith("diffusionvl.minivl.models (minivl, layer 8) imports diffusionvl.smollm2.prompts")


def test_the_root_holds_few_modules_and_every_unit_has_a_layer():
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(root) <= MAX_ROOT_MODULES, root
    units = set(root) | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert units == set(LAYER), units ^ set(LAYER)


def test_no_module_imports_itself_through_others():
    graph = import_graph(PACKAGE)
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dependency in sorted(graph[module]):
            assert state.get(dependency) != "open", "import cycle: " + " -> ".join(path + [dependency])
            if dependency not in state:
                visit(dependency, path + [dependency])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_decoder_sets_every_attribute_in_its_init():
    """Its state is declared in one place: every attribute any method assigns is first set in __init__."""
    tree = ast.parse((PACKAGE / "decoding" / "engine.py").read_text())
    decoder = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "BlockDecoder")

    def assigned(function) -> set[str]:
        kinds = (ast.Assign, ast.AugAssign, ast.AnnAssign)
        return {target.attr for node in ast.walk(function) if isinstance(node, kinds)
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                for target in ast.walk(target)
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self"}

    methods = [node for node in decoder.body if isinstance(node, ast.FunctionDef)]
    declared = assigned(next(method for method in methods if method.name == "__init__"))
    later = set().union(*(assigned(method) for method in methods if method.name != "__init__"))
    assert later <= declared, later - declared
