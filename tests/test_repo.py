"""The repository keeps its own rules: one home for the shared names, no import cycles,
lower layers that import no upper ones, at most ten top-level modules in pss/, tests and
benchmarks that share pss.testing (no sys.path edits, no imports of tests/ from
benchmarks/), and every document a docstring cites exists in the repository."""

from __future__ import annotations

import ast
import re
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PSS = REPO / "pss"
CONTRACT = PSS / "contract.py"


def python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants in code (f-string parts included), docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


# What the sweep contract spells (pss/contract.py): a pattern per rule, matched against
# the string constants of every other module of the library.
CONTRACT_LITERALS = {
    "tag names": re.compile(
        r"^pss\.(sweep|cell|seed|stage|fingerprint|git_commit|git_dirty|threads|slurm_job_id|"
        r"resumed_from_epoch|trial|study|proof)$"
    ),
    "the output root": re.compile(r"^outputs/sweeps|^sweeps$"),
    "the primary-mode rule (a PSS model name)": re.compile(r"^_pss$"),
    "the accuracy metric names": re.compile(r"^(AP50|AP75|APs|APm|APl)$"),
    "timing metric names": re.compile(r"^(forward_ms|postprocess_ms)"),
    "the job key / run name ('@stage', '/s<seed>')": re.compile(r"^@$|^/s$"),
    "the smoke experiment suffix": re.compile(r"^-smoke$"),
    "the checkpoint file name": re.compile(r"^last\.pth$"),
    "the traceback artifact": re.compile(r"^traceback\.txt$"),
}


def test_the_sweep_contract_is_spelled_in_pss_contract_only():
    found = []
    for path in python_files("pss"):
        if path == CONTRACT:
            continue
        for node in code_strings(ast.parse(path.read_text())):
            for rule, pattern in CONTRACT_LITERALS.items():
                if pattern.search(node.value):
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    found.append(f"{where}: {node.value!r} ({rule})")
    assert not found, "literals of pss/contract.py spelled elsewhere:\n" + "\n".join(found)


def test_the_contract_module_holds_every_rule():
    """The patterns above are not vacuous: each one matches in pss/contract.py."""
    strings = [n.value for n in code_strings(ast.parse(CONTRACT.read_text()))]
    missing = [
        rule
        for rule, pattern in CONTRACT_LITERALS.items()
        if not any(pattern.search(s) for s in strings)
    ]
    assert not missing, f"rules not found in pss/contract.py: {missing}"


