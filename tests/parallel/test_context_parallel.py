"""VMoBA and criss-cross attention under diffusers' context parallelism, for real: 2 and 4 gloo processes
(``torchrun``) each run a tiny Wan transformer once on the whole sequence and once split across the ranks;
outputs and the summed parameter gradients of a backward pass must match (cp_worker.py), and so must the
losses and weights of a few training steps (train_worker.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("cp_worker.py")
TOLERANCE = 1e-5  # relative; ring steps are merged in float32 by diffusers, everything else is float64

TWO = ["default:ulysses", "enabled:ulysses", "vmoba:ulysses", "vmoba:ring", "vmoba-global:ulysses", "vmoba-global:ring",
       "vmoba-block:ulysses", "vmoba-block:ring", "vmoba-reordered:ulysses", "mixed:ulysses", "mixed:ring",
       "crisscross:ulysses", "crisscross:ring",
       "ltx/vmoba:ulysses", "ltx/crisscross:ulysses", "nan:ulysses", "nan:ring"]
FOUR = ["vmoba:unified", "vmoba-block:unified", "vmoba-reordered:unified"]


def _torchrun(worker: Path, out: Path, processes: int, args: list[str]) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parents[2]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(worker), str(out), *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def _launch(tmp_path_factory, processes: int, cases: list[str]) -> list[dict]:
    return _torchrun(WORKER, tmp_path_factory.mktemp(f"cp{processes}"), processes, cases)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return _launch(tmp_path_factory, 2, TWO)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return _launch(tmp_path_factory, 4, FOUR)


def _matches(results: list[dict], case: str) -> None:
    for rank, result in enumerate(results):
        got = result[case]
        assert "crash" not in got and "error" not in got, f"rank {rank}: {got}"
        assert got["output"] <= TOLERANCE * got["output_scale"], (rank, got)
        assert got["gradient"] is None or got["gradient"] <= TOLERANCE, (rank, got)


def _refused(results: list[dict], case: str, words: str) -> None:
    for rank, result in enumerate(results):
        assert words in result[case].get("error", ""), f"rank {rank}: {result[case]}"


def test_the_check_itself_holds_for_diffusers_default_processor(two):
    _matches(two, "default:ulysses")


def test_vmoba_processor_as_installed_matches_one_process(two):
    """`vmoba.enable`, then `enable_parallelism`: nothing else to do."""
    _matches(two, "enabled:ulysses")


@pytest.mark.parametrize("case", ["vmoba:ulysses", "vmoba:ring", "vmoba-global:ulysses", "vmoba-global:ring",
                                  "vmoba-block:ring", "vmoba-reordered:ulysses", "mixed:ulysses",
                                  "crisscross:ulysses"])
def test_matches_one_process_forward_and_backward(two, case):
    _matches(two, case)


@pytest.mark.parametrize("case", ["enabled:ulysses", "vmoba:ring", "mixed:ulysses"])
def test_captures_under_parallelism_keep_no_mask(two, case):
    """Each rank holds part of a call's selection (its heads, or its queries): records carry mask=None."""
    for rank, result in enumerate(two):
        assert result[case]["captured"] == 3 and result[case]["masks"] == 0, (rank, result[case])


@pytest.mark.parametrize("case", ["ltx/vmoba:ulysses", "ltx/crisscross:ulysses"])
def test_ltx_video_forward_matches_one_process(two, case):
    """Forward only: diffusers' own LTX cross-attention has no Ulysses backward (see cp_worker.py)."""
    _matches(two, case)


def test_selection_over_all_heads_is_refused_under_ulysses(two):
    _refused(two, "vmoba-block:ulysses", "threshold_type='block'")


@pytest.mark.parametrize("case", ["crisscross:ring", "mixed:ring"])
def test_criss_cross_attention_is_refused_under_ring(two, case):
    _refused(two, case, "CrissCrossAttnProcessor has no ring form" if case.startswith("crisscross") else
             "VMoBAProcessor has no ring form")


@pytest.mark.parametrize("case", ["nan:ulysses", "nan:ring"])
def test_nan_on_one_rank_raises_on_every_rank(two, case):
    """Only the last rank's shard holds the NaN; a rank that did not raise would hang in the next collective."""
    _refused(two, case, "ValueError: non-finite values (NaN or Inf) in q, k, v on some rank")


def test_ulysses_and_ring_together_match_one_process(four):
    _matches(four, "vmoba:unified")
    _matches(four, "vmoba-reordered:unified")
    _refused(four, "vmoba-block:unified", "threshold_type='block'")


def test_sequence_parallel_training_matches_one_process(tmp_path):
    """Three AdamW steps of a tiny Wan transformer with VMoBA, its sequence split over 2 processes (Ulysses and
    ring inside DistributedDataParallel; Ulysses with the weights sharded by FSDP2 as recipes/parallel/fsdp2.yaml
    says), loss scaled by `loss_scale`: the same losses and weights as one process."""
    results = _torchrun(WORKER.with_name("train_worker.py"), tmp_path, 2, ["ulysses", "ring", "ulysses:fsdp2"])
    for rank, result in enumerate(results):
        for layout, got in result.items():
            assert got["losses"] == pytest.approx(got["reference_losses"], rel=1e-7), (rank, layout)
            assert got["weights"] <= 1e-5, (rank, layout, got)
