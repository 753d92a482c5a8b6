"""The package's layering (docs/architecture.md): lower layers never import higher ones, and
evaluation never imports training (it restores models from checkpoints alone)."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "nested_jax"


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.relative_to(PKG.parent).with_suffix("").parts[:-node.level]
                mod = ".".join(base + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _offenders(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((PKG / layer).rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        for mod in _imports(path):
            if mod.startswith(forbidden):
                bad.append(f"{rel} imports {mod}")
    return bad


def test_eval_never_imports_train():
    assert not _offenders("eval", ("nested_jax.train",))


def test_lower_layers_never_import_higher_ones():
    higher = {
        "ops": ("nested_jax.model", "nested_jax.train", "nested_jax.eval", "nested_jax.checkpoint",
                "nested_jax.data"),
        "model": ("nested_jax.train", "nested_jax.eval", "nested_jax.checkpoint"),
        "data": ("nested_jax.model", "nested_jax.train", "nested_jax.eval",
                 "nested_jax.checkpoint"),
        "checkpoint": ("nested_jax.model", "nested_jax.train", "nested_jax.eval"),
    }
    bad = [b for layer, forbidden in higher.items() for b in _offenders(layer, forbidden)]
    assert not bad, bad


def test_the_wheel_ships_only_the_library():
    """setuptools' package discovery with pyproject's include patterns: nested_jax and its
    subpackages (the presets, nested_jax.configs, included), never the checkout's configs/,
    benchmarks/ or tests/."""
    import fnmatch
    import tomllib

    repo = PKG.parent
    include = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    found = {".".join(p.parent.relative_to(repo).parts) for p in repo.rglob("__init__.py")
             if not any(part.startswith(".") for part in p.relative_to(repo).parts)}
    shipped = {p for p in found if any(fnmatch.fnmatchcase(p, pat) for pat in include)}
    assert {"nested_jax", "nested_jax.configs", "nested_jax.model", "nested_jax.ops"} <= shipped
    assert all(p == "nested_jax" or p.startswith("nested_jax.") for p in shipped), shipped
    assert {"configs", "benchmarks"} <= found - shipped


def test_docs_and_their_citations_resolve():
    """Every docs/*.md the code cites exists, every file path the docs name exists, and no
    docstring cites a document that is not in the repository (design notes, specs, issues)."""
    import re

    repo = PKG.parent
    cited, stale = set(), []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        cited |= set(re.findall(r"docs/\w+\.md", text))
        stale += [f"{path.relative_to(repo)}: {m}" for m in
                  re.findall(r"DESIGN §|paper_math|seed_spec|\bissue \d+", text)]
    assert cited and all((repo / c).is_file() for c in cited), cited
    assert not stale, stale
    named, missing = 0, []
    for doc in ("architecture", "memories", "streaming"):
        text = (repo / "docs" / f"{doc}.md").read_text()
        for p in re.findall(r"`(?:nested_jax/)?((?:ops|model|train|eval|checkpoint|data|configs)"
                            r"/\w+\.py)`", text):
            named += 1
            if not (PKG / p).is_file():
                missing.append(f"{doc}.md: {p}")
        for p in re.findall(r"`((?:tests|benchmarks)/\w+\.py)", text):
            named += 1
            if not (repo / p).is_file():
                missing.append(f"{doc}.md: {p}")
    assert named > 20 and not missing, (named, missing)
