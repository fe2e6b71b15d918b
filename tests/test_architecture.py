"""The house's structure, read from the code (#22): no import circles, counting imports inside
functions and under TYPE_CHECKING; none of the wrong-way reaches; no hidden contracts between
methods (hasattr/getattr on a component's attribute names); methods that meet only through shared
modules, and are used from outside only through what their package exports; and a new host and
booster that plug in with no edit anywhere else."""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("specpl", "app")


def module_files() -> dict[str, Path]:
    """Every module of the library and the app, by dotted name."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (functions and TYPE_CHECKING blocks too);
    ``from package import submodule`` counts as the submodule."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def home(module: str) -> str:
    """The module a method is imported through: its package under `specpl.methods` (a booster's
    ``specpl.methods.dapt`` for ``specpl.methods.dapt.saliency``), or its own module."""
    return ".".join(module.split(".")[:3])


def within(module: str, homes: set[str]) -> str | None:
    """The one of `homes` that `module` is or lies inside, if any."""
    return next((h for h in homes if module == h or module.startswith(h + ".")), None)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circles():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# (importer, or a package prefix ending in "."), module it must not import, why
WRONG_WAY = [
    ("specpl.methods.", "specpl.checkpoint", "methods never reach into the training loop's resume state"),
    ("specpl.methods.", "specpl.features", "methods receive frozen inputs by name, not the feature cache"),
    ("specpl.methods.", "specpl.trainer", "methods know no trainer"),
    ("specpl.methods.", "specpl.bands", "the decomposer is built by the factory and handed over (BuildContext)"),
    ("specpl.inference", "specpl.checkpoint", "inference loads bundles (specpl.bundle), not the trainer's checkpoints"),
    ("specpl.backbone", "specpl.defaults", "the embedded-weights table lives with the backbone"),
    ("specpl.", "app", "the library knows nothing of the UI"),
]


@pytest.mark.parametrize(("importer", "forbidden", "why"), WRONG_WAY, ids=[f"{a}->{b}" for a, b, _ in WRONG_WAY])
def test_no_wrong_way_reach(importer: str, forbidden: str, why: str):
    graph = import_graph()
    reaches = [
        (name, target)
        for name, targets in graph.items()
        if (name.startswith(importer) if importer.endswith(".") else name == importer)
        for target in targets
        if target == forbidden or target.startswith(forbidden + ".")
    ]
    assert reaches == [], why
    if importer == "specpl.":
        gradio = [p for n, p in module_files().items() if n.startswith("specpl") and "gradio" in p.read_text()]
        assert gradio == [], "nothing in specpl/ imports gradio"


# where the composite, the factory and the methods talk to a component: no attribute is looked up by name
CONTRACT_FILES = [
    *sorted((ROOT / "specpl" / "methods").rglob("*.py")),
    ROOT / "specpl" / "model.py",
    ROOT / "specpl" / "factory.py",
    ROOT / "specpl" / "features.py",
]


def root_name(node: ast.expr) -> str:
    """The name an attribute chain starts from (``backbone.model.visual`` -> ``backbone``)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=[p.relative_to(ROOT).as_posix() for p in CONTRACT_FILES])
def test_no_hasattr_contracts(path: Path):
    """A seam is declared on the base classes; `hasattr`/`getattr` on a name would hide one. Only
    open_clip's own model, reached through the backbone, is probed for optional attributes."""
    calls = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("hasattr", "getattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and root_name(node.args[0]) != "backbone"
    ]
    assert calls == []


# --- a new host and booster, defined here alone ---------------------------------------------------------------------


def test_a_new_host_and_booster_need_no_edit_elsewhere(monkeypatch, tiny_backbone, tmp_path):
    """A test-only host and booster, registered here, resolve, build, train a step, stack, save and
    reload, and appear in `specpl methods`, with no file of the library changed."""
    from specpl.config import MethodConfig
    from specpl.factory import build_method, describe_methods, load_bundle, method_label, resolve_method_options
    from specpl.methods import BOOSTERS, HOSTS, Batch, Booster, BuildContext, ForwardState
    from specpl.methods.coop import ContextHost

    @dataclass
    class TinyHostConfig:
        n_ctx: int = 2
        ctx_init: str = ""
        init_std: float = 0.02
        ctx_from_template: bool = False
        tail: str = "{}."

    class TinyHost(ContextHost):
        name = "tiny-host"
        title = "Tiny host"
        description = "a test-only context host"
        config_class: ClassVar[type] = TinyHostConfig
        training_defaults: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 2, "lr": 0.01, "optimizer": "sgd"}

    @dataclass
    class ShiftConfig:
        weight: float = 0.5

    class Shift(Booster):
        name = "shift"
        title = "Shift"
        description = "a test-only booster: a learned offset on the text features, and an L2 term on it"
        config_class: ClassVar[type] = ShiftConfig
        published_hosts: ClassVar[tuple[str, ...]] = ("tiny-host",)

        def __init__(self, config: ShiftConfig, context: BuildContext) -> None:
            super().__init__(config, context)
            self.offset = torch.nn.Parameter(torch.zeros(context.embed_dim))

        def refine_text(self, text: torch.Tensor) -> torch.Tensor:
            return text + self.offset

        def losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
            return {"shift": self.config.weight * self.offset.pow(2).sum()}

    monkeypatch.setitem(HOSTS._factories, TinyHost.name, TinyHost)
    monkeypatch.setitem(BOOSTERS._factories, Shift.name, Shift)
    method = MethodConfig(host="tiny-host", boosters=["shift"], options={"shift": {"weight": 2.0}})
    assert resolve_method_options(method)["shift"] == {"weight": 2.0}
    assert method_label(method) == "Tiny host + Shift"
    assert {"tiny-host", "shift"} <= {row["name"] for row in describe_methods()}
    model = build_method(method, tiny_backbone, ["cat", "dog"])
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    losses = model(Batch(images=images, labels=torch.tensor([0, 1])))
    assert set(losses) == {"cls", "shift"}
    sum(losses.values()).backward()
    assert model.boosters["shift"].offset.grad is not None and model.host.prompt_learner.ctx.grad is not None
    with torch.no_grad():
        model.boosters["shift"].offset.fill_(0.1)
    reloaded, _ = load_bundle(model.save_bundle(tmp_path / "model"), backbone=tiny_backbone)
    torch.testing.assert_close(reloaded.logits(reloaded.encode_image(images)), model.logits(model.encode_image(images)))


