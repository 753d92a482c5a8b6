"""One bad-input contract for every CLI: train, eval, data, checkpoint, release and
doctor answer bad input with exactly one `error: <problem>. Fix: <what to do>` line, exit
status 2 and no traceback.

A table of (CLI, arguments, words the error must contain). The argparse CLIs run in-process
through their `main(argv)` (the same function `python -m` calls, output captured); the train
CLI (absl flags: one parse per process) and one case of every other CLI run as real
`python -m` subprocesses, all at once. None of the cases trains or loads a model.
"""

import os
import subprocess
import sys

import pytest

from nested_jax import doctor, generate, release
from nested_jax.checkpoint.__main__ import main as checkpoint_main
from nested_jax.data.__main__ import main as data_main
from nested_jax.eval.__main__ import main as eval_main
from tests.test_reliability_resume import REPO

MAINS = {"eval": eval_main, "data": data_main, "checkpoint": checkpoint_main,
         "release": release.main, "doctor": doctor.main, "generate": generate.main}
MODULES = {"train": "nested_jax.train", "eval": "nested_jax.eval", "data": "nested_jax.data",
           "checkpoint": "nested_jax.checkpoint", "release": "nested_jax.release",
           "doctor": "nested_jax.doctor", "generate": "nested_jax.generate"}
SMOKE = ["--config", "configs/smoke.py"]

