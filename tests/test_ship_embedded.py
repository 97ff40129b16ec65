"""bench/ship_embedded.py refuses to record a run as started from its own weights (a second ship of the same run
over the bundled files it has just replaced)."""

import importlib.util
import os
import shutil

import pytest
import yaml

from udm_fast.models import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("ship_embedded", os.path.join(ROOT, "bench", "ship_embedded.py"))
ship = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship)

pytestmark = pytest.mark.skipif(not pretrained.DEFAULT_WEIGHTS.is_file(), reason="no bundled weights in this tree")


def test_a_run_that_starts_from_its_own_weights_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(pretrained.DEFAULT_WEIGHTS, run / "model.pt")  # the bundled file is already this run's model
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"init_weights": "bundled"}, "data": {"batch_size": 4}}))
    (run / "log.csv").write_text("step,epoch,loss,images_per_s,skipped\n10,1,1.0,2.0,0\n")
    weights, metadata = tmp_path / "out.pt", tmp_path / "out.json"  # never the real assets, even if the check fails
    monkeypatch.setattr(ship, "DEFAULT_WEIGHTS", weights)
    monkeypatch.setattr(ship, "DEFAULT_METADATA", metadata)
    with pytest.raises(SystemExit, match="started from itself"):
        ship.main(["--run", str(run), "--commit", "0" * 40])
    assert not weights.exists() and not metadata.exists()
