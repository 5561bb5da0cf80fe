"""scripts/gpu_check.py's dry run on the CPU (tiny sizes, compiled code traced with aot_eager): every part of the
GPU host's first call runs and writes its figures, so a GPU host never meets a script that has not run."""
import json
import math
import os
import sys

import pytest

from conftest import FASHION, needs_fashion
from helpers import ROOT, run


@needs_fashion
@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    p = run([os.path.join(ROOT, "scripts", "gpu_check.py"), "--device", "cpu", "--tiny", "--data", FASHION,
             "--out", str(tmp_path)], timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.load(open(tmp_path / "gpu_check.json"))
    assert res["errors"] == {}, res["errors"]
    assert res["device"] == "cpu" and res["tiny"] is True and len(res["git_sha"]) == 40
    d = res["device_epoch"]
    assert d["device"]["images"] == d["synthetic"]["images"] > 0
    assert d["ratio_to_synthetic"] == pytest.approx(d["synthetic"]["epoch_s"] / d["device"]["epoch_s"])
    assert set(res["bare_step"]) == {f"{a}_{r}_{m}" for a, r in (("resnet50", 32), ("resnet18", 16))
                                     for m in ("eager", "compiled")}
    assert all(v["pairs_s"] > 0 and math.isfinite(v["ms"]) for v in res["bare_step"].values())
    assert all(res["addons"][k]["ms"] > 0 for k in ("plain", "bsim", "sepp", "no_guard"))
    assert res["knn"]["n"] == 4096 and res["knn"]["seconds"] > 0
    from models.methods import METHODS
    assert res["sync"] == {f"{m}_bf16": "ok" for m in METHODS}
    table = open(tmp_path / "gpu_check.txt").read()
    assert "sync-free steps: 4/4 ok" in table and "FAILED" not in table
    assert table.strip() in p.stdout


def test_gpu_check_names_a_failed_part_and_goes_on(tmp_path, monkeypatch):
    """One part's failure is a finding: it is written under 'errors' and the table says FAILED."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gpu_check
    monkeypatch.setitem(gpu_check.PARTS, "knn", lambda a, dev: 1 / 0)
    res = gpu_check.main(["--device", "cpu", "--tiny", "--parts", "knn", "--out", str(tmp_path)])
    assert res["errors"] == {"knn": "ZeroDivisionError: division by zero"}
    assert "knn: FAILED ZeroDivisionError" in open(tmp_path / "gpu_check.txt").read()