# (id, cli, argv with {d} = a folder of bad inputs, words the error line must contain, how to
# run: "sub" = subprocess, "in" = in-process main(argv))
CASES = [
    # train: config file, config values, flags, workdir
    ("train-unknown-key", "train", SMOKE + ["--workdir", "{d}/w1", "--config.train.stepz=5"],
     ["unknown config key 'train.stepz'"], "sub"),
    ("train-wrong-type", "train", SMOKE + ["--workdir", "{d}/w2", "--config.train.steps=abc"],
     ["--config.train.steps=abc has the wrong type", "type int"], "sub"),
    ("train-missing-config", "train", ["--config", "configs/nope.py", "--workdir", "{d}/w3"],
     ["config file 'configs/nope.py' not found"], "sub"),
    ("train-broken-config", "train", ["--config", "{d}/broken_config.py", "--workdir", "{d}/w4"],
     ["cannot load config", "SyntaxError"], "sub"),
    ("train-workdir-is-a-file", "train", SMOKE + ["--workdir", "{d}/afile"],
     ["--workdir", "is a file"], "sub"),
    ("train-workdir-not-writable", "train", SMOKE + ["--workdir", "{d}/afile/run"],
     ["--workdir", "cannot be created", "is a file"], "sub"),
    ("train-no-workdir", "train", SMOKE, ["--workdir is required"], "sub"),
    ("train-unknown-flag", "train", SMOKE + ["--workdir", "{d}/w5", "--bogus=1"],
     ["Unknown command line flag 'bogus"], "sub"),
    ("train-stray-argument", "train", SMOKE + ["--workdir", "{d}/w6", "stray"],
     ["unexpected arguments ['stray']"], "sub"),
    ("train-step-type", "train", SMOKE + ["--workdir", "{d}/w7", "--step=abc"],
     ["step"], "sub"),
    ("train-nan-lr", "train", SMOKE + ["--workdir", "{d}/w8", "--config.optim.lr=nan"],
     ["optim.lr=nan is not a finite number"], "sub"),
    ("train-periods-not-ints", "train", SMOKE + ["--workdir", "{d}/w9",
                                                 "--config.model.variant=hope_attention",
                                                 "--config.model.cms.periods=abc"],
     ["model.cms.periods=('abc',) holds 'abc'", "ints"], "sub"),
    ("train-tokenizer-not-a-model", "train", SMOKE + ["--workdir", "{d}/w10",
                                                      "--config.data.tokenizer={d}/afile"],
     ["is not a SentencePiece model"], "sub"),
    # eval
    ("eval-missing-checkpoint", "eval", ["zeroshot", "--checkpoint", "{d}/nope", "--output",
                                         "{d}/zs.json"], ["no checkpoint at"], "sub"),
    ("eval-output-not-writable", "eval", ["zeroshot", "--checkpoint", "{d}/nope", "--output",
                                          "{d}/afile/zs.json"], ["--output", "is a file"], "in"),
    ("eval-output-is-a-folder", "eval", ["niah", "--checkpoint", "{d}/nope", "--out", "{d}"],
     ["--output", "is a folder"], "in"),
    ("eval-wrong-type", "eval", ["zeroshot", "--checkpoint", "{d}/nope", "--limit", "abc",
                                 "--output", "{d}/zs.json"], ["--limit: 'abc' is not an integer"], "in"),
    # the grammar's kinds (nested_jax.cli int_at_least / float_at_least / ints_at_least)
    ("eval-negative-limit", "eval", ["zeroshot", "--checkpoint", "{d}/nope", "--limit", "-3",
                                     "--output", "{d}/zs.json"], ["--limit: -3 must be ≥ 0"], "in"),
    ("eval-zero-batch", "eval", ["zeroshot", "--checkpoint", "{d}/nope", "--batch-size", "0",
                                 "--output", "{d}/zs.json"], ["--batch-size: 0 must be ≥ 1"], "in"),
    ("eval-negative-length", "eval", ["niah", "--checkpoint", "{d}/nope", "--lengths", "-256",
                                      "--output", "{d}/n.json"], ["--lengths: -256 is out of range"],
     "in"),
    ("eval-depth-range", "eval", ["passkey", "--checkpoint", "{d}/nope", "--depths", "0,150",
                                  "--output", "{d}/n.json"], ["--depths: 150 is out of range"], "in"),
    ("eval-zero-windows", "eval", ["continual", "--checkpoint", "{d}/nope", "--windows", "0",
                                   "--output", "{d}/c.json"], ["--windows: 0 must be ≥ 1"], "in"),
    ("eval-negative-lr", "eval", ["continual", "--checkpoint", "{d}/nope", "--lr", "-1",
                                  "--output", "{d}/c.json"], ["--lr: -1 must be ≥ 0"], "in"),
    ("eval-nan-lr", "eval", ["continual", "--checkpoint", "{d}/nope", "--lr", "nan",
                             "--output", "{d}/c.json"], ["--lr: 'nan' is not a finite number"], "in"),
    ("eval-perplexity-zero-batch", "eval", ["perplexity", "--checkpoint", "{d}/nope", "--text",
                                            "wikitext2", "--batch-size", "0", "--output",
                                            "{d}/p.json"], ["--batch-size: 0 must be ≥ 1"], "in"),
    # generate
    ("generate-unknown-flag", "generate", ["--checkpoint", "{d}/nope", "--bogus"],
     ["unrecognized arguments: --bogus"], "sub"),
    ("generate-zero-tokens", "generate", ["--checkpoint", "{d}/nope", "--prompt", "a",
                                          "--max-new-tokens", "0"],
     ["--max-new-tokens: 0 must be ≥ 1"], "in"),
    ("generate-missing-checkpoint", "generate", ["--checkpoint", "{d}/nope", "--prompt", "a"],
     ["no checkpoint"], "in"),
    ("eval-unknown-command", "eval", ["zeroshoot"], ["invalid choice: 'zeroshoot'"], "in"),
    ("eval-missing-output", "eval", ["zeroshot", "--checkpoint", "{d}/nope"],
     ["required: --output"], "in"),
    ("eval-report-bad-input", "eval", ["report", "--inputs", "{d}/missing.json", "--output",
                                       "{d}/t.md"], ["cannot read eval result"], "in"),
    # data
    ("data-missing-input", "data", ["tokenizer", "--input", "{d}/missing.txt", "--output",
                                    "{d}/tok/t"], ["not found", "missing.txt"], "in"),
    ("data-empty-input", "data", ["tokenizer", "--input", "{d}/empty.txt", "--output",
                                  "{d}/tok/t"], ["No training text"], "in"),
    ("data-binary-input", "data", ["tokenizer", "--input", "{d}/random.txt", "--output",
                                   "{d}/tok/t"], ["{d}/random.txt is not UTF-8 text"], "sub"),
    ("data-binary-jsonl", "data", ["tokenizer", "--input", "{d}/random.jsonl", "--output",
                                   "{d}/tok/t"], ["{d}/random.jsonl is not UTF-8 text"], "in"),
    ("data-nul-bytes", "data", ["tokenizer", "--input", "{d}/nul.txt", "--output", "{d}/tok/t"],
     ["{d}/nul.txt holds NUL bytes"], "in"),
    ("data-not-xz", "data", ["tokenizer", "--input", "{d}/fake.txt.xz", "--output", "{d}/tok/t"],
     ["{d}/fake.txt.xz cannot be decompressed"], "in"),
    ("data-unknown-preset", "data", ["prepare", "--preset", "nope", "--output", "{d}/p"],
     ["Unknown preset 'nope'"], "in"),
    ("data-manifest-not-json", "data", ["prepare", "--manifest", "{d}/bad.json", "--output",
                                        "{d}/p"], ["is not valid JSON"], "in"),
    ("data-manifest-not-object", "data", ["prepare", "--manifest", "{d}/list.json", "--output",
                                          "{d}/p"], ["is malformed"], "in"),
    ("data-manifest-broken-py", "data", ["prepare", "--manifest", "{d}/bad_manifest.py",
                                         "--output", "{d}/p"], ["failed to load"], "in"),
    ("data-manifest-missing", "data", ["prepare", "--manifest", "{d}/none.json", "--output",
                                       "{d}/p"], ["Manifest not found"], "in"),
    ("data-output-is-a-file", "data", ["prepare", "--preset", "sample", "--out", "{d}/afile"],
     ["--output", "is a file"], "in"),
    ("data-output-not-writable", "data", ["tokenizer", "--input", "{d}/empty.txt", "--output",
                                          "{d}/afile/t"], ["--output", "cannot be created"], "in"),
    ("data-wrong-type", "data", ["tokenizer", "--input", "x", "--vocab-size", "abc",
                                 "--output", "{d}/t"], ["--vocab-size: invalid int value"], "in"),
    ("data-no-source", "data", ["prepare", "--output", "{d}/p"],
     ["exactly one of --preset NAME or --manifest"], "in"),
    # checkpoint
    ("checkpoint-verify-missing", "checkpoint", ["verify", "--checkpoint", "{d}/nope"],
     ["no checkpoint folder"], "sub"),
    ("checkpoint-verify-empty", "checkpoint", ["verify", "--checkpoint", "{d}/emptyrun"],
     ["no checkpoints in", "no step folders"], "in"),
    ("checkpoint-verify-no-folder", "checkpoint", ["verify"],
     ["no checkpoint folder given", "--checkpoint DIR"], "in"),
    ("checkpoint-rollback-missing", "checkpoint", ["rollback", "--checkpoint", "{d}/nope",
                                                   "--step", "3"], ["no checkpoint folder"], "in"),
    ("checkpoint-rollback-old-spelling", "checkpoint", ["rollback", "{d}/nope", "3"],
     ["no checkpoint folder"], "in"),
    ("checkpoint-rollback-empty", "checkpoint", ["rollback", "--checkpoint", "{d}", "--step", "3"],
     ["step 3 not found", "holds no checkpoint"], "in"),
    ("checkpoint-rollback-no-step", "checkpoint", ["rollback", "--checkpoint", "{d}"],
     ["rollback needs the step", "--step N"], "in"),
    ("checkpoint-rollback-type", "checkpoint", ["rollback", "--checkpoint", "{d}", "--step",
                                                "abc"], ["argument --step: 'abc' is not an integer"],
     "in"),
    ("checkpoint-no-command", "checkpoint", [], ["required: command"], "in"),
    # release
    ("release-missing-checkpoint", "release", ["--checkpoint", "{d}/nope", "--output", "{d}/r"],
     ["no checkpoint folder"], "in"),
    ("release-output-not-writable", "release", ["--checkpoint", "{d}/nope", "--output",
                                                "{d}/afile/r"], ["cannot be created"], "in"),
    ("release-verify-missing", "release", ["verify", "{d}/nope"], ["has no SHA256SUMS"], "sub"),
    ("release-missing-flag", "release", ["--output", "{d}/r"], ["required: --checkpoint"], "in"),
    # doctor
    ("doctor-unknown-flag", "doctor", ["--bogus"], ["unrecognized arguments: --bogus"], "sub"),
    # benchmarks
    ("bench-cost-model-variant", "benchmarks.cost_model", ["--variants", "nope", "--device", "cpu"],
     ["unknown --variants ['nope']"], "sub"),
]
# Every benchmark script follows the same contract (benchmarks.common.parser / run_script).
BENCHMARKS = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..",
                                                             "benchmarks"))
                    if f.endswith(".py") and f[:-3] not in ("__init__", "common", "hlo_cost",
                                                             "hlo_parse", "gpu_aot"))
