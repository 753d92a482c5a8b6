"""Training: `python -m nested_jax.train --config configs/X.py --workdir DIR`."""
