"""Two CPU processes (torchrun, gloo, DDP) give the single-process run: same losses, same EMA weights."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_state, run_cli


def test_two_processes_match_one(tiny_model_dir, data_dir, tmp_path):
    torchrun = shutil.which("torchrun", path=str(ROOT / ".venv" / "bin")) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    common = ["train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--steps", 3,
              "--max-examples", 64, "--heldout-size", 8, "--max-seq-len", 160, "--lr", "1e-2", "--ema-beta", 0.7,
              "--grad-accum", 2, "--config", tmp_path / "monitor.yaml"]
    # the monitor's schedule is a collective decision across ranks. (In YAML: torchrun's own parser
    # takes `--monitor` for an abbreviation of its `--monitor-interval`, even after the module name.)
    (tmp_path / "monitor.yaml").write_text("monitor: 2\n")
    one = run_cli(*common, "--batch-size", 4, "--output-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "safebasin.cli",
                          *map(str, common), "--batch-size", "2", "--output-dir", str(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    log1 = [json.loads(x) for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [1, 2, 3]  # one writer
    assert [r["tokens"] for r in log1] == [r["tokens"] for r in log2]  # the same rows, split over ranks
    assert [r["loss"] for r in log1] == pytest.approx([r["loss"] for r in log2], abs=1e-5)
    s1, s2 = (json.loads((tmp_path / d / "train_summary.json").read_text()) for d in ("one", "two"))
    assert s1["monitor_start"]["probe_harmful_live"] == s2["monitor_start"]["probe_harmful_live"]
    assert s2["monitor_probed_steps"][0] == 0 and set(s2["monitor_probed_steps"]) <= {0, 2, 3}
    for sub in ("model", "raw"):
        a, b = load_state(tmp_path / "one" / sub), load_state(tmp_path / "two" / sub)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


def test_fsdp2_ema_on_shards_matches_one_process(tmp_path):
    """FSDP2 on two CPU processes (gloo): each rank's EMA holds only its shard, no gather per step, and
    the θ̄ gathered once at the end equals the single-process θ̄."""
    from safetensors.torch import load_file

    torchrun = shutil.which("torchrun", path=str(ROOT / ".venv" / "bin")) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    worker = str(ROOT / "tests" / "fsdp_ema_worker.py")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = subprocess.run([sys.executable, worker, str(tmp_path / "one")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", worker, str(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    numel = load_file(str(tmp_path / "two" / "numel.safetensors"))
    assert int(numel["shard_numel"]) * 2 == int(numel["full_numel"])  # rank 0 keeps θ̄ for half the weights
    for name in ("raw", "kept"):
        a, b = load_file(str(tmp_path / "one" / f"{name}.safetensors")), load_file(str(tmp_path / "two" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    kept, raw = load_file(str(tmp_path / "two" / "kept.safetensors")), load_file(str(tmp_path / "two" / "raw.safetensors"))
    assert any(not torch.equal(kept[k], raw[k]) for k in kept)  # θ̄ is not the live weights
