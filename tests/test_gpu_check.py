"""The GPU host's first call, run on the CPU: scripts/gpu_check.sh's plan fits in 8 minutes with the sync and
defect checks first; its parts each run under their own limit and leave their rows as they end, a part cut at its
limit included; and scripts/gpu_check.py's dry run (tiny sizes, compiled code traced with aot_eager) runs every
part and writes its figures, so a GPU host never meets a script that has not run."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import FASHION, needs_fashion
from helpers import ROOT, make_image_folder, run

SH = os.path.join(ROOT, "scripts", "gpu_check.sh")


def sh(*args, env=None, timeout=600):
    """bash scripts/gpu_check.sh ARGS, with this interpreter first on PATH (the script calls python3)."""
    e = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
             PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(["bash", SH, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)


def test_gpu_check_plan_fits_in_8_minutes_with_the_sync_and_defect_checks_first():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gpu_check
    p = sh("plan")
    m = re.fullmatch(r"estimate: at most (\d+) s on the GPU \((\d+) s set-up, then (.*)\)", p.stdout.strip())
    assert p.returncode == 0 and m, p.stdout + p.stderr
    parts = [(x.split()[0], int(x.split()[1])) for x in m.group(3).split(", ")]
    assert int(m.group(1)) == int(m.group(2)) + sum(s for _, s in parts) <= 480
    assert [n for n, _ in parts[:2]] == ["sync", "defects"]
    assert {n for n, _ in parts} == set(gpu_check.PARTS) | {"defects", "gpu_tests"}   # every part, each once
    assert len(parts) == len(gpu_check.PARTS) + 2


@needs_fashion
def test_each_part_leaves_its_rows_as_it_ends_and_a_cut_part_says_so(tmp_path):
    """The dry run (DRY=1, limits x4) of three parts: the defect tests (collected: no GPU here), the sync part cut
    at its limit of 4 s, then the kNN part, which still runs and appends its row after the cut part's."""
    p = sh(FASHION, str(tmp_path), env={"DRY": "1", "PARTS": "defects:45 sync:1 knn:25"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    table = open(tmp_path / "gpu_check.txt").read().splitlines()
    assert re.fullmatch(r"GPU check on cpu \(torch 2\.\S+, git [0-9a-f]{8}, \d{4}-\d\d-\d\d\)", table[0]), table
    assert re.fullmatch(r"gpu tests, defects: \d+/\d+ tests collected .*", table[1]), table
    assert table[2] == "sync: CUT at its limit of 4 s" and table[3].startswith("kNN 4096 x 128"), table
    assert json.load(open(tmp_path / "gpu_check.json"))["knn"]["n"] == 4096
    log = open(tmp_path / "gpu_check.log").read()
    assert all(f"==== {n} (limit" in log for n in ("defects", "sync", "knn"))
    assert "\n".join(table) in p.stdout   # printed last


@needs_fashion
@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    make_image_folder(str(tmp_path / "jpegs" / "train"), per_class=48, bad=False)
    p = run([os.path.join(ROOT, "scripts", "gpu_check.py"), "--device", "cpu", "--tiny", "--data", FASHION,
             "--jpegs", str(tmp_path / "jpegs"), "--out", str(tmp_path)], timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.load(open(tmp_path / "gpu_check.json"))
    assert res["errors"] == {}, res["errors"]
    assert res["device"] == "cpu" and res["tiny"] is True and len(res["git_sha"]) == 40
    d = res["device_epoch"]
    assert d["device"]["images"] == d["synthetic"]["images"] > 0
    assert d["ratio_to_synthetic"] == pytest.approx(d["synthetic"]["epoch_s"] / d["device"]["epoch_s"])
    j = res["decode"]
    assert j["files"] == 96 and j["bad_cpu"] == 0 and j["cpu_img_s"] > 0 and j["torch"]["images"] > 0
    assert set(res["bare_step"]) == {"resnet18_32_eager", "resnet10_16_eager", "resnet10_16_compiled"}
    assert all(v["pairs_s"] > 0 and math.isfinite(v["ms"]) for v in res["bare_step"].values())
    assert all(res["addons"][k]["ms"] > 0 for k in ("plain", "bsim", "sepp", "no_guard"))
    assert res["knn"]["n"] == 4096 and res["knn"]["seconds"] > 0
    from models.methods import METHODS
    assert res["sync"] == {f"{m}_bf16": "ok" for m in METHODS}
    table = open(tmp_path / "gpu_check.txt").read()
    assert "sync-free steps in the autocast dtype: 4/4 ok" in table and "FAILED" not in table
    assert "real JPEGs (96): CPU" in table and len(table.splitlines()) == 1 + 1 + 1 + 1 + 1 + 1 + 3


def test_gpu_check_names_a_failed_part_and_goes_on(tmp_path, monkeypatch):
    """One part's failure is a finding: it is written under 'errors' and the table says FAILED."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gpu_check
    monkeypatch.setitem(gpu_check.PARTS, "knn", lambda a, dev: 1 / 0)
    res = gpu_check.main(["--device", "cpu", "--tiny", "--parts", "knn", "--out", str(tmp_path)])
    assert res["errors"] == {"knn": "ZeroDivisionError: division by zero"}
    assert "knn: FAILED ZeroDivisionError" in open(tmp_path / "gpu_check.txt").read()
