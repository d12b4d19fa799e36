"""Multi-node training (issue 11.2): the data order depends on the global batch and the seed only, so a run
resumes on another number of processes; two torchrun "nodes" on this machine (gloo, c10d rendezvous) train as one
node does; a failing rank is named, with its error, on every node."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_data import FIELDS, build_set, same_batches, take
from tests.test_train import ROOT, config, data, one_thread, run_cli, train_losses  # noqa: F401 (fixtures)
from training import distributed
from training.checkpoint import check_resume
from training.checkpoint import training_checkpoint as load_checkpoint
from training.data import DataConfig, Loader, concat, consumed_shards, open_sources, resume_state
from training.model import preset, seeded_model
from training.train import fit

ENV = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK")},
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
FIT = ["--preset", "tiny", "--batch-size", "8", "--val-every", "4", "--val-samples", "8", "--ckpt-every", "2",
       "--log-every", "1", "--workers", "0", "--streams", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mn-shards")
    return {"tar": build_set(root / "tar", count=48, shard_size=4),
            "structures": build_set(root / "s", count=24, shard_size=4, reflections=False)}


# ----------------------------------------------------------------------------- the loader across world sizes

def global_batches(src, cfg: DataConfig, world: int, n: int, workers: int = 0, state=None) -> tuple[list, list]:
    """n global batches made by `world` ranks (each rank's part concatenated in rank order), and the states."""
    per_rank = DataConfig(**{**cfg.__dict__, "batch_size": cfg.batch_size // world})
    loaders = [Loader(src, per_rank, rank, world, workers, state) for rank in range(world)]
    parts = [take(ld, n) for ld in loaders]
    return [concat([p[i] for p in parts]) for i in range(n)], [ld.state_dict() for ld in loaders]


@pytest.mark.parametrize("name, sf", [("tar", "auto"), ("structures", "device")])
def test_the_sample_sequence_does_not_depend_on_the_world_size(sets, name, sf):
    """k steps on one world size + m steps on another = k + m steps on one process, bit for bit."""
    src = open_sources([sets[name]])
    cfg = DataConfig(batch_size=8, streams=4, seed=3, d_min=(0.5, 2.0), drop=0.1, sf=sf)
    fields = FIELDS if sf == "auto" else ("key", "source", "observed", "d_min", "frac", "z", "occ", "uiso")
    ref, _ = global_batches(src, cfg, 1, 9)
    keys = torch.cat([b["key"] for b in ref[:6]]).tolist()
    assert sorted(keys) == list(range(48)) if name == "tar" else len(set(keys)) == 24  # epoch 0: every sample once
    for world, workers in ((2, 0), (2, 2), (4, 0), (1, 2)):
        batches, states = global_batches(src, cfg, world, 4, workers)
        assert same_batches(ref[:4], batches, fields), (world, workers)
        ck = {"world": world, "ranks": states}
        for new_world in (1, 2, 4):  # resume the rest on another world size
            per_rank = DataConfig(**{**cfg.__dict__, "batch_size": cfg.batch_size // new_world})
            rest, _ = global_batches(src, cfg, new_world, 5, state=resume_state(ck, per_rank, new_world))
            assert same_batches(ref[4:], rest, fields), (world, workers, new_world)


def test_ranks_read_disjoint_shards_and_the_layout_is_checked(sets):
    src = open_sources([sets["tar"]])
    cfg = DataConfig(batch_size=4, streams=4, seed=3)  # per rank, 2 ranks: 8 global, 4 streams of 2
    _, states = global_batches(src, DataConfig(**{**cfg.__dict__, "batch_size": 8}), 2, 4)
    seen = [consumed_shards(src, cfg, rank, 2, st) for rank, st in enumerate(states)]
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 8  # 4 steps x 8 samples = 8 shards of 4
    with pytest.raises(ValueError, match="stream 2 does not belong to rank 0"):
        consumed_shards(src, cfg, 0, 2, states[1])
    with pytest.raises(ValueError, match=r"3 process\(es\): the loader cuts each global batch of 12 into 4 stream "
                                         r"pieces \(--streams\); use a number of processes that divides 4"):
        Loader(src, cfg, 0, 3)
    with pytest.raises(ValueError, match="--workers 4: the worker count must divide the 2 loader streams"):
        Loader(src, cfg, 0, 2, workers=4)
    with pytest.raises(ValueError, match="--streams 16 exceeds the global batch 8"):
        Loader(src, DataConfig(batch_size=4, streams=16), 0, 2)
    with pytest.raises(ValueError, match="resume with the phaseforge that wrote it"):
        Loader(src, cfg, state={"version": 3, "pieces": 4, "cycle": 1, "batches": 0, "streams": {}})


def test_version_1_states_resume_on_their_world_or_a_divisor(sets):
    """Checkpoints written before loader-state version 2 (per-rank streams taking turns) continue exactly."""
    src = open_sources([sets["tar"]])
    cfg = DataConfig(batch_size=4, streams=2, seed=3)  # per rank of 2: the old layout, K = 2 ranks, T = 2
    old = [Loader(src, cfg, rank, 2, state={"batches": 0, "streams": {}}) for rank in range(2)]
    parts = [take(ld, 9) for ld in old]
    full = [concat([p[i] for p in parts]) for i in range(9)]
    ck = {"world": 2, "ranks": [{k: v for k, v in _state_after(src, cfg, r, 5).items() if k in ("batches", "streams")}
                                for r in range(2)]}  # as version 1 stored them
    assert all("version" not in st for st in ck["ranks"])
    one = DataConfig(**{**cfg.__dict__, "batch_size": 8})
    rest, _ = global_batches(src, one, 1, 4, state=resume_state(ck, one, 1))
    assert same_batches(full[5:], rest)
    rest, _ = global_batches(src, one, 2, 4, state=resume_state(ck, cfg, 2))
    assert same_batches(full[5:], rest)
    with pytest.raises(ValueError, match=r"a version-1 loader state .* splits each batch by the 2 ranks that wrote "
                                         r"it; use a number of processes that divides 2"):
        resume_state(ck, DataConfig(**{**cfg.__dict__, "batch_size": 2}), 4)


def _state_after(src, cfg: DataConfig, rank: int, n: int) -> dict:
    loader = Loader(src, cfg, rank, 2, state={"batches": 0, "streams": {}})
    take(loader, n)
    return loader.state_dict()


def test_resume_refuses_a_process_count_the_layout_cannot_take(data, tmp_path):
    fit(config(data, steps=2, val_every=2, ckpt_every=2), tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    cfg, src = config(data, steps=4), open_sources([data["train"]])
    val = open_sources([data["val"]])[0].describe()
    check_resume(ck, cfg, [s.describe() for s in src], val, 2)  # 2 streams: 1 or 2 processes
    with pytest.raises(ValueError, match=r"^--resume: 4 process\(es\): the loader cuts .* divides 2 \(the "
                                         r"checkpoint ran on 1\)$"):
        check_resume(ck, cfg, [s.describe() for s in src], val, 4)


# ----------------------------------------------------------------------------- naming a failed rank

class FakeStore:
    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def set(self, k, v) -> None:
        self.kv[k] = v.encode() if isinstance(v, str) else v

    def check(self, keys) -> bool:
        return all(k in self.kv for k in keys)

    def get(self, k) -> bytes:
        return self.kv[k]


def test_a_rank_records_its_failure_and_the_others_name_it(monkeypatch):
    store = FakeStore()
    monkeypatch.setattr(distributed, "_store", lambda: store)
    monkeypatch.setattr(distributed, "_PEER_WAIT_S", 0.2)
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert distributed.error_prefix() == "rank 1 of 2 (node 1, local rank 0, host node-b): "
    distributed._on_failure(ValueError("shard-000003.tar: corrupt shard\n(sha256 differs)"))  # its own error
    assert json.loads(store.kv["phaseforge/failed/1"])["line"] == (
        "rank 1 of 2 (node 1, local rank 0, host node-b) failed: shard-000003.tar: corrupt shard (sha256 differs)")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("GROUP_RANK", "0")
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:35996")
    with pytest.raises(distributed.RankFailed, match=r"^stopped because rank 1 of 2 \(node 1, local rank 0, host "
                                                     r"node-b\) failed: shard-000003.tar: corrupt shard"):
        distributed._on_failure(lost)
    store.kv.clear()
    with pytest.raises(distributed.RankFailed, match="lost contact with the other ranks .*Connection closed by peer"
                                                     ".*without reporting an error"):
        distributed._on_failure(lost)  # killed: nothing recorded


# ----------------------------------------------------------------------------- two torchrun nodes

def free_port() -> int:
    """A port the kernel just handed out (bound to port 0, then released for torchrun's store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_cmd(port: int, node: int, nnodes: int = 2, nproc: int = 1) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-conf",
            f"is_host={int(node == 0)}", "--local-addr", "127.0.0.1", "--nproc-per-node", str(nproc),
            "-m", "training", "fit"]


def fit_args(train: Path, val: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--train", str(train), "--val", str(val), "--out", str(out), "--steps", str(steps), *FIT, *extra]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a timeout stops its workers too


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            o, e = p.communicate()
        out.append((p.returncode, o, e))
    return out


def port_taken(results) -> bool:
    return any(t in e for _, _, e in results for t in ("Address already in use", "EADDRINUSE", "failed to listen"))


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
def test_two_nodes_train_as_one_node_and_resume_on_one_process(data, tmp_path, capsys):
    two, one, moved, single = (tmp_path / n for n in ("two-nodes", "one-node", "moved", "single"))
    for _ in range(3):  # the chosen port can be taken before torchrun binds it: then take another
        shutil.rmtree(two, ignore_errors=True)
        port = free_port()
        procs = [start(node_cmd(port, n) + fit_args(data["train"], data["val"], two, 4)) for n in (0, 1)]
        if not one.exists():  # the single-node, 2-process run meanwhile (its own port, torchrun --standalone)
            procs.append(start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                "2", "-m", "training", "fit", *fit_args(data["train"], data["val"], one, 4)]))
        res = finish(procs)
        if not port_taken(res[:2]):
            break
    for rc, _, err in res:
        assert rc == 0, err[-6000:]
    a, b = load_checkpoint(two / "last.pt"), load_checkpoint(one / "last.pt")
    assert a["dataloader"]["world"] == 2 and a["train_state"]["step"] == 4
    assert same(a, b)  # 2 nodes x 1 process = 1 node x 2 processes: every tensor and number, bit for bit
    assert train_losses(two) == train_losses(one)

    # each rank read its own shards: 8 shards of 8, 2 streams (one per rank) of 4 samples a step, 4 steps
    src = open_sources([data["train"]])
    dcfg = DataConfig(**{**a["config"]["data"], "d_min": tuple(a["config"]["data"]["d_min"]), "batch_size": 4})
    seen = [consumed_shards(src, dcfg, rank, 2, st) for rank, st in enumerate(a["dataloader"]["ranks"])]
    assert len(seen[0]) == len(seen[1]) == 2 and seen[0].isdisjoint(seen[1])
    assert {epoch for _, epoch, _ in seen[0] | seen[1]} == {0}

    # 4 steps on 2 processes + 4 on 1 = 8 steps on 1: the same samples; losses equal up to the reduction order
    shutil.copytree(two, moved)
    code, _, err = run_cli(["fit", "--out", str(moved), "--steps", "8", "--resume"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["fit", *fit_args(data["train"], data["val"], single, 8)], capsys)
    assert code == 0, err
    c, d = load_checkpoint(moved / "last.pt"), load_checkpoint(single / "last.pt")
    assert c["dataloader"] == d["dataloader"] and c["dataloader"]["world"] == 1
    lc, ld = train_losses(moved), train_losses(single)
    assert list(lc) == list(ld) == list(range(1, 9))
    rel = max(abs(lc[s] - ld[s]) / abs(ld[s]) for s in ld)
    # Adam divides by sqrt(v): near-zero gradients turn reduction-order noise into up to ~lr per step, so the
    # parameters are compared by the size of the difference against how far training moved them
    init = seeded_model(preset("tiny"), 0).state_dict()
    diff = sum(float(((c["model"][k] - d["model"][k]) ** 2).sum()) for k in init) ** 0.5
    moved_by = sum(float(((d["model"][k] - init[k]) ** 2).sum()) for k in init) ** 0.5
    print(f"losses: max relative difference {rel:.1e}; parameters: |difference| / |movement| {diff / moved_by:.1e}")
    assert rel < 1e-5 and diff < 1e-3 * moved_by  # measured: 8.6e-08 and 8.2e-05


SRUN = """#!/bin/bash
# srun stand-in: the command once per node of the allocation, with that node's SLURM_NODEID and SLURM_PROCID
while [[ $1 == --* ]]; do shift; done
pids=()
for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n SLURM_PROCID=$n "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && for ((n = 0; n < SLURM_NNODES; n++)); do echo 127.0.0.1; done
"""


def slurm_env(tmp: Path, port: int) -> dict:
    """A 2-node allocation on this machine: srun / scontrol stand-ins first on PATH, then this Python's torchrun."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in ENV.items() if not k.startswith("SLURM_")}
    return env | {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}", "SLURM_NNODES": "2",
                  "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "4242", "RDZV_PORT": str(port)}


@pytest.mark.slow
def test_the_slurm_example_names_a_failing_rank_on_every_node(data, tmp_path):
    """examples/slurm/train.sbatch on two stand-in nodes; one shard turns corrupt under the running job."""
    train, out, script = tmp_path / "train", tmp_path / "run", ROOT / "examples" / "slurm" / "train.sbatch"
    shutil.copytree(data["train"], train)
    usage = subprocess.run(["bash", script], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: sbatch --nodes=N train.sbatch OUT")
    args = fit_args(train, data["val"], out, 10**6, "--val-every", "1000000", "--ckpt-every", "1000000")
    job = subprocess.Popen(["bash", script, str(out), *args[:4], *args[6:]], cwd=ROOT,
                           env=slurm_env(tmp_path, free_port()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and job.poll() is None and not (
            (out / "metrics.jsonl").exists() and '"train"' in (out / "metrics.jsonl").read_text()):
        time.sleep(0.2)
    assert job.poll() is None, job.communicate()[1][-6000:]
    shard = sorted(train.glob("shard-*.tar"))[3]  # same size, one bit flipped: whichever rank reads it next fails
    blob = bytearray(shard.read_bytes())
    blob[3000] ^= 0x01
    shard.with_suffix(".tmp").write_bytes(bytes(blob))
    shard.with_suffix(".tmp").replace(shard)
    try:
        _, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]  # both nodes' lines, as in the job output
    label = r"rank (\d) of 2 \(node (\d), local rank 0, host " + re.escape(socket.gethostname()) + r"\)"
    own = [m for ln in errors if (m := re.match(rf"^error: {label}: {re.escape(str(shard))}: corrupt shard "
                                                 r"\(sha256 differs from ", ln))]
    peer = [m for ln in errors if (m := re.match(rf"^error: {label}: stopped because {label} failed: "
                                                  rf"{re.escape(str(shard))}: corrupt shard", ln))]
    assert len(errors) == 2 and len(own) == len(peer) == 1, err[-6000:]
    rank, node = own[0].group(1), own[0].group(2)
    assert peer[0].group(3, 4) == (rank, node) and peer[0].group(1) != rank  # the survivor names the failed rank
    # torchrun's own summary names the failed rank (exit status 2: bad input) on its node only
    assert re.search(rf"rank\s+: {rank} \(local_rank: 0\)\s+exitcode\s+: 2", err), err[-6000:]
