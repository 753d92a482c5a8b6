"""Peak host memory of `convert import-hf` on a synthetic Llama checkpoint (issue 21 item 1).

Writes a random bf16 Llama of the given shape as a Hugging Face folder (safetensors, sharded
like real checkpoints, with the llama fixture's tokenizer), imports it in a child process and
reports that process's peak RSS (ru_maxrss) against the weights' size in bf16 and float32.
The default shape is TinyLlama-1.1B's (d 2048, 22 layers, 32 heads, 4 kv heads, d_ff 5632,
vocab 32000 — the tokenizer covers fewer ids, which the import allows: rows ≥ tokenizer).

    python -m benchmarks.import_memory --output benchmarks/out/import_memory
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from benchmarks import common
from nested_jax.convert.safetensors_io import save_file

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf" / "llama_gqa"


def write_model(folder: Path, d: int, layers: int, heads: int, kv: int, ff: int, vocab: int) -> int:
    """A random bf16 Llama in `folder`, one shard per few layers; returns the weight bytes."""
    rng = np.random.default_rng(0)
    hd = d // heads
    bf = lambda *shape: (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)  # noqa: E731
    weight_map, total, shard, tensors = {}, 0, 0, {}

    def flush():
        nonlocal shard, tensors, total
        if tensors:
            name = f"model-{shard:05d}.safetensors"
            save_file(tensors, folder / name)
            weight_map.update({k: name for k in tensors})
            total += sum(a.nbytes for a in tensors.values())
            shard, tensors = shard + 1, {}

    tensors.update({"model.embed_tokens.weight": bf(vocab, d), "lm_head.weight": bf(vocab, d),
                    "model.norm.weight": np.ones(d, ml_dtypes.bfloat16)})
    flush()
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": np.ones(d, ml_dtypes.bfloat16),
                        p + "post_attention_layernorm.weight": np.ones(d, ml_dtypes.bfloat16),
                        p + "self_attn.q_proj.weight": bf(heads * hd, d),
                        p + "self_attn.k_proj.weight": bf(kv * hd, d),
                        p + "self_attn.v_proj.weight": bf(kv * hd, d),
                        p + "self_attn.o_proj.weight": bf(d, heads * hd),
                        p + "mlp.gate_proj.weight": bf(ff, d), p + "mlp.up_proj.weight": bf(ff, d),
                        p + "mlp.down_proj.weight": bf(d, ff)})
        if i % 4 == 3:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = json.loads((FIX / "config.json").read_text())
    cfg.update(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv, head_dim=hd, intermediate_size=ff, vocab_size=vocab,
               rope_scaling=None, rope_theta=10000.0, max_position_embeddings=2048)
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIX / f, folder / f)
    return total


def main() -> int:
    ap = common.parser(__doc__, "import_memory")
    ap.add_argument("--shape", default="2048,22,32,4,5632,32000",
                    help="d_model,layers,heads,kv_heads,d_ff,vocab")
    ap.add_argument("--output", default="benchmarks/out/import_memory")
    a = ap.parse_args()
    d, layers, heads, kv, ff, vocab = (int(x) for x in a.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "hf"
        src.mkdir()
        nbytes = write_model(src, d, layers, heads, kv, ff, vocab)
        t0 = time.time()
        child = subprocess.run([sys.executable, "-m", "nested_jax.convert", "import-hf", "--input",
                                str(src), "--output", str(Path(tmp) / "wd")],
                               capture_output=True, text=True)
        secs = time.time() - t0
        if child.returncode:
            print(child.stderr[-2000:])
            return 1
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    n_params = nbytes // 2
    row = {"shape": a.shape, "params": n_params, "weights_bf16_GB": nbytes / 1e9,
           "params_f32_GB": 4 * n_params / 1e9, "peak_rss_GB": peak / 1e9,
           "peak_over_f32": peak / (4 * n_params), "seconds": round(secs, 1)}
    print("| params | bf16 weights GB | float32 params GB | peak RSS GB | peak / float32 | s |")
    print("|---|---|---|---|---|---|")
    print(f"| {n_params / 1e9:.2f}B | {row['weights_bf16_GB']:.2f} | {row['params_f32_GB']:.2f} | "
          f"{row['peak_rss_GB']:.2f} | {row['peak_over_f32']:.2f} | {row['seconds']} |")
    os.makedirs(a.output, exist_ok=True)
    Path(a.output, "results.json").write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    common.run_script(main, "import_memory")
