"""Requests per second of `loglikelihood` through the lm-evaluation-harness adapter vs
`eval zeroshot`'s scorer on the same items, same process, same machine.

    python -m benchmarks.lmeval_speed --checkpoint runs/smoke --tasks piqa,arc_easy --limit 200

For each side: one untimed run (compiles), then the timed run. Harness: `lm_eval.simple_evaluate`
with model `nested_jax` on the offline tasks `nj_<task>` (task building, request
construction, scoring, metrics: everything a user waits for). Ours: `eval zeroshot`'s
`evaluate_task` on the same items (`nested_jax.eval.tasks.load_items`). Table on stdout and
DIR/results.json.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from benchmarks import common


def main(argv=None) -> dict:
    ap = common.parser(__doc__, "lmeval_speed")
    ap.add_argument("--checkpoint", required=True, help="a nested_jax training workdir")
    ap.add_argument("--tasks", default="piqa,arc_easy")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--output", default="benchmarks/out/lmeval_speed")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval

    from nested_jax.eval import models, restore
    from nested_jax.eval.tasks import load_items
    from nested_jax.eval.zeroshot import evaluate_task
    from nested_jax.lmeval import register, task_manager

    names = [t.strip() for t in a.tasks.split(",") if t.strip()]
    loaded = restore.load(a.checkpoint)
    model, tok = models.from_loaded(loaded), loaded.tokenizer
    items = {t: load_items(t, a.limit) for t in names}
    n_req = sum(it.n_choices for its in items.values() for it in its)
    max_len = int(loaded.cfg.train.seq_len)

    def ours():
        return {t: evaluate_task(model, tok, its, max_len=max_len, batch_size=a.batch_size,
                                 batch_tokens=32768, progress=False) for t, its in items.items()}

    register()
    tm = task_manager()

    def harness():
        return lm_eval.simple_evaluate(
            model="nested_jax", model_args=f"checkpoint={a.checkpoint},batch_size={a.batch_size}",
            tasks=[f"nj_{t}" for t in names], limit=a.limit, task_manager=tm, verbosity="ERROR")

    rows = []
    for side, fn in (("eval zeroshot", ours), ("lm-eval adapter", harness)):
        fn()  # compile
        t0 = time.perf_counter()
        res = fn()
        wall = time.perf_counter() - t0
        accs = ({t: r["acc"] for t, r in res.items()} if side == "eval zeroshot" else
                {t: res["results"][f"nj_{t}"]["acc,none"] for t in names})
        rows.append({"side": side, "requests": n_req, "wall_s": wall,
                     "requests_per_sec": n_req / wall, "acc": accs})
    ratio = rows[0]["requests_per_sec"] / rows[1]["requests_per_sec"]
    print(common.format_table(rows, [("side", "side", ""), ("requests", "requests", "d"),
                                     ("wall_s", "wall s", ".2f"),
                                     ("requests_per_sec", "requests/s", ",.1f")]))
    print(f"adapter is {ratio:.2f}x slower than eval zeroshot (target ≤ 1.5x); acc: "
          + "; ".join(f"{r['side']} {r['acc']}" for r in rows))
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python -m benchmarks.lmeval_speed " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "machine": common.device_info(), "rows": rows, "slowdown": ratio}
    common.write_json(out, os.path.join(a.output, "results.json"))
    return out


if __name__ == "__main__":
    common.run_script(main, "lmeval_speed")
