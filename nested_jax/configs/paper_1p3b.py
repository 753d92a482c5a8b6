"""The Nested Learning paper's from-scratch LM setting, 1.3B parameters / 100B tokens (NL-N
Table 1, NL-A Table 2), for HOPE and its two baselines. Built by `paper_760m.build`: every
field not listed here, with its source, is in paper_760m.py's list.

    python -m nested_jax.train --config configs/paper_1p3b.py --workdir runs/hope_1p3b
    python -m nested_jax.train --config configs/paper_1p3b.py:titans --workdir runs/titans_1p3b
    python -m nested_jax.train --config configs/paper_1p3b.py:transformer --workdir runs/tpp_1p3b

Pick the variant with the `:variant` suffix (hope, the default; titans; transformer), not
with --config.model.variant (which keeps HOPE's d_ff = 0 and full attention: a ~1.80B Titans).
`:hope_attention` (1339.3M) and `:hope_hybrid` (1.80B, not matched) take HOPE's fields.

What differs from paper_760m.py (sources as there):

  train tokens      100e9 → train.steps 190,735 (100e9 / 524,288 tokens per step = 100.0000e9)
                    — paper (NL-N Table 1, NL-A Table 2: 1.3B / 100B)
  shape             d_model 2048 × n_layers 24, n_heads 16 (head dim 128) — guess (in neither
                    paper; the usual 1.3B shape of this line of work (TTT): 24 × 2048; 16 heads as at 760M)
  optim.lr          4e-4, cosine down to 1e-5 (min_lr_ratio 0.025) — paper (T §5.1 / NL-A
                    "follow Titans"; no 1.3B value is given; TTT's 1.3B config uses 1e-3)
  optim.warmup_steps  19,074 = 10 % of the steps — TTT
  d_ff              Titans 2048, Transformer++ 5120: matched to HOPE's count — ours
  everything else   as paper_760m.py: seq 4096 × batch 128 (0.5M tokens), 32k vocabulary,
                    AdamW wd 0.1, bf16, remat, untied head; HOPE chunks 16 / 64, CMS 4 levels
                    × 1·d, periods (512, 2048, 0, 0), segment 512; Titans MAG, window 2048

Parameter counts (`jax.eval_shape`, tests/test_paper_presets.py): hope 1289.3M, titans
1293.6M, transformer 1288.8M (nominal 1.3B: −0.8 %, −0.5 %, −0.9 %).

Memory: HOPE's fast state is ~6.4 GiB per sequence (paper_760m.py, "Memory").
"""

from nested_jax.configs import paper_760m


def get_config(variant: str = "hope"):
    return paper_760m.build("1p3b", variant or "hope")
