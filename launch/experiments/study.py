"""The five experiment studies: what each one trains, evaluates and checks. Each
`launch/experiments/<study>.sh` runs `python launch/experiments/study.py <study> [flags]`:
train → evaluate → write the study's JSON → regenerate RESULTS.md (report.py).

    bash launch/experiments/hope_vs_titans.sh            # CPU preset (minutes)
    bash launch/experiments/hope_vs_titans.sh --gpu      # one H100: pilot shape, seq 2048
    bash launch/experiments/hope_vs_titans.sh --dry-run  # print the commands only

Presets (`presets/{cpu,gpu,tiny}.toml`) are the literal flags: the training flags
(`--config.x=y`, a study adds its own after them, a later flag of the same key replacing the
earlier one in place) and the flags of each evaluation. Every command is a real CLI call
(`python -m nested_jax.train|eval|release|checkpoint`) run by driver.py from the repository
root, which skips the commands that already finished (`--force` redoes them). Outputs:
`runs/experiments/<study>/<preset>/` (checkpoints, eval JSON, logs; gitignored). Results:
`<out>/results/<study>[-<preset>]/` (default out = launch/experiments): `study.json`
(machine, date, commit, every command with its wall time), copies of the eval JSON files and
of each training run's metrics.jsonl / summary.json / config.json; report.py reads only these.

This file is the command line; each study is a function in recipes.py, written with the
Study class and helpers of study_base.py.
"""

from __future__ import annotations

import argparse
import sys

from driver import Failed, disp
from recipes import RUNNERS
from study_base import HERE, Study

STUDIES = ("hope_vs_titans", "teach_scale_sweep", "multi_device_smoke", "memorisation_pilot",
           "pilot_release", "continual_pretraining")


def parse(argv):
    p = argparse.ArgumentParser(prog="launch/experiments/<study>.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=STUDIES)
    p.add_argument("--gpu", action="store_true",
                   help="presets sized for one H100 (pilot shape 512×12, seq 2048, bf16, 32k vocab)")
    p.add_argument("--tiny", action="store_true", help="the tiniest sizes (end-to-end test)")
    p.add_argument("--steps", type=int, default=0, help="override train.steps")
    p.add_argument("--variants", default=None,
                   help="hope_vs_titans / memorisation_pilot: comma list of hope,titans,transformer")
    p.add_argument("--variant", default=None,
                   help="teach_scale_sweep / multi_device_smoke: the HOPE variant (default hope)")
    p.add_argument("--devices", type=int, default=0,
                   help="multi_device_smoke on CPU: simulated devices (default 2)")
    p.add_argument("--checkpoint", default=None, help="pilot_release: release this workdir")
    p.add_argument("--out", default=str(HERE),
                   help="results/<study>/ and RESULTS.md + figures/ go here")
    p.add_argument("--runs", default=None, help="outputs (default runs/experiments/<study>/<preset>)")
    p.add_argument("--force", action="store_true", help="redo every step (no reuse)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate RESULTS.md")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="no persistent JAX compilation cache (runs/experiments/.jax_cache)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    a.argv_passed = argv[1:]
    if a.gpu and a.tiny:
        p.error("--gpu and --tiny exclude each other")
    return a


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    st = Study(a.study, a)
    try:
        RUNNERS[a.study](st)
    except Failed as e:
        st.doc["failed"] = str(e)
        st.save()
        print(f"error: {e}", file=sys.stderr)
        return 1
    st.doc["complete"] = True
    st.save()
    try:
        st.report()
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not a.dry_run:
        st.say(f"done in {st.doc['wall_s']}s; results in {disp(st.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
