"""Bad input is a clear error naming the fix, never a traceback from inside JAX:
config values and impossible combinations, missing data or tokenizer, a checkpoint of
another config or tokenizer, a corrupt checkpoint. The CLI prints one `error:` paragraph
and exits 2."""

import os
import shutil
import subprocess
import sys

import pytest

from nested_jax.checkpoint import CheckpointError, Checkpointer
from nested_jax.train.loop import train_and_evaluate
from nested_jax.train.validate import ConfigError, DataError, preflight
from tests.test_reliability_resume import (  # noqa: F401 - the shared reference run fixture
    CACHE_ENV,
    REPO,
    cli_args,
    reference_run,
    tiny_config,
)

BAD = [
    ({"model.dtype": "float16"}, ConfigError, r"model.dtype='float16' is not valid \(did you "
                                              r"mean 'bfloat16'\?\); choose one of"),
    ({"optim.name": "adam"}, ConfigError, r"optim.name='adam' .*did you mean 'adamw'"),
    ({"model.variant": "hopee"}, ConfigError, r"model.variant='hopee' .*did you mean 'hope'"),
    ({"optim.schedule": "linear"}, ConfigError, r"optim.schedule='linear' is not valid"),
    ({"mesh.mode": "typo"}, ConfigError, r"mesh.mode='typo' is not valid"),
    ({"model.titans.memory": "deep"}, ConfigError, r"model.titans.memory='deep'"),
    ({"optim.b2": 1.0}, ConfigError, r"optim.b2=1.0 is out of range \(must be \[0, 1\)\)"),
    ({"optim.lr": 0.0}, ConfigError, r"optim.lr=0.0 is out of range \(must be > 0\)"),
    ({"checkpoint.max_to_keep": 0}, ConfigError, r"checkpoint.max_to_keep=0 is out of range"),
    ({"train.max_nonfinite_in_a_row": -1}, ConfigError, r"max_nonfinite_in_a_row=-1"),
    ({"model.n_heads": 0}, ConfigError, r"model.n_heads=0 is out of range"),
    ({"model.n_heads": 3}, ConfigError, r"model.n_heads=3 does not divide model.d_model=32"),
    ({"model.variant": "titans", "model.titans.chunk_size": 24}, ConfigError,
     r"model.titans.chunk_size=24 does not divide the 32-token training sequence.*"
     r"Fix: --config.model.titans.chunk_size=16 \(any divisor of 32\)"),
    ({"model.variant": "hope", "model.online.segment_len": 16, "model.selfmod.chunk_size": 6},
     ConfigError, r"model.selfmod.chunk_size=6 does not divide the 16-token online segment"),
    ({"model.variant": "hope_attention", "model.online.segment_len": 16,
      "model.cms.periods": (16, 24, 32)}, ConfigError,
     r"period 24 tokens, which is not a multiple of model.online.segment_len=16"),
    ({"model.variant": "hope_attention", "model.online.segment_len": 24}, ConfigError,
     r"segment_len=24 must be positive and divide the sequence length 32"),
    ({"train.batch_size": 3}, ConfigError, r"train.batch_size=3 must be divisible by the "
                                           r"number of devices \(2\)"),
    ({"data.dataset": "/nonexistent/corpus"}, DataError, r"data.dataset='/nonexistent/corpus' "
                                                         r"cannot feed training.*neither a preset"),
    ({"data.tokenizer": "novels_3k"}, DataError, r"Unknown tokenizer 'novels_3k'. Shipped "
                                                 r"tokenizers: novels_2k"),
    ({"data.tokenizer": "/nonexistent/tok.model"}, DataError, r"Tokenizer file not found"),
    ({"train.seq_len": 4_000_000}, DataError, r"fewer than seq_len \+ 1"),
    ({"eval.num_batches": 100_000}, DataError, r"Fix: lower num_batches"),
]


@pytest.mark.parametrize("overrides,err,pattern", BAD, ids=[",".join(b[0]) for b in BAD])
def test_bad_config_value_is_a_clear_error(overrides, err, pattern):
    with pytest.raises(err, match=pattern):
        preflight(tiny_config(**overrides))


def test_valid_configs_pass_preflight():
    """Every variant's valid config passes, and preflight does its work on it: the vocabulary
    is taken from the tokenizer (finalize_config) and the data iterators are built."""
    for variant in ("transformer", "titans", "hope", "hope_attention", "hope_hybrid"):
        c = tiny_config(**{"model.variant": variant, "model.online.segment_len": 16,
                           "model.cms.periods": (16, 16, 16)})
        assert c.model.vocab_size == 0
        preflight(c)
        assert c.model.vocab_size == 2048, variant  # novels_2k
    bad = tiny_config(**{"model.variant": "hope_attention", "model.online.segment_len": 24})
    with pytest.raises(Exception, match="segment"):  # 24 does not divide seq_len 32
        preflight(bad)