def test_the_app_names_no_booster():
    """The app draws whatever image view a component gives (`Component.inspect`) and imports no
    booster's module, so a new booster's view reaches the Bands tab with no edit there."""
    from specpl.methods import BOOSTERS

    booster_homes = {home(BOOSTERS.get(name).__module__) for name in BOOSTERS.names()}
    graph = import_graph()
    reaches = [
        (name, target)
        for name, targets in graph.items()
        if name.startswith("app")
        for target in targets
        if within(target, booster_homes)
    ]
    assert reaches == []


def test_hosts_and_boosters_meet_only_through_shared_modules():
    """No module of one method imports another method's (a booster a host's, a host a booster's, a
    booster another's): what two methods share lives in a shared module of `specpl.methods`
    (`prompt`, `templates`, `sourcing`, ...), so adding or removing one needs no edit in another.
    The one exception is the documented way to write a host: building on another host's base class
    (`ContextHost`, `DeepPromptHost`), as CasPL's phase-1 host does from inside its package."""
    from specpl.methods import BOOSTERS, HOSTS

    host_modules = {HOSTS.get(name).__module__ for name in HOSTS.names()}
    host_homes = {home(module) for module in host_modules}
    booster_homes = {home(BOOSTERS.get(name).__module__) for name in BOOSTERS.names()}
    reaches = [
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        if within(name, host_homes | booster_homes)
        for target in targets
        if (reached := within(target, host_homes | booster_homes)) not in (None, home(name))
        and not (name in host_modules and reached not in booster_homes)
    ]
    assert reaches == []


def test_outside_the_methods_a_booster_is_used_only_through_what_it_exports():
    """A booster's package (or module) says what it offers (`__all__`); the library, the app and
    the benchmarks import nothing else from it, and none of its inner modules, so its insides can
    change without an edit elsewhere."""
    from specpl.methods import BOOSTERS

    exports = {}
    for name in BOOSTERS.names():
        module = home(BOOSTERS.get(name).__module__)
        exported = importlib.import_module(module).__dict__.get("__all__")
        assert exported, f"{module} declares no __all__"
        exports[module] = set(exported)
    files = [*module_files().values(), *sorted((ROOT / "bench").glob("*.py"))]
    reached = []
    for path in files:
        if "methods" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, name in imported:
                package = within(module, set(exports))
                if package is not None and (module != package or (name and name not in exports[package])):
                    reached.append(f"{path.relative_to(ROOT)}: {module}{'.' + name if name else ''}")
    assert reached == []


def test_the_job_manager_knows_no_processes():
    """How a run trains is its runner's (`app.runtime.runners`): the job manager keeps the queue and
    the records, and imports nothing that starts or signals a process."""
    tree = ast.parse((ROOT / "app" / "runtime" / "jobs.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {name.split(".")[0] for name in imported}.isdisjoint({"subprocess", "signal", "multiprocessing"})


APP_LAYERS = ["app.messages", "app.runtime", "app.files", "app.views", "app.studio", "app.tabs", "app.ui"]


def test_the_app_imports_point_down_its_layers_and_no_tab_imports_another():
    """A part of the app imports only its own layer and the ones below (the runtime knows no user
    files, views or tabs; the views know no tab), and a tab only what the tabs share, so that a tab
    is added or removed with one file (and its line in `app.ui`)."""

    def layer(module: str) -> int | None:
        return next((i for i, name in enumerate(APP_LAYERS) if module == name or module.startswith(name + ".")), None)

    reaches = [
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        if layer(name) is not None
        for target in targets
        if layer(target) is not None
        and (
            layer(target) > layer(name)
            or (name.startswith("app.tabs.") and target.startswith("app.tabs.") and target != "app.tabs.shared")
        )
    ]
    assert reaches == []
