"""train.compile_cache: where XLA's persistent compilation cache goes, and that the step
programs land there (nested_jax/train/compile_cache.py)."""

import os
import subprocess
import sys

from nested_jax.train import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_directory_by_setting_and_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.directory("auto", "cpu") is None  # CPU programs compile in seconds
    assert compile_cache.directory("auto", "gpu") == str(tmp_path / "xdg" / "nested_jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.directory("auto", "gpu") == str(tmp_path / "env")
    assert compile_cache.directory("", "gpu") is None
    assert compile_cache.directory(str(tmp_path / "mine"), "cpu") == str(tmp_path / "mine")


def test_enable_sends_compiled_programs_to_the_directory(tmp_path):
    """In a fresh process (the cache is process-wide): an explicit directory on the CPU
    receives the compiled program; a directory that cannot be created leaves the cache off
    with a warning naming the fix."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = f"""
import jax, jax.numpy as jnp
from nested_jax.train import compile_cache
assert compile_cache.enable({str(blocker / 'sub')!r}) is None
path = compile_cache.enable({str(tmp_path / 'cache')!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
print("PATH", path)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr
    assert f"PATH {tmp_path / 'cache'}" in res.stdout
    assert "cannot create" in res.stdout and "compile_cache" in res.stdout
    assert os.listdir(tmp_path / "cache")  # the compiled program is on disk
