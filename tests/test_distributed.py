"""torchrun with two CPU processes (gloo): identical parameters on both ranks, files written by rank 0 only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napari_imedsam.model import build_model, default_config
from src_training.checkpoint import load_checkpoint
from src_training.distributed import DistInfo, shard

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_are_disjoint_and_cover():
    items = list(range(8))
    parts = [shard(items, DistInfo(r, 3)) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "src_training.train", "--synthetic", "8", "--synthetic-size", "48", "--backbone", "tiny",
        "--image-size", "64", "--steps", "3", "--batch-size", "4", "--points", "64", "--jitter", "4",
        "--lr-rest", "1e-3", "--val-every", "3", "--device", "cpu", "--out", str(out),
    ]
    env = {**os.environ, "IMEDSAM_DEBUG_DUMP_RANKS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    torch.manual_seed(0)
    fresh = build_model(default_config("tiny", image_size=64)).adapter_state_dict()
    changed = [k for k in r0 if not torch.equal(r0[k], fresh[k])]
    assert any(k.startswith(("coarse.", "fine.")) for k in changed) and any(".q_a" in k or ".v_b" in k for k in changed)
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["rank"] == 0 and ckpt["world_size"] == 2 and ckpt["step"] == 3
    assert all(torch.equal(ckpt["adapters"][k], r0[k]) for k in r0)  # one validation, at the end: best = last
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps_done"] == 3 and metrics["best_val_dice"] is not None
    names = {p.name for p in out.iterdir()}
    assert names == {"adapters.safetensors", "last.ckpt", "metrics.json", "loss_log.csv", "rank0.safetensors",
                     "rank1.safetensors"}