CASES += [(f"bench-{b}-flag", f"benchmarks.{b}", ["--bogus"], [f"(python -m benchmarks.{b})"],
           "sub") for b in BENCHMARKS]
MODULES.update({f"benchmarks.{b}": f"benchmarks.{b}" for b in BENCHMARKS})


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "afile").write_text("not a folder\n")
    (d / "empty.txt").write_text("")
    rng = __import__("random").Random(0)
    (d / "random.txt").write_bytes(bytes([0xFF, 0xFE]) + bytes(rng.randrange(256)
                                                               for _ in range(4000)))
    (d / "random.jsonl").write_bytes(bytes([0xC3, 0x28]) + bytes(rng.randrange(256)
                                                               for _ in range(4000)))
    (d / "nul.txt").write_bytes(b"hello\x00world\n")
    (d / "fake.txt.xz").write_bytes(b"this is not xz\n")
    (d / "bad.json").write_text('{"sources": [')
    (d / "list.json").write_text("[1, 2]")
    (d / "bad_manifest.py").write_text("def get_manifest(:\n")
    (d / "broken_config.py").write_text("def get_config(:\n")
    (d / "emptyrun" / "checkpoints").mkdir(parents=True)
    return str(d)


def _fill(args, d):
    return [a.replace("{d}", d) for a in args]


