"""`python -m nested_jax.audit`: the static fidelity report names ablations, dead levels and
scale-invariant CMS steps, and --strict refuses them (exit 1)."""

import subprocess
import sys

import pytest

from configs import default, pilot, smoke
from nested_jax.audit import audit, table
from tests.tiny import set_fields


def hope(**fields):
    """The smoke preset itself (what the audit reads) as HOPE, with `fields` set."""
    return set_fields(smoke.get_config(), variant="hope", **fields)


def test_shipped_presets_are_paper_faithful():
    for cfg in (hope(), pilot.get_config(), default.get_config()):
        if cfg.model.variant == "transformer":
            cfg.model.variant = "hope"
        rows, problems = audit(cfg)
        assert not problems, problems
        assert any(r.component == "CMS" and "read per sequence" in r.setting for r in rows)
        assert "v normalisation" in table(rows)


@pytest.mark.parametrize("fields,needle", [
    ({"model.selfmod.dgd": False}, "DGD → GD"),
    ({"model.selfmod.retention": False}, "w/o weight decay"),
    ({"model.selfmod.inner_v": False}, "w/o inner v"),
    ({"model.selfmod.mem_read": "boundary"}, "blind to its own chunk"),
    ({"model.cms.optimizers": ("precond", "gd", "gd")}, "scale-invariant"),
    ({"model.cms.periods": (32, 64, 128)}, "never read"),
])
def test_audit_names_what_is_not_the_paper(fields, needle):
    _, problems = audit(hope(**fields))
    assert any(needle in p for p in problems), problems


def test_audit_reports_cadence_and_outer_only_levels():
    rows, problems = audit(hope(**{"model.cms.periods": (32, 64, 0)}))
    settings = {r.item: r.setting for r in rows}
    assert settings["level fast"] == "every 32 tokens: 4 updates, 3 read per sequence"
    assert settings["level slow"] == "period 0" and not problems


def test_cli_strict_exit_codes():
    base = [sys.executable, "-m", "nested_jax.audit", "--config", "configs/smoke.py",
            "--config.model.variant=hope"]
    ok = subprocess.run(base + ["--strict"], capture_output=True, text=True)
    assert ok.returncode == 0 and "Paper-faithful" in ok.stdout, ok.stderr
    bad = subprocess.run(base + ["--strict", "--config.model.selfmod.dgd=False"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "DGD → GD" in bad.stdout
    err = subprocess.run(base + ["--config.model.selfmod.dgdx=1"], capture_output=True, text=True)
    assert err.returncode == 2 and err.stderr.startswith("error:") and "Traceback" not in err.stderr
