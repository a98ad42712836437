"""The package's layout rules (README "Code layout"): imports run downward only, only the CLI knows
argparse, and the run contract and the settings need no PyTorch. Read from the source (every import,
also those inside functions)."""
import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "elmanlab"
# lowest first; a module may import its own level and the levels below it
LEVELS = [
    {"errors", "fsutil"},
    {"ops"},
    {"layers"},
    {"config"},
    {"lm", "sizing", "data"},
    {"runs", "hardware", "checkpoint", "step", "metrics", "train_state", "interrupt", "parallel", "progress"},
    {"train", "records", "evaluate", "generate", "doctor", "warmup", "validation"},
    {"study", "report"},
    {"cli", "__main__"},
]
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}


def _unit(module: str) -> str:
    """elmanlab.ops.elman.fused -> ops; elmanlab.train -> train."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module == "elmanlab":
                out |= {f"elmanlab.{a.name}" for a in node.names}
    return out


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, p


def test_every_module_has_a_level():
    assert {_unit(n) for n, _ in _modules() if n != "elmanlab"} <= set(LEVEL)


def test_imports_run_downward_only():
    bad = []
    for name, path in _modules():
        if name == "elmanlab":
            continue
        mine = LEVEL[_unit(name)]
        for imp in _imports(path):
            if imp.startswith("elmanlab.") and LEVEL[_unit(imp)] > mine:
                bad.append(f"{name} imports {imp}")
    assert not bad, "\n".join(bad)


def test_only_the_cli_knows_argparse_and_evaluate_does_not_import_train():
    for name, path in _modules():
        imps = _imports(path)
        if not name.startswith("elmanlab.cli") and name != "elmanlab.__main__":    # the entry point
            assert "argparse" not in imps and not any(i.startswith("elmanlab.cli") for i in imps), name
    assert not any(i.startswith("elmanlab.train") for i in _imports(PKG / "evaluate.py"))


def test_run_contract_settings_study_and_report_import_without_torch():
    code = ("import sys; import elmanlab.runs, elmanlab.config, elmanlab.study, elmanlab.report; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
