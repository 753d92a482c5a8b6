"""Test-wide JAX set-up: CPU backend with 2 simulated devices, strict rank promotion."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# One XLA compilation cache for the whole run (a fresh folder per run, removed at exit), shared
# by the pytest-xdist workers: the tests compile the same tiny models again and again (a new
# closure or an eager call traces anew, but identical HLO is then a cache hit instead of
# seconds of XLA compile), whichever worker compiled them first. The folder is made by the
# process that starts first (the xdist controller, or the only process) and handed to the
# workers in NESTED_JAX_TEST_XLA_CACHE, which JAX itself does not read (subprocesses the tests
# start keep their own settings). A cache entry read while another worker still writes it is
# a warning and a recompile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = os.environ.get("NESTED_JAX_TEST_XLA_CACHE")
    if not _cache_dir or not os.path.isdir(_cache_dir):
        import atexit
        import shutil
        import tempfile

        _cache_dir = tempfile.mkdtemp(prefix="nested_jax_test_xla_cache-")
        atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
        os.environ["NESTED_JAX_TEST_XLA_CACHE"] = _cache_dir
    jax.config.update("jax_compilation_cache_dir", _cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
