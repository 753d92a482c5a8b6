"""Config system and set-up: presets load, unknown keys and a wrong Python are clear errors."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(path):
    spec = importlib.util.spec_from_file_location("cfg_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(path):
    return _module(path).get_config()


PRESET_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "nested_jax", "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "repro.py"))  # helpers


@pytest.mark.parametrize("path", PRESET_FILES)
def test_every_preset_loads_with_required_groups(path):
    c = _module(path).get_config()
    for group in ("model", "data", "train", "optim", "checkpoint", "eval", "mesh", "logging"):
        assert group in c, f"{path} lacks group {group}"
    assert "variant" in c.model and "every_steps" in c.checkpoint and "data" in c.mesh
    for key in ("steps", "batch_size", "seq_len"):
        assert key in c.train
    # Derived checks (heads divide width, CMS periods vs segment, ...) pass for every preset.
    from nested_jax.train.validate import finalize_config

    # (a preset of a converted model states its vocabulary: stack_llama's shapes)
    finalize_config(c, c.model.vocab_size or (32000 if c.data.tokenizer == "novels_32k" else 2048))


def test_checkout_shortcuts_and_preset_names_load_the_shipped_presets(tmp_path, monkeypatch):
    """configs/<name>.py in a checkout is the shipped preset; outside a checkout (another
    working directory) `configs/<name>.py` and the bare name resolve to the shipped file."""
    from nested_jax.configs import PRESETS_DIR, preset_path, presets, resolve_config_flag

    names = presets()
    assert {"default", "smoke", "pilot", "pilot_smoke", "mid_stage2"} <= set(names)
    shortcuts = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))}
    assert set(names) <= shortcuts
    for name in names:
        assert (_load(os.path.join(REPO, "configs", f"{name}.py")).to_dict()
                == _load(os.path.join(PRESETS_DIR, f"{name}.py")).to_dict()), name
    monkeypatch.chdir(tmp_path)
    shipped = os.path.join(PRESETS_DIR, "smoke.py")
    assert preset_path("configs/smoke.py") == preset_path("smoke") == shipped
    assert preset_path("smoke.py:arg") == shipped + ":arg"
    assert preset_path("other/smoke.py") == "other/smoke.py"  # a missing path stays an error
    assert resolve_config_flag(["p", "--config=smoke", "--config.train.steps=3"]) == [
        "p", f"--config={shipped}", "--config.train.steps=3"]
    assert resolve_config_flag(["p", "--config", "configs/nope.py"])[2] == "configs/nope.py"


def test_every_default_field_has_a_comment():
    src = open(os.path.join(REPO, "nested_jax", "configs", "default.py")).read()
    for line in src.splitlines():
        s = line.strip()
        if s.startswith(("c.", "m.", "t.", "o.", "k.", "e.", "lg.")) and "=" in s \
                and "ConfigDict()" not in s:
            assert "#" in s, f"config field without a comment: {s}"


def _run_train(*args):
    return subprocess.run([sys.executable, "-m", "nested_jax.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_unknown_config_key_is_a_clear_error(tmp_path):
    r = _run_train("--config", "configs/smoke.py", "--workdir", str(tmp_path),
                   "--config.train.stepz=5")
    assert r.returncode == 2
    assert "unknown config key 'train.stepz'" in r.stderr
    assert 'Did you mean "steps"' in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.listdir(tmp_path), "nothing may be written on a config error"


def test_bad_value_type_is_a_clear_error(tmp_path):
    r = _run_train("--config", "configs/smoke.py", "--workdir", str(tmp_path),
                   "--config.train.steps=abc")
    assert r.returncode == 2 and "train.steps=abc" in r.stderr and "Traceback" not in r.stderr


def _old_python():
    for cand in ["python3.11", "python3.10", *sorted(glob.glob(os.path.expanduser(
            "~/.pyenv/versions/3.1[01]*/bin/python3")))]:
        path = shutil.which(cand) or (cand if os.path.exists(cand) else None)
        if path:
            out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] < (3, 12))"],
                                 capture_output=True, text=True)
            if out.stdout.strip() == "True":
                return path
    return None


def test_wrong_python_is_a_clear_error():
    py = _old_python()
    if py is None:
        pytest.skip("no Python < 3.12 on this machine")
    r = subprocess.run([py, "-c", "import nested_jax"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode != 0
    assert "needs Python >= 3.12" in r.stderr and "launch/setup.sh" in r.stderr


def test_setup_script_refuses_an_old_python(tmp_path):
    py = _old_python()
    if py is None:
        pytest.skip("no Python < 3.12 on this machine")
    r = subprocess.run(["bash", os.path.join(REPO, "launch", "setup.sh")], capture_output=True,
                       text=True, env={**os.environ, "PYTHON": py, "VENV": str(tmp_path / "v")},
                       timeout=120)
    assert r.returncode == 1
    assert "not a working Python >= 3.12" in r.stderr
    assert not (tmp_path / "v").exists()