def import_graph() -> dict[str, set[str]]:
    """pss module -> the pss modules it imports (at any depth: function-level imports too)."""
    modules = {module_name(p): p for p in python_files("pss")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # 'from pss.report import latex' names a module; 'import make_report' a name
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_in_the_library():
    graph = import_graph()
    assert "pss.sweep.executors" in graph["pss.sweep.search"]  # the walk sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# ------------------------------------------------------------------------- layers
# Lower layers never import upper ones (at any depth: a function-level import counts).
FORBIDDEN = {
    "pss.data": ("pss.models", "pss.engine", "pss.sweep", "pss.report", "pss.deploy"),
    "pss.models": ("pss.engine", "pss.sweep", "pss.report", "pss.deploy", "pss.tracking"),
    "pss.engine": ("pss.sweep", "pss.report"),
    "pss.sweep": ("pss.report",),  # but for the one place below
}
# A sweep that runs to its end builds its report: the module that defines run_sweep may
# import pss.report's make_report, and it alone.
SWEEP_REPORT = "make_report"


def imported_names(path: Path, package: str) -> set[str]:
    """'module.name' of every ``from package... import name`` in ``path`` (any depth)."""
    return {
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package)
        for alias in node.names
    }


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def within(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    found = []
    for module, imports in sorted(graph.items()):
        for lower, uppers in FORBIDDEN.items():
            if within(module, lower):
                found += [f"{module} imports {i}" for i in sorted(imports)
                          if any(within(i, u) for u in uppers)]  # fmt: skip
    return found


def test_lower_layers_import_no_upper_ones():
    violations = layer_violations(import_graph())
    sweep = {module_name(p): p for p in python_files("pss/sweep")}
    reporting = {
        name
        for name, path in sweep.items()
        if imported_names(path, "pss.report")
        and imported_names(path, "pss.report") == {f"pss.report.{SWEEP_REPORT}"}
        and re.search(r"^def run_sweep\(", path.read_text(), re.M)
    }
    assert len(reporting) <= 1, f"the sweep builds its report in several places: {reporting}"
    violations = [v for v in violations if v.split()[0] not in reporting]
    assert not violations, "lower layers import upper ones:\n" + "\n".join(violations)


def test_the_layer_check_sees_an_upper_import():
    graph = {"pss.models.boxes": {"pss.engine.train"}, "pss.engine.train": {"pss.models"}}
    assert layer_violations(graph) == ["pss.models.boxes imports pss.engine.train"]


MAX_TOP_LEVEL = 10  # issue 21: pss/ grouped by role (models, data, engine, sweep, ...)


def test_pss_has_at_most_ten_top_level_modules():
    modules = sorted(p.stem for p in PSS.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL, f"{len(modules)} top-level modules: {modules}"


# ----------------------------------------------------------- tests and benchmarks
# They share the installed package pss.testing: no sys.path edits, no helpers imported
# from tests/ (conftest.py holds fixtures; tests import pss.testing like benchmarks do).


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Line numbers of calls that add to sys.path (insert, append, extend) and of assignments
    to it."""

    def is_sys_path(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            node = node.value
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        )

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("insert", "append", "extend") and is_sys_path(node.func.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [node.lineno for t in targets if is_sys_path(t)]
    return sorted(lines)


def top_level_imports(tree: ast.AST) -> set[str]:
    """The first component of every absolute import."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_tests_and_benchmarks_edit_no_sys_path():
    edits = [
        f"{path.relative_to(REPO)}:{line}"
        for path in python_files("tests", "benchmarks")
        for line in sys_path_edits(ast.parse(path.read_text()))
    ]
    assert not edits, "sys.path edited (use pss.testing or pytest's pythonpath):\n" + "\n".join(
        edits
    )


def test_the_sys_path_check_sees_each_kind_of_edit():
    path = "sys." + "path"  # spelled apart: a text search for such edits finds none here
    code = f"import sys\n{path}.insert(0, 'x')\n{path}.append('y')\n{path}[:0] = ['z']\n"
    assert sys_path_edits(ast.parse(code)) == [2, 3, 4]


def test_benchmarks_import_nothing_from_tests_and_tests_no_conftest():
    test_modules = {"tests", "conftest"} | {p.stem for p in python_files("tests")}
    found = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in python_files("benchmarks")
        for name in sorted(top_level_imports(ast.parse(path.read_text())) & test_modules)
    ]
    found += [
        f"{path.relative_to(REPO)} imports conftest"
        for path in python_files("tests")
        if "conftest" in top_level_imports(ast.parse(path.read_text()))
    ]
    assert not found, "shared helpers belong in pss.testing:\n" + "\n".join(found)


DOC_REF = re.compile(r"\bdocs/[\w./-]+\.md\b")
OUTSIDE = "DESIGN.md" + " section"  # the design notes beside the repository, not in it


@pytest.mark.parametrize("folder", ["pss", "benchmarks", "tests", "sweeps", "reports"])
def test_every_cited_document_is_in_the_repository(folder):
    cited, missing = 0, []
    files = [*python_files(folder), *(REPO / folder).rglob("*.md")]
    files += (REPO / folder).rglob("*.yaml")
    for path in files:
        text = path.read_text(errors="replace")
        assert OUTSIDE not in text, f"{path}: cites a document outside the repository"
        for ref in DOC_REF.findall(text):
            cited += 1
            if not (REPO / ref).is_file():
                missing.append(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, "cited documents that do not exist:\n" + "\n".join(missing)
    if folder == "pss":
        assert cited > 0  # the library does cite its documents


def test_readme_and_docs_links_resolve():
    missing = []
    for md in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for ref in re.findall(r"\]\(([^)#\s]+)\)", md.read_text()):
            if "://" in ref:
                continue
            if not (md.parent / ref).exists():
                missing.append(f"{md.relative_to(REPO)}: {ref}")
    assert not missing, "\n".join(missing)


# Docs follow the code: every module, file or name of ours that README.md, docs/ or the
# architecture picture points at exists (read statically: no import, no mmdet needed).
CODE_REF = re.compile(
    r"(?<![\w./-])pss(?:\.[A-Za-z_]\w*)+|\b(?:pss|sweeps|reports|benchmarks)/[\w/]+\.py\b"
)


def contract_names() -> set[str]:
    """The 'pss.*' strings of pss/contract.py: tag names such as pss.stage, not code."""
    tree = ast.parse(CONTRACT.read_text())
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("pss.")
    }


def defined_names(path: Path) -> set[str]:
    """Top-level names a module defines: functions, classes, assignments, imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def unresolved(ref: str) -> str | None:
    """Why ``ref`` (``pss.a.b.name`` or ``pss/a/b.py``) names nothing in the repository."""
    if "/" in ref:
        return None if (REPO / ref).is_file() else "no such file"
    folder, rest = REPO, ref.split(".")
    while rest and (folder / rest[0]).is_dir():
        folder = folder / rest.pop(0)
    if rest and (folder / f"{rest[0]}.py").is_file():
        module = folder / f"{rest.pop(0)}.py"
    elif folder != PSS:
        module = folder / "__init__.py"
    else:
        module = None
    if module is not None and (not rest or rest[0] in defined_names(module)):
        return None
    if ref in contract_names():
        return None  # a tag name (pss.stage, pss.seed ...): docs/tracking.md
    if module is None:
        return "no such module"
    return f"{module.relative_to(REPO)} defines no '{rest[0]}'"


def test_docs_name_only_code_that_exists():
    pages = [REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "reports" / "README.md"]
    pages.append(REPO / "docs" / "images" / "architecture.py")
    wrong = [
        f"{page.relative_to(REPO)}: {ref} ({why})"
        for page in pages
        if page.is_file()
        for ref in sorted(set(CODE_REF.findall(page.read_text())))
        if (why := unresolved(ref.rstrip(".")))
    ]
    assert not wrong, "docs point at code that is not there:\n" + "\n".join(wrong)


def test_the_docs_check_sees_a_moved_module_and_a_renamed_name():
    assert unresolved("pss.postprocess") == "no such module"
    assert unresolved("pss/postprocess.py") == "no such file"
    assert unresolved("pss.models.assign.no_such_function") == (
        "pss/models/assign.py defines no 'no_such_function'"
    )
    assert unresolved("pss.models.assign") is None
    assert unresolved("pss.stage") is None  # a tag, not code


def test_the_architecture_picture_names_modules_that_exist():
    drawing = runpy.run_path(str(REPO / "docs" / "images" / "architecture.py"))
    named = [m for _, _, modules in drawing["LAYERS"] for m in modules]
    named += [module for _, module in drawing["PATH"]]
    assert len(named) > 40
    assert not [m for m in named if not (REPO / m).is_file()]
