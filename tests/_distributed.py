"""Running distributed checks in real process groups: one launch per world size runs every
check of a test module on `world` gloo processes (importing torch in each process is the
slow part) and records each check's outcome per rank in a JSON file; the module's tests
then report the outcomes one check at a time (test_contrastive_distributed.py,
test_sigmoid_contrastive_distributed.py)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LAUNCH_TIMEOUT_S = 240  # the whole launch; a hang fails the tests instead of blocking CI
PG_TIMEOUT_S = 60  # a stuck collective raises inside the workers


def init_gloo(rank: int, world: int, port: int) -> None:
    """This worker's process group; one thread each, as 2-4 processes share a small machine."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )


def run_checks(checks: dict, rank: int, world: int, out_dir: str, **subgroup) -> None:
    """Run every check (name -> dict(fn=..., **keywords)) as fn(rank, world, **keywords) and
    record "ok", the skip note it returns, or "FAILED" with its traceback in
    out_dir/rank<rank>.json; then leave the process group. A check marked subgroup=True
    also gets the `subgroup` keywords."""
    outcome = {}
    for name, spec in checks.items():
        spec = dict(spec)
        fn = spec.pop("fn")
        if spec.pop("subgroup", False):
            spec.update(subgroup)
        try:
            note = fn(rank, world, **spec)
            outcome[name] = note if isinstance(note, str) else "ok"
        except BaseException:  # noqa: BLE001  (recorded and reported by the test)
            outcome[name] = "FAILED\n" + traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, out_dir: str, worker, module: str) -> list[dict]:
    """Run worker(rank, world, port, out_dir), a function of test module `module`, on `world`
    processes -> each rank's outcomes; kill them and fail if they outlive the timeout."""
    # forkserver: torch and pykernels are imported once, in the server, not once per rank
    mp.get_context("forkserver").set_forkserver_preload(["torch", "pykernels", module])
    ctx = mp.start_processes(
        worker,
        args=(world, _free_port(), out_dir),
        nprocs=world,
        join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process launch did not finish in {LAUNCH_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:  # ours, by pid, only if still running
            if p.is_alive():
                p.kill()
    outcomes = []
    for rank in range(world):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            outcomes.append(json.load(f))
    return outcomes


def outcomes_fixture(world_sizes, worker, module: str):
    """A module-scoped fixture, one launch per world size -> every rank's outcomes."""

    @pytest.fixture(scope="module", params=world_sizes, ids=lambda w: f"world{w}")
    def outcomes(request, tmp_path_factory):
        if not dist.is_available() or not dist.is_gloo_available():
            pytest.skip("torch.distributed with gloo is not available")
        out_dir = str(tmp_path_factory.mktemp(f"world{request.param}"))
        return launch(request.param, out_dir, worker, module)

    return outcomes


def report(outcomes: list[dict], check: str) -> None:
    """Fail with every failing rank's traceback, or skip with a rank's reason."""
    notes = [o[check] for o in outcomes]
    failed = [f"rank {r}: {note}" for r, note in enumerate(notes) if note.startswith("FAILED")]
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)
    skipped = [note for note in notes if note.startswith("skip")]
    if skipped:
        pytest.skip(skipped[0][len("skip: ") :])
