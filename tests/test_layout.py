"""The package layout holds: imports point down the pipeline (cli -> study -> launch -> trainers / posthoc
-> analysis -> runs -> models, data -> the ground floor), never in a circle, at module top (except the
command line's lazy ones), at most 10 levels deep; no private name crosses a module; files and
functions stay readable. Read from the source with `ast`, nothing imported."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Stage of each package: a module may import its own package or a strictly lower stage.
STAGES = {"laser_tool": 10, "laser_tool.cli": 9, "laser_tool.study": 8, "laser_tool.launch": 7, "trainers": 6.5,
          "laser_tool.posthoc": 6, "laser_tool.analysis": 5, "laser_tool.export": 4.5, "laser_tool.runs": 4,
          "laser_tool.models": 3, "laser_tool.data": 3, "ground": 1}
GROUND = {"errors", "device", "fileio", "lock", "signals", "vocab", "lists"}
MAX_LEVELS, MAX_FILE_LINES, MAX_FUNCTION_LINES = 10, 400, 80


def modules() -> dict:
    """{dotted module name: path} of laser_tool and trainers."""
    out = {}
    for pkg in ("laser_tool", "trainers"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def package_of(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] == "trainers":
        return "trainers"
    if len(parts) == 2 and parts[1] in GROUND:
        return "ground"
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and f"laser_tool.{parts[1]}" in STAGES) \
        else "laser_tool"


def imports(mod: str, path: Path, known: dict):
    """[(imported module, line, at module top, names)] of the project's own modules that `mod` imports."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [(f"{base}.{a.name}", []) if f"{base}.{a.name}" in known else (base, [a.name])
                       for a in node.names]
        else:
            continue
        for target, names in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != mod:
                out.append((target, node.lineno, id(node) in top, names))
    return out


def graph():
    known = modules()
    return known, {m: imports(m, p, known) for m, p in known.items()}


def cycles(edges: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def levels(edges: dict, faces=()) -> dict:
    """Floor of each module: 1 + the highest floor it imports (1 for a module importing none of ours).
    A package's face (its __init__, handing its modules' names on) adds no floor of its own."""
    memo = {}

    def floor(v):
        if v not in memo:
            memo[v] = 0  # a cycle would recurse forever; the cycle test reports it
            memo[v] = (v not in faces) + max((floor(w) for w in edges.get(v, ())), default=0)
        return memo[v]
    return {v: floor(v) for v in edges}


def test_no_import_cycle_between_modules_or_packages():
    _, deps = graph()
    assert cycles({m: sorted({t for t, _, at_top, _ in ds if at_top}) for m, ds in deps.items()}) == []
    assert cycles(package_edges(deps)) == []


def test_imports_point_down_the_pipeline():
    known, deps = graph()
    upward = []
    for m, ds in deps.items():
        here = package_of(m)
        for t, line, _, _ in ds:
            there = package_of(t)
            if there != here and not STAGES[there] < STAGES[here]:
                upward.append(f"{known[m].relative_to(ROOT)}:{line} imports {t} ({here} -> {there})")
    assert upward == []


def test_imports_at_module_top_except_the_command_line():
    known, deps = graph()
    lazy = [f"{known[m].relative_to(ROOT)}:{line} imports {t}" for m, ds in deps.items()
            for t, line, at_top, _ in ds if not at_top and package_of(m) != "laser_tool.cli"]
    assert lazy == []


def package_edges(deps) -> dict:
    """Package -> packages it imports at module top; each ground-floor module is a package of its own, and
    the notebook API's face (laser_tool/__init__.py) stands above them all."""
    def node(m):
        return m if package_of(m) == "ground" else package_of(m)
    out = {}
    for m, ds in deps.items():
        out.setdefault(node(m), set()).update(node(t) for t, _, at_top, _ in ds if at_top and node(t) != node(m))
    return {k: sorted(v) for k, v in out.items()}


def test_at_most_ten_import_levels():
    _, deps = graph()
    floors = levels(package_edges(deps))
    assert max(floors.values()) <= MAX_LEVELS, sorted(floors.items(), key=lambda kv: -kv[1])[:5]


def test_no_private_name_crosses_a_module():
    known, deps = graph()
    private = [f"{known[m].relative_to(ROOT)}:{line} takes {n} from {t}" for m, ds in deps.items()
               for t, line, _, names in ds for n in names if n.startswith("_")]
    assert private == []


def test_files_and_functions_stay_readable():
    known, _ = graph()
    long_files = [f"{p.relative_to(ROOT)}: {n} lines" for p in known.values()
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    long_functions = []
    for p in known.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert long_files == [] and long_functions == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above would fail on a new cycle or a climb: shown on a graph made to have both."""
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert levels({"a": ["b"], "b": ["c"], "c": []}) == {"a": 3, "b": 2, "c": 1}
    assert package_of("laser_tool.models.spec") == "laser_tool.models" and package_of("laser_tool.errors") == "ground"
    assert STAGES[package_of("laser_tool.runs.reader")] > STAGES[package_of("laser_tool.models.spec")]
    assert not STAGES[package_of("laser_tool.analysis.compare")] < STAGES[package_of("laser_tool.runs.reader")]


MAX_PARAMETERS = 10


def parameter_count(fn) -> int:
    """Every parameter a caller could pass: positional, keyword-only, *args and **kwargs; self and cls
    are the method's own, not the caller's."""
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return len([n for n in names if n not in ("self", "cls")])


def test_library_functions_take_settings_whole():
    """Outside the command line (where Click hands each option in as a parameter), a function with more
    than 10 parameters is a settings object taken apart: pass the request dataclass whole instead."""
    known, _ = graph()
    wide = [f"{p.relative_to(ROOT)}:{node.lineno} {getattr(node, 'name', 'lambda')}: {n} parameters"
            for m, p in known.items() if package_of(m) != "laser_tool.cli"
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            and (n := parameter_count(node)) > MAX_PARAMETERS]
    assert wide == []


def test_the_parameter_count_sees_every_kind_of_parameter():
    fn = ast.parse("def f(self, a, /, b, *args, c, d=1, **kwargs): pass").body[0]
    assert parameter_count(fn) == 6


def run_file_names() -> set:
    """The run files' names as laser_tool/runs/schema.py defines them (its module-level string constants;
    `export/latency.json` counts as latency.json)."""
    names = set()
    for node in ast.parse((ROOT / "laser_tool" / "runs" / "schema.py").read_text()).body:
        if isinstance(node, ast.Assign):
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            names |= {v.value.rpartition("/")[2] for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    return names


def run_file_literals(source: str, names: set) -> list:
    """Lines of `source` holding a string that is a run file's name, or a path ending in one."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.rpartition("/")[2] in names]


def test_no_module_outside_runs_names_a_run_file():
    """Each run file is read and written by laser_tool/runs/ alone (issue 26): elsewhere, its name is
    asked of runs/ (schema.config_path, state.state_path, ...), never typed."""
    names = run_file_names()
    assert {"config.json", "final.json", "metrics.jsonl", "state.safetensors", "model.safetensors",
            "predictions.safetensors", "latency.json"} <= names
    assert run_file_literals('f = run / "config.json"\ng = f"{run}/metrics.jsonl"\nh = "config.json is bad"', names) \
        == [1, 2]  # a path is seen, in an f-string too; a sentence naming the file is not a path
    known, _ = graph()
    named = [f"{p.relative_to(ROOT)}:{line}" for m, p in known.items() if package_of(m) != "laser_tool.runs"
             for line in run_file_literals(p.read_text(), names)]
    assert named == []


# A structured layer family (models/families/) is named, as a string literal (docstrings aside) or by its
# class name, in at most this many library files: its own module and a few users. The study presets'
# tables choose families by name as a user does on the command line, and are not counted.
MAX_FAMILY_FILES = 3
PRESET_TABLES = {"GRIDS", "FRONTIERS"}


def families(root: Path = ROOT) -> dict:
    """{kind: class name} of every `@register_family` class in models/families/, read from the source."""
    out = {}
    for p in sorted((root / "laser_tool" / "models" / "families").glob("*.py")):
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "register_family"
                                                      for d in node.decorator_list):
                kind = next(s.value.value for s in node.body if isinstance(s, ast.Assign)
                            and getattr(s.targets[0], "id", None) == "kind")
                out[kind] = node.name
    return out