def test_checkpoint_of_another_config_or_tokenizer_is_refused(tmp_path, reference_run):
    wd = str(tmp_path / "run")
    shutil.copytree(reference_run, wd)
    with pytest.raises(ConfigError, match=r"different config \(.*model.d_model: 32 → 64.*"
                                          r"Fix: rerun with the original settings"):
        train_and_evaluate(tiny_config(**{"model.d_model": 64}), wd)
    with pytest.raises(ConfigError, match=r"different tokenizer.*Fix: use the original "
                                          r"--config.data.tokenizer"):
        train_and_evaluate(tiny_config(**{"data.tokenizer": "novels_32k"}), wd)


def _truncate_every_step(ckpt_dir):
    for name in os.listdir(ckpt_dir):
        if name.isdigit():
            path = os.path.join(ckpt_dir, name, "params", "_METADATA")
            with open(path, "r+b") as f:
                f.truncate(10)


def test_cli_prints_one_paragraph_and_exits_2(tmp_path, reference_run):
    """Four kinds of bad input through the real CLI, run side by side."""
    other = str(tmp_path / "other_config")
    shutil.copytree(reference_run, other)
    broken = str(tmp_path / "broken")
    shutil.copytree(reference_run, broken)
    _truncate_every_step(os.path.join(broken, "checkpoints"))
    empty = [str(tmp_path / "a"), str(tmp_path / "b")]
    cases = [
        (empty[0], {"model.dtype": "float16"}, "error: model.dtype='float16' is not valid"),
        (empty[1], {"data.dataset": "/nonexistent/corpus"},
         "error: data.dataset='/nonexistent/corpus' cannot feed training"),
        (other, {"model.d_model": 64}, ("error: the workdir's checkpoint was written with a "
                                        "different config (", "model.d_model: 32 → 64")),
        (broken, {}, "error: every checkpoint in"),
    ]
    procs = [subprocess.Popen(cli_args(wd, **ov), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **CACHE_ENV})
             for wd, ov, _ in cases]
    for p, (wd, _, want) in zip(procs, cases):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, err[-2000:]
        for w in (want,) if isinstance(want, str) else want:
            assert w in err, err[-2000:]
        assert "Traceback" not in err and "Traceback" not in out
        lines = [l for l in err.splitlines() if l.startswith("error:")]
        assert len(lines) == 1, err
    for wd in empty:
        assert not os.path.exists(wd), "nothing may be written on a config error"
    # The corrupt checkpoints are left in place (not moved aside) when none is usable.
    assert sorted(int(n) for n in os.listdir(os.path.join(broken, "checkpoints"))
                  if n.isdigit()) == [12, 18, 24]


def test_cli_formats_a_multiline_error_as_one_paragraph(capsys):
    from nested_jax.train import __main__ as cli

    with pytest.raises(SystemExit) as e:
        cli._fail(CheckpointError("cannot restore step 3:\n  bad\n  file"), 2)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: cannot restore step 3: bad file\n"
    assert sys.version_info >= (3, 12)


def test_an_exception_mid_run_closes_everything_and_leaves_a_resumable_workdir(tmp_path,
                                                                              monkeypatch):
    """Whatever the loop raises, train_and_evaluate restores the signal handlers and closes
    the checkpoint manager, the metrics writer and the progress bar; the rerun resumes."""
    import signal

    from tqdm.std import tqdm

    from nested_jax.checkpoint.io import step_dirs
    from nested_jax.train import metrics as metrics_lib

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    closed = []
    for cls, name in ((Checkpointer, "checkpointer"), (metrics_lib.MetricsWriter, "writer"),
                      (tqdm, "bar")):
        monkeypatch.setattr(cls, "close", lambda self, f=cls.close, n=name: (closed.append(n),
                                                                               f(self))[1])
    update, boom = metrics_lib.NonFiniteGuard.update, [True]

    def update_or_raise(self, step, m):
        if step == 6 and boom[0]:
            raise RuntimeError("boom at step 6")
        return update(self, step, m)

    monkeypatch.setattr(metrics_lib.NonFiniteGuard, "update", update_or_raise)
    over = {"train.steps": 8, "checkpoint.every_steps": 4, "eval.every_steps": 8,
            "logging.progress_bar": True}
    wd = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom at step 6"):
        train_and_evaluate(tiny_config(**over), wd)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert set(closed) == {"bar", "checkpointer", "writer"}, closed
    found = step_dirs(os.path.join(wd, "checkpoints"))
    assert found["steps"] == [4] and not found["tmp"], found
    boom[0] = False
    summary = train_and_evaluate(tiny_config(**over), wd)
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    assert {s: signal.getsignal(s) for s in handlers} == handlers
