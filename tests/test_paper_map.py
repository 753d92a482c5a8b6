"""docs/paper_map.md cannot rot: every test, function file and config field it names exists."""

import glob
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_paper_map_references_resolve():
    text = (REPO / "docs" / "paper_map.md").read_text()
    tests = {p: (REPO / p).read_text() for p in glob.glob("tests/*.py", root_dir=REPO)}
    missing = [f"{f}::{t}" for f, t in re.findall(r"`(tests/\w+\.py)::(\w+)", text)
               if f"def {t}" not in tests.get(f, "")]
    missing += [t for t in re.findall(r"[`,] ?`?(test_\w+)`", text)
                if not any(f"def {t}" in src for src in tests.values())]
    for path in re.findall(r"`((?:ops|model|train|eval|checkpoint)/\w+\.py)`", text):
        if not (REPO / "nested_jax" / path).exists():
            missing.append(path)
    for path in re.findall(r"`((?:configs|tests)/\w+\.py)`", text):
        if not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"docs/paper_map.md names what does not exist: {missing}"
