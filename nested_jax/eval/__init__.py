"""Evaluation of nested_jax checkpoints (reads Orbax checkpoints alone; never imports train).

    python -m nested_jax.eval zeroshot|niah|passkey|continual --checkpoint DIR --output F.json
    python -m nested_jax.eval report --inputs A.json B.json --output table.md

Modules: restore (checkpoint → model), models (plain / online scoring models), scoring
(batched log-likelihoods, greedy decoding), tasks (the nine multiple-choice sets),
zeroshot, niah (needle + passkey), domains + trainer + continual, memo (test-time
memorisation), report, output.
"""