def names_in(source: str) -> tuple:
    """(string literals, identifiers) of a module: docstrings and the preset tables' contents left out."""
    tree = ast.parse(source)
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            skipped.add(id(node.body[0].value))
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) in PRESET_TABLES for t in node.targets):
            skipped |= {id(n) for n in ast.walk(node.value)}
    literals = [n.value.lower() for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skipped]
    idents = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
        {a.asname or a.name.rpartition(".")[2] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names} | \
        {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    return literals, idents


def names_family(kind: str, cls: str, literals, idents) -> bool:
    word = re.compile(rf"(?<![a-z0-9]){re.escape(kind)}(?![a-z0-9])")
    return cls in idents or any(word.search(s) for s in literals)


def files_naming_families() -> dict:
    """{kind: [library files that name it]}."""
    table = {p: names_in(p.read_text()) for p in modules().values()}
    return {kind: sorted(str(p.relative_to(ROOT)) for p, (lits, ids) in table.items() if names_family(kind, cls, lits, ids))
            for kind, cls in families().items()}


def test_a_family_is_named_in_few_library_files():
    found = files_naming_families()
    assert set(found) >= {"lowrank", "skl", "dyad", "monarch", "btt"}
    assert {k: v for k, v in found.items() if len(v) > MAX_FAMILY_FILES} == {}


def test_the_family_count_sees_literals_and_class_names_not_docstrings():
    lits, ids = names_in('"""A dyad here is prose."""\nGRIDS = {"a": "dyad"}\nx = {"variant": "dyad"}\n'
                         'isinstance(m, MonarchLinear)\ny = "--n-dyad"\n')
    assert names_family("monarch", "MonarchLinear", lits, ids) and not names_family("btt", "BTTLinear", lits, ids)
    assert lits.count("dyad") == 1 and names_family("dyad", "DyadLinear", ["--n-dyad"], set())
    assert not names_family("dyad", "DyadLinear", *names_in('"""dyad"""\nGRIDS = {"v": "dyad"}\n'))
