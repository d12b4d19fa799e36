"""Shard streaming (training/data.py) and torch structure factors (training/sf_torch.py), on tiny shard sets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.build import build, make_header
from builder.cell import CellConfig
from builder.fill import FillConfig
from builder.reflections import d_spacing, phai_hkl, systematic_absences
from builder.strategy import Strategy
from manifests.schema import ManifestError
from training.data import (DataConfig, Loader, ShardError, collate, compute_prior, consumed_shards, open_source,
                           open_sources, prepare_batch, read_shard, stream_shard, to_sample,
                           validation_batches)
from training.model import to_grid
from training.sf_torch import structure_factors_torch

HKL = phai_hkl(10)
ABSENT = systematic_absences("P 1 21/c 1", HKL)
FIELDS = ("key", "source", "observed", "d_min", "amplitude", "phase")


def strategy(name: str = "test-molecules") -> Strategy:
    """A molecules strategy with explicit element tables (no stats file needed)."""
    return Strategy(name=name, cell=CellConfig(), fill=FillConfig(
        filler="molecules", elements_general=(("C", 0.7), ("N", 0.1), ("O", 0.15), ("Cl", 0.05)),
        elements_special=(("C", 0.5), ("Fe", 0.5))))


def build_set(out: Path, count: int = 32, shard_size: int = 8, fmt: str = "tar", seed: int = 3,
              reflections: bool = True, name: str = "test-molecules") -> Path:
    build(out, make_header(strategy(name), count, shard_size, fmt, seed, reflections), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    return {
        "tar": build_set(root / "tar"),
        "hdf5": build_set(root / "hdf5", fmt="hdf5"),
        "tar_structures": build_set(root / "tar_s", reflections=False),
        "hdf5_structures": build_set(root / "hdf5_s", fmt="hdf5", reflections=False),
        "other": build_set(root / "other", seed=11, name="other-molecules"),
    }


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machines: oversubscribed OpenMP is 10-50x slower
    yield
    torch.set_num_threads(n)


def take(loader: Loader, n: int) -> list[dict]:
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def same_batches(a: list[dict], b: list[dict], fields=FIELDS) -> bool:
    return all(torch.equal(x[f], y[f]) for x, y in zip(a, b) for f in fields)


CFG = DataConfig(batch_size=4, streams=2, seed=5)


# ----------------------------------------------------------------------------- round trip and determinism

def test_tar_and_hdf5_give_identical_batches(sets):
    a = take(Loader(open_sources([sets["tar"]]), CFG), 12)
    b = take(Loader(open_sources([sets["hdf5"]]), CFG), 12)
    assert same_batches(a, b)
    # 12 batches of 4 over 32 samples: the first epoch covers every key exactly once
    keys = torch.cat([x["key"] for x in a]).tolist()
    assert sorted(keys[:32]) == list(range(32))


def test_loader_matches_the_shards_bit_for_bit(sets):
    src = open_source(sets["tar"])
    stored = {int(r["__key__"]): r for s in range(src.n_shards) for r in read_shard(src, s)}
    for batch in take(Loader([src], CFG), 4):
        for i, k in enumerate(batch["key"].tolist()):
            assert np.array_equal(batch["amplitude"][i].numpy(), stored[k]["amplitude"])
            assert np.array_equal(batch["phase"][i].numpy(), stored[k]["phase"])


def test_same_seed_same_batches_other_seed_differs(sets):
    src = open_sources([sets["tar"]])
    a, b = take(Loader(src, CFG), 6), take(Loader(src, CFG), 6)
    assert same_batches(a, b)
    c = take(Loader(src, DataConfig(batch_size=4, streams=2, seed=6)), 6)
    assert not same_batches(a, c, ("key",))


def test_batches_do_not_depend_on_the_worker_count(sets):
    """Exact when the worker count divides `streams` (documented in training/data.py)."""
    src = open_sources([sets["tar"]])
    ref = take(Loader(src, CFG, workers=0), 8)
    assert same_batches(ref, take(Loader(src, CFG, workers=2), 8))
    with pytest.raises(ValueError, match="must divide"):
        Loader(src, DataConfig(batch_size=4, streams=2), workers=3)


def test_loader_resumes_exactly_from_its_state(sets):
    src = open_sources([sets["tar"]])
    loader = Loader(src, CFG)
    it = iter(loader)
    first = [next(it) for _ in range(5)]
    state = loader.state_dict()
    rest = [next(it) for _ in range(7)]
    it.close()
    resumed = take(Loader(src, CFG, state=json.loads(json.dumps(state))), 7)
    assert same_batches(rest, resumed)
    assert not same_batches(first[:5], resumed[:5], ("key",))


def test_loader_with_workers_resumes_exactly(sets):
    src = open_sources([sets["hdf5"]])
    loader = Loader(src, CFG, workers=2)
    it = iter(loader)
    _ = [next(it) for _ in range(5)]  # odd: the resumed round-robin must start at the other stream
    state = loader.state_dict()
    rest = [next(it) for _ in range(6)]
    it.close()
    assert same_batches(rest, take(Loader(src, CFG, workers=2, state=state), 6))
    assert same_batches(rest, take(Loader(src, CFG, workers=1, state=state), 6))


def test_ranks_see_disjoint_shards(sets):
    src = open_sources([sets["tar"]])
    keys, shards = [], []
    for rank in range(2):
        loader = Loader(src, CFG, rank=rank, world=2)
        batches = take(loader, 4)  # 4 shards / (2 ranks x 2 streams): one shard per stream, 16 samples per rank
        keys.append({k for b in batches for k in b["key"].tolist()})
        shards.append({s for _, _, s in consumed_shards(src, CFG, rank, 2, loader.state_dict())})
    assert keys[0].isdisjoint(keys[1]) and keys[0] | keys[1] == set(range(32))
    assert shards[0].isdisjoint(shards[1]) and len(shards[0]) == len(shards[1]) == 2


def test_epochs_reshuffle_the_shard_order(sets):
    src = open_source(sets["tar"])
    orders = [[stream_shard(src, 0, 0, 1, q)[0] for q in range(e * 4, e * 4 + 4)] for e in range(4)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len({tuple(o) for o in orders}) > 1


def test_mixing_weights(sets):
    src = open_sources([sets["tar"], sets["other"]], [3.0, 1.0])
    batches = take(Loader(src, DataConfig(batch_size=16, streams=2, seed=1)), 20)
    frac = float(torch.cat([b["source"] for b in batches]).eq(0).float().mean())
    assert 0.68 < frac < 0.82
    assert same_batches(batches[:3], take(Loader(src, DataConfig(batch_size=16, streams=2, seed=1)), 3))


# ----------------------------------------------------------------------------- structures-only shards

@pytest.mark.parametrize("name", ["tar_structures", "hdf5_structures"])
def test_structures_only_shards_give_the_builders_reflections(sets, name):
    cfg = DataConfig(batch_size=4, streams=2, seed=5, sf="loader")
    a = take(Loader(open_sources([sets["tar"]]), cfg), 6)
    b = take(Loader(open_sources([sets[name]]), cfg), 6)
    assert same_batches(a, b)


def test_sf_on_the_device_matches_numpy(sets):
    prior = torch.ones(len(HKL))
    a = take(Loader(open_sources([sets["tar"]]), CFG), 3)
    b = take(Loader(open_sources([sets["tar_structures"]]), DataConfig(batch_size=4, streams=2, seed=5,
                                                                       sf="device")), 3)
    for x, y in zip(a, b):
        assert "amplitude" not in y and y["frac"].dim() == 3
        px, py = prepare_batch(x, prior), prepare_batch(y, prior)
        torch.testing.assert_close(py.amplitude, px.amplitude, rtol=1e-4, atol=1e-5)
        strong = px.amplitude > 1e-3
        assert torch.equal(py.phase[strong], px.phase[strong])


def test_an_empty_structure_gives_zero_amplitudes_not_a_crash(sets):
    src = open_source(sets["tar_structures"])
    rec = {"__key__": "000000000007", "cell": np.array([5.0, 5.0, 5.0, 90.0, 100.0, 90.0]),
           "frac": np.zeros((0, 3), np.float32), "z": np.zeros(0, np.uint8), "occ": np.zeros(0, np.float32),
           "uiso": np.zeros(0, np.float32)}
    s = to_sample(rec, 0, src, 0, DataConfig(sf="loader"))
    assert not s["amplitude"].any() and not s["phase"].any()
    b = prepare_batch(collate([s, s]), torch.ones(len(HKL)))
    assert torch.isfinite(b.amplitude).all() and not b.amplitude.any()


def test_sf_torch_matches_builder_numpy(sets):
    src_s, src_f = open_source(sets["tar_structures"]), open_source(sets["tar"])
    recs, ref = read_shard(src_s, 1), read_shard(src_f, 1)
    n = max(len(r["z"]) for r in recs)

    def pad(name, dtype, shape=()):
        out = np.zeros((len(recs), n, *shape), dtype)
        for i, r in enumerate(recs):
            out[i, :len(r["z"])] = r[name]
        return torch.from_numpy(out)

    amp, phase = structure_factors_torch(torch.from_numpy(np.stack([r["cell"] for r in recs])),
                                         pad("frac", np.float32, (3,)), pad("z", np.int64),
                                         pad("occ", np.float32), pad("uiso", np.float32), HKL)
    want_a = np.stack([r["amplitude"] for r in ref])
    want_p = np.stack([r["phase"] for r in ref])
    assert np.abs(amp.numpy() - want_a).sum() / want_a.sum() < 1e-5
    strong = want_a > 0.05 * want_a.mean()
    assert np.array_equal(phase.numpy()[strong], want_p[strong])


# ----------------------------------------------------------------------------- checks against the manifest

def test_flipped_byte_is_caught_and_named(sets, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sets["tar"], bad)
    shard = bad / "shard-000002.tar"
    data = bytearray(shard.read_bytes())
    data[3000] ^= 0x01  # inside an array payload: the tar still parses
    shard.write_bytes(bytes(data))
    src = open_sources([bad])  # sizes are unchanged: opening succeeds
    with pytest.raises(ShardError, match=r"shard-000002\.tar: corrupt shard \(sha256"):
        take(Loader(src, CFG), 12)
    with pytest.raises(ShardError, match=r"shard-000002\.tar"):
        take(Loader(src, CFG, workers=1), 12)  # raised in a worker, re-raised with the name
    take(Loader(src, DataConfig(batch_size=4, streams=2, verify="none")), 12)  # no check: no error


def test_missing_or_truncated_shard_is_an_error_naming_it(sets, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sets["hdf5"], bad)
    (bad / "shard-000001.h5").unlink()
    with pytest.raises(ShardError, match=r"shard-000001\.h5: missing"):
        open_sources([bad])
    shutil.copy(sets["hdf5"] / "shard-000001.h5", bad / "shard-000001.h5")
    with open(bad / "shard-000003.h5", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(ShardError, match=r"shard-000003\.h5: corrupt shard \(size"):
        open_sources([bad])


def test_different_reflection_sets_are_refused(sets, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(sets["other"], odd)
    m = json.loads((odd / "manifest.json").read_text())
    m["reflections"] = {**m["reflections"], "name": "phai-other", "hkl_sha256": "0" * 64}
    (odd / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="reflection set"):
        open_sources([sets["tar"], odd])
    with pytest.raises(ManifestError, match="no manifest"):
        open_sources([tmp_path / "nowhere"])


# ----------------------------------------------------------------------------- augmentation

def _cells(sets) -> dict[int, np.ndarray]:
    src = open_source(sets["tar"])
    return {int(r["__key__"]): r["cell"] for s in range(src.n_shards) for r in read_shard(src, s)}


def test_fixed_resolution_mask_and_absences(sets):
    cells = _cells(sets)
    for b in take(Loader(open_sources([sets["tar"]]), CFG), 4):
        for k, obs in zip(b["key"].tolist(), b["observed"].numpy()):
            want = (d_spacing(cells[k], HKL) >= 1.0) & ~ABSENT
            assert np.array_equal(obs, want)
        assert torch.all(b["d_min"] == 1.0)


def test_random_resolution_and_completeness_masks(sets):
    cells = _cells(sets)
    cfg = DataConfig(batch_size=4, streams=2, seed=5, d_min=(0.0, 2.0), drop=0.15)
    batches = take(Loader(open_sources([sets["tar"]]), cfg), 8)
    d_mins = torch.cat([b["d_min"] for b in batches])
    assert d_mins.min() >= 0 and d_mins.max() <= 2 and len(set(d_mins.tolist())) > 20
    for b in batches:
        for k, dm, obs in zip(b["key"].tolist(), b["d_min"].tolist(), b["observed"].numpy()):
            inside = (d_spacing(cells[k], HKL) >= dm) & ~ABSENT
            assert not np.any(obs & ~inside)                       # only reflections inside d_min, never absent
            assert obs.sum() >= np.floor(0.85 * inside.sum()) - 1  # at most 15 % removed
    # the mask of a key depends on (seed, epoch, key), not on where the sample lands in a batch
    other = take(Loader(open_sources([sets["tar"]]), DataConfig(**{**cfg.__dict__, "streams": 1})), 8)
    first = {k: o for b in batches[:8] for k, o in zip(b["key"].tolist(), b["observed"])}
    again = {k: o for b in other for k, o in zip(b["key"].tolist(), b["observed"])}
    common = set(first) & set(again)
    assert len(common) == 32 and all(torch.equal(first[k], again[k]) for k in common)


def test_prepare_batch_normalises_over_the_observed_set(sets):
    prior = torch.from_numpy(compute_prior(open_sources([sets["tar"]]), 32))
    raw = take(Loader(open_sources([sets["tar"]]), DataConfig(batch_size=4, streams=2, d_min=(1.5, 1.5))), 1)[0]
    b = prepare_batch(raw, prior)
    assert torch.allclose(b.amplitude.amax(dim=1), torch.ones(4))
    assert torch.all(b.amplitude[~b.observed] == 0)
    obs_max = (raw["amplitude"] * raw["observed"]).amax(dim=1, keepdim=True)
    torch.testing.assert_close(b.amplitude, raw["amplitude"] * raw["observed"] / obs_max)
    assert torch.equal(b.grid, to_grid(b.amplitude, HKL))
    assert b.grid.shape == (4, 21, 11, 11)
    assert torch.all(b.weight[:, torch.from_numpy(ABSENT)] == 0)
    torch.testing.assert_close(b.weight[0], prior * torch.from_numpy(~ABSENT))


# ----------------------------------------------------------------------------- prior, validation, metric

def test_prior_is_the_mean_normalised_amplitude(sets):
    src = open_sources([sets["tar"]])
    prior = compute_prior(src, n_samples=16)
    recs = [r for s in range(2) for r in read_shard(src[0], s)][:16]
    amps = np.stack([np.where(ABSENT, 0, r["amplitude"]) for r in recs]).astype(np.float64)
    want = (amps / amps.max(axis=1, keepdims=True)).mean(axis=0)
    np.testing.assert_allclose(prior, want, rtol=1e-6)
    assert prior.shape == (1205,) and prior.dtype == np.float32 and np.all(prior[ABSENT] == 0)
    n = np.sqrt((HKL.astype(float) ** 2).sum(1))
    assert prior[(n <= 3) & ~ABSENT].mean() > 2 * prior[(n >= 8) & ~ABSENT].mean()  # falls with |hkl|
    # HDF5 and structures-only manifests give the same prior
    np.testing.assert_allclose(compute_prior(open_sources([sets["hdf5"]]), 16), prior)
    np.testing.assert_allclose(compute_prior(open_sources([sets["tar_structures"]]), 16), prior, rtol=1e-5)


def test_validation_batches_are_fixed(sets):
    src = open_source(sets["hdf5"])
    a, b = validation_batches(src, CFG, 10), validation_batches(src, CFG, 10)
    assert [len(x["key"]) for x in a] == [4, 4, 2]
    assert torch.cat([x["key"] for x in a]).tolist() == list(range(10))
    assert same_batches(a, b)
