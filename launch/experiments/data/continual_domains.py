"""Manifest of the continual-pretraining study's phases (launch/experiments/study.py
`continual_pretraining`): the vendored wikipedia, math and code domains with the splits of
the data presets (nested_jax/data/presets.py), so that a phase trains on exactly the text
`eval continual` holds out from. One domain per phase is picked with `data.mixture`, e.g.
`--config.data.mixture=wikipedia=1,math=0,code=0`. The code domain is limited to 600 files
of the standard library so that it prepares in seconds."""

from nested_jax.data.presets import CODE, MATH_TRAIN, MATH_VALID, WIKIPEDIA

MANIFEST = {
    "name": "continual_domains",
    "sources": [dict(WIKIPEDIA, weight=1.0), dict(MATH_TRAIN, weight=1.0),
                dict(MATH_VALID, weight=1.0), dict(CODE, weight=1.0, limit=600)],
}