def _check(case_id, rc, out, err, want):
    text = out + err
    assert rc == 2, f"{case_id}: exit {rc}\n{text[-3000:]}"
    assert "Traceback" not in text, f"{case_id}: traceback\n{text[-3000:]}"
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, f"{case_id}: want one error line\n{err[-3000:]}"
    line = lines[0]
    assert ". Fix: " in line or "Fix: " in line, f"{case_id}: no 'Fix:' in {line!r}"
    for w in want:
        assert w in line, f"{case_id}: {w!r} not in {line!r}"


IN = [c for c in CASES if c[4] == "in"]
SUB = [c for c in CASES if c[4] == "sub"]


@pytest.mark.parametrize("case_id,cli,args,want,_", IN, ids=[c[0] for c in IN])
def test_bad_input_in_process(case_id, cli, args, want, _, bad, capsys):
    rc = MAINS[cli](_fill(args, bad))
    out, err = capsys.readouterr()
    _check(case_id, rc, out, err, _fill(want, bad))


def test_bad_input_through_python_m(bad):
    """The real entry points, side by side: the train CLI's cases and one case of every other
    CLI (none imports JAX before failing, except eval and checkpoint)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [(c, subprocess.Popen([sys.executable, "-m", MODULES[c[1]], *_fill(c[2], bad)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)) for c in SUB]
    for c, p in procs:
        out, err = p.communicate(timeout=180)
        _check(c[0], p.returncode, out, err, _fill(c[3], bad))
    assert sorted({c[1] for c in SUB}) == sorted(MODULES), "every CLI has a subprocess case"
    for name in ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "w10"):
        assert not os.path.exists(os.path.join(bad, name)), "nothing is written on bad input"


# Old spellings kept as deprecated aliases (docs/cli.md, "Deprecated spellings"): each parses
# to what the new spelling gives and prints one warning line naming the new one.
ALIASES = [
    ("eval", ["niah", "--checkpoint", "c", "--output", "o.json"], "--max-length", "--max-context",
     "100", "max_context", 100),
    ("eval", ["continual", "--checkpoint", "c", "--output", "o.json"], "--seq-len", "--max-length",
     "64", "max_length", 64),
    ("eval", ["perplexity", "--checkpoint", "c", "--text", "t", "--output", "o.json"],
     "--memorize", "--learn-online", None, "learn_online", True),
    ("generate", ["--checkpoint", "c", "--prompt", "p"], "--memorize", "--learn-online", None,
     "learn_online", True),
    ("data", ["tokenizer", "--input", "x", "--output", "t"], "--threads", "--workers", "3",
     "workers", 3),
]


@pytest.mark.parametrize("cli,base,old,new,value,dest,want", ALIASES,
                         ids=[f"{a[0]}{a[2]}" for a in ALIASES])
def test_deprecated_spellings_mean_the_same_and_warn_once(cli, base, old, new, value, dest, want,
                                                         capsys):
    from nested_jax import cli as cli_lib
    from nested_jax.data.__main__ import build_parser as data_parser
    from nested_jax.eval.__main__ import build_parser as eval_parser

    parser = {"eval": eval_parser, "data": data_parser, "generate": generate.build_parser}[cli]()
    extra = lambda flag: [flag] + ([] if value is None else [value])  # noqa: E731
    new_ns = parser.parse_args(base + extra(new))
    assert capsys.readouterr().err == ""
    cli_lib._WARNED.discard(old)
    old_ns = parser.parse_args(base + extra(old) + extra(old))  # given twice: one warning
    err = capsys.readouterr().err
    assert getattr(old_ns, dest) == getattr(new_ns, dest) == want
    assert err.count("warning:") == 1 and f"{old} is deprecated; use {new}" in err


def test_checkpoint_positionals_are_deprecated_aliases(bad, capsys):
    from nested_jax import cli as cli_lib

    cli_lib._WARNED.clear()
    rc = checkpoint_main(["rollback", os.path.join(bad, "nope"), "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "use --checkpoint DIR" in err and "use --step N" in err
