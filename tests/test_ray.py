"""The Ray backend on a local Ray instance (skipped where Ray is not installed: it is the `ray` extra)."""

import json

import pytest

from safebasin.store import Store
from safebasin.sweep import load_sweep_config, run_sweep

ray = pytest.importorskip("ray")


def test_ray_backend_records_every_trial(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    # Ray starts its workers at nice 15; beside the other pytest worker they got almost no CPU on 2 cores (583 s
    # for this test, 48 s for a worker's `import torch`), so the local instance here starts them at nice 0.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    y = tmp_path / "sweep.yaml"
    y.write_text(json.dumps({
        "base": {"model": str(tiny_model_dir), "data": "dolly", "data_dir": str(data_dir), "steps": 1, "batch_size": 2,
                 "max_examples": 8, "heldout_size": 4, "max_seq_len": 160},
        "grid": {"lr": [1e-4, 1e-3]},
        "eval": {"benches": ["advbench"], "limit": 2, "max_new_tokens": 2, "rouge_limit": 2},
        "output_dir": str(tmp_path / "sweep")}))
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        counts = run_sweep(load_sweep_config(str(y), [], {}, None), backend="ray", show_progress=False)
    finally:
        ray.shutdown()
    assert counts == {"skipped": 0, "done": 3, "failed": 0, "elsewhere": 0}
    runs = Store(tmp_path / "sweep" / "runs.db").runs("done")
    assert len(runs) == 3 and all((tmp_path / "sweep" / "runs").exists() for _ in runs)
