"""`python -m nested_jax.doctor`: what this machine has, and whether nested_jax can run."""

from __future__ import annotations

import importlib
import os
import platform
import sys


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:  # noqa: BLE001
        return f"MISSING ({type(e).__name__})"


def check() -> int:
    ok = True
    print(f"python            {sys.version.split()[0]}  ({sys.executable})")
    if sys.version_info < (3, 12):
        print("  !! Python >= 3.12 is required; run `bash launch/setup.sh`.")
        ok = False
    for mod in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "ml_collections",
                "chex", "sentencepiece", "numpy"):
        v = _version(mod)
        print(f"{mod:<18}{v}")
        ok &= not v.startswith("MISSING")
    print(f"platform          {platform.platform()}  cpus={os.cpu_count()}")
    try:
        import jax

        devs = jax.devices()
        print(f"devices           {len(devs)} × {devs[0].platform}: {[d.device_kind for d in devs]}")
        gpus = [d for d in devs if d.platform == "gpu"]
        print(f"gpu               {'found: ' + gpus[0].device_kind if gpus else 'not found (CPU run)'}")
    except Exception as e:  # noqa: BLE001
        print(f"devices           ERROR {e}")
        ok = False
    here = os.path.dirname(os.path.abspath(__file__))
    assets = os.path.join(here, "assets")
    for rel in ("data/novels100/novels.jsonl.xz", "tokenizers/novels_2k.model",
                "tokenizers/novels_32k.model"):
        p = os.path.join(assets, rel)
        found = os.path.exists(p)
        print(f"asset             {'ok     ' if found else 'MISSING'} {rel}")
        ok &= found
    print("status            " + ("ready" if ok else "NOT READY (see lines marked MISSING / !!)"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 ready, 1 not ready (lines marked MISSING / !!), 2 bad usage."""
    from nested_jax.cli import ArgumentParser, run

    p = ArgumentParser(prog="python -m nested_jax.doctor",
                       description="What this machine has, and whether nested_jax can run.")
    return run(lambda: (p.parse_args(argv), check())[1], prog=p.prog)


if __name__ == "__main__":
    sys.exit(main())
