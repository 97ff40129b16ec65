"""Packages a trained run as the bundled default model:

    python bench/ship_embedded.py --run runs/embedded
    udm-fast eval --clean photos/heldout --out udm_fast/assets/default_model_eval.json

writes ``udm_fast/assets/default_model.pt`` (the run's model.pt with its coder tables built, float32)
and ``udm_fast/assets/default_model.json``: the exact training config, a summary of the training log
and the commit of this tree; the second command evaluates the shipped file on held-out photos.
Refuses a run that did not finish or a file over 25 MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import yaml

from udm_fast import UDM
from udm_fast.models.loading import load_model
from udm_fast.models.pretrained import DEFAULT_METADATA, DEFAULT_WEIGHTS, default_model_metadata
from udm_fast.utils.files import write_bytes_atomic

MAX_BYTES = 25 * 1024 * 1024


def log_summary(path: str, batch_size: int) -> dict:
    """Steps, images, estimated training time, and the mean of each logged loss over the first and the
    last tenth of the rows of a run's log.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: empty training log")
    steps = [int(r["step"]) for r in rows]
    seconds = sum(
        (s - p) * batch_size / float(r["images_per_s"])
        for p, s, r in zip([0] + steps[:-1], steps, rows)
        if float(r["images_per_s"]) > 0
    )
    skip = {"step", "epoch", "images_per_s", "skipped"}
    tenth = max(1, len(rows) // 10)

    def mean(part: list, key: str) -> float:
        return sum(float(r[key]) for r in part) / len(part)

    return {
        "steps": steps[-1],
        "images": steps[-1] * batch_size,
        "hours_estimated": round(seconds / 3600, 3),
        "skipped_files": int(rows[-1]["skipped"]),
        "first_tenth": {k: mean(rows[:tenth], k) for k in rows[0] if k not in skip},
        "last_tenth": {k: mean(rows[-tenth:], k) for k in rows[0] if k not in skip},
    }


def git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    return commit + ("+uncommitted-changes" if dirty else "")


def starting_point(init_weights) -> dict | None:
    """What a fine-tuned run started from (run.init_weights): for "bundled", the record of the bundled model it
    replaces (hash, commit, steps), else the file's path and weights hash; None for a run from scratch."""
    if not init_weights:
        return None
    source = None if init_weights == "bundled" else init_weights  # load_model's None is the bundled model
    start = {"source": init_weights, "weights_hash": load_model(source, False, "cpu").weights_hash()}
    if source is None:
        record = default_model_metadata()
        start.update(
            commit=record["commit"] if record else None, steps=record["training_log"]["steps"] if record else None
        )
    return start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the training run's output folder")
    parser.add_argument("--photos", default="", help="where the training photos came from (stored as text)")
    parser.add_argument("--commit", default="", help="the commit the run was trained with (default: HEAD)")
    parser.add_argument("--note", default="", help="free text stored with the metadata")
    args = parser.parse_args(argv)
    with open(os.path.join(args.run, "config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    model_path = os.path.join(args.run, "model.pt")
    if not os.path.isfile(model_path):
        raise SystemExit(f"{model_path} missing: the run has not finished")
    model = UDM.load(model_path).update_entropy_tables(force=True)
    initialised_from = starting_point(config["run"].get("init_weights"))  # before the bundled file is replaced
    if initialised_from and initialised_from["weights_hash"] == model.weights_hash():
        raise SystemExit(
            f"{args.run}: run.init_weights ({initialised_from['source']}) holds this run's own weights, so the record "
            "would say it started from itself (shipped twice?): put the model it started from back "
            "(git checkout -- udm_fast/assets) and ship again"
        )
    commit = args.commit or git_commit()  # before the assets change the tree
    summary = log_summary(os.path.join(args.run, "log.csv"), config["data"]["batch_size"])
    model.save(DEFAULT_WEIGHTS, extra={"step": summary["steps"]})
    size = os.path.getsize(DEFAULT_WEIGHTS)
    if size > MAX_BYTES:
        os.remove(DEFAULT_WEIGHTS)
        raise SystemExit(f"{DEFAULT_WEIGHTS}: {size} bytes is over the {MAX_BYTES}-byte budget")
    shipped = UDM.load(DEFAULT_WEIGHTS)
    metadata = {
        "weights": DEFAULT_WEIGHTS.name,
        "bytes": size,
        "weights_hash": shipped.weights_hash(),
        "commit": commit,
        "config": config,
        "training_photos": args.photos,
        "training_log": summary,
        "initialised_from": initialised_from,
        "note": args.note,
    }
    write_bytes_atomic(DEFAULT_METADATA, json.dumps(metadata, indent=2).encode("utf-8"))
    print(f"wrote {DEFAULT_WEIGHTS} ({size / 1e6:.2f} MB, hash {metadata['weights_hash'][:12]}) and {DEFAULT_METADATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
