"""On-the-fly manifests (issue 10.3): only manifest.json is written, the loader generates the shards through
builder's one entry point, and batches, losses, `inspect --key` equal those of the materialised shards."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.build import build, make_header, write_on_the_fly
from builder.cli import cli as build_cli
from builder.shardgen import generate_shard
from manifests.schema import Manifest, ManifestError, load_manifest
from manifests.shardio import read_samples, shard_bytes
from tests.test_data import CFG, FIELDS, one_thread, same_batches, strategy, take  # noqa: F401 (fixture)
from tests.test_train import config, train_losses
from training.data import Loader, open_source, open_sources, validation_batches
from training.train import fit

S_FIELDS = ("key", "source", "observed", "d_min", "cell", "frac", "z", "occ", "uiso")


def header(count=24, shard_size=8, seed=3, reflections=True, fmt="tar", name="test-molecules") -> Manifest:
    return make_header(strategy(name), count, shard_size, fmt, seed, reflections)


def pair(root: Path, tag: str, **kw) -> tuple[Path, Path]:
    """(materialised, on the fly) of the same options."""
    mat, otf = root / f"{tag}-mat", root / f"{tag}-otf"
    build(mat, header(**kw), workers=1, progress=False)
    write_on_the_fly(otf, header(**kw))
    return mat, otf


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("otf")
    return {"full": pair(root, "full"), "hdf5": pair(root, "hdf5", fmt="hdf5"),
            "structures": pair(root, "structures", reflections=False),
            "other": pair(root, "other", seed=11, name="other-molecules", count=16),
            "val": pair(root, "val", seed=99, count=16)}


def test_only_the_manifest_is_written_with_the_materialised_header(sets):
    mat, otf = sets["full"]
    assert sorted(p.name for p in otf.iterdir()) == ["manifest.json"]
    m_otf, _ = load_manifest(otf)
    m_mat, _ = load_manifest(mat)
    assert m_otf.shards == () and m_otf.on_the_fly["probe_keys"] == [0, 23]
    assert m_otf.materialised().header() == m_mat.header()   # strategy, seed, count, shard size, reflections, schema


def test_the_entry_point_is_what_the_build_wrote(sets):
    mat, otf = sets["full"]
    m, _ = load_manifest(otf)
    for shard in range(m.n_shards):
        stored = read_samples(mat / m.shard_name(shard))
        assert shard_bytes(generate_shard(m, shard), "tar") == (mat / m.shard_name(shard)).read_bytes()
        assert [r["__key__"] for r in stored] == [r["__key__"] for r in generate_shard(m, shard)]


@pytest.mark.parametrize("kind,sf,workers", [("full", "loader", 0), ("full", "loader", 2), ("hdf5", "loader", 0),
                                             ("structures", "loader", 0), ("structures", "device", 0)])
def test_batches_are_bit_identical_to_the_materialised_shards(sets, kind, sf, workers):
    mat, otf = sets[kind]
    cfg = dataclasses.replace(CFG, sf=sf)
    fields = S_FIELDS if sf == "device" else FIELDS
    a = take(Loader(open_sources([mat]), cfg, workers=workers), 12)   # 12 x 4 samples: two epochs of 24
    b = take(Loader(open_sources([otf]), cfg, workers=workers), 12)
    assert same_batches(a, b, fields)


def test_mixing_on_the_fly_and_materialised_sources(sets):
    (full_mat, full_otf), (other_mat, other_otf) = sets["full"], sets["other"]
    want = take(Loader(open_sources([full_mat, other_mat], [2.0, 1.0]), CFG), 10)
    for paths in ([full_otf, other_mat], [full_mat, other_otf], [full_otf, other_otf]):
        assert same_batches(want, take(Loader(open_sources(paths, [2.0, 1.0]), CFG), 10))
    v_mat = validation_batches(open_source(sets["val"][0]), CFG, 16)
    assert same_batches(v_mat, validation_batches(open_source(sets["val"][1]), CFG, 16))


def test_training_losses_are_identical(sets, tmp_path):
    runs = {}
    for i, which in enumerate(("mat", "otf")):
        cfg = config({"train": sets["full"][i], "val": sets["val"][i]}, steps=3, val_every=3, ckpt_every=3,
                     prior_samples=24)
        fit(cfg, tmp_path / which, progress=False)
        runs[which] = train_losses(tmp_path / which)
    assert len(runs["mat"]) == 3 and runs["mat"] == runs["otf"]


def test_the_same_command_without_on_the_fly_materialises(tmp_path):
    out, ref = tmp_path / "d", tmp_path / "ref"
    write_on_the_fly(out, header())
    build(out, header(), workers=1, progress=False)
    build(ref, header(), workers=1, progress=False)
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    assert write_on_the_fly(out, header())[1] == "materialised"   # kept, not downgraded
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()


def test_refusals(tmp_path):
    out = tmp_path / "d"
    write_on_the_fly(out, header())
    assert write_on_the_fly(out, header())[1] == "unchanged"
    with pytest.raises(ValueError, match="another configuration .*root_seed"):
        write_on_the_fly(out, header(seed=4))
    with pytest.raises(ValueError, match="another configuration"):
        build(out, header(count=32), workers=1, progress=False)
    (out / ".build.json").write_text(json.dumps(header().header()))  # a materialising build under way
    with pytest.raises(ValueError, match="under way or was interrupted"):
        write_on_the_fly(out, header())
    res = CliRunner().invoke(build_cli, ["shards", "--strategy", "lognormal-molecules", "--count", "8", "--out",
                                         str(tmp_path / "e"), "--on-the-fly", "--shards", "0:1"])
    assert res.exit_code == 2 and "drop --shards" in res.output


def _tampered(src: Path, dst: Path, edit) -> Path:
    doc = json.loads((src / "manifest.json").read_text())
    edit(doc)
    dst.mkdir()
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def test_a_manifest_this_code_cannot_regenerate_is_refused(sets, tmp_path):
    otf = sets["full"][1]
    cases = {
        "other id": (lambda d: d.update(strategy_id="0" * 16), "resolves to id"),
        "other probe": (lambda d: d["on_the_fly"].update(probe_sha256="0" * 64), "generate other bytes here"),
        "newer strategy field": (lambda d: d["strategy"]["fill"].update(new_knob=1), "cannot be resolved"),
    }
    for name, (edit, why) in cases.items():
        bad = _tampered(otf, tmp_path / name.replace(" ", "-"), edit)
        with pytest.raises(ManifestError, match=why) as exc:
            open_source(bad)
        assert "\n" not in str(exc.value)
        res = CliRunner().invoke(build_cli, ["verify", str(bad)])
        assert res.exit_code == 1 and why.split()[0] in res.output


def test_the_strategy_travels_inside_the_manifest(tmp_path):
    """A strategy .toml that no longer exists (or never existed on the training machine) is not needed."""
    toml = tmp_path / "mine.toml"
    toml.write_text('name = "mine"\n[cell]\nsampler = "uniform-edges"\n[fill]\nfiller = "random"\n'
                    'elements_general = { C = 0.8, O = 0.2 }\nelements_special = { C = 1.0 }\n')
    run = CliRunner().invoke
    args = ["shards", "--strategy", str(toml), "--count", "12", "--shard-size", "4", "--seed", "2"]
    assert run(build_cli, [*args, "--on-the-fly", "--out", str(tmp_path / "otf")]).exit_code == 0
    assert run(build_cli, [*args, "--out", str(tmp_path / "mat")]).exit_code == 0
    toml.unlink()
    a = take(Loader(open_sources([tmp_path / "otf"]), CFG), 6)
    assert same_batches(a, take(Loader(open_sources([tmp_path / "mat"]), CFG), 6))


def test_inspect_key_and_verify_on_both_kinds(sets):
    mat, otf = sets["full"]
    run = CliRunner().invoke
    shown = [run(build_cli, ["inspect", str(d), "--key", "13"]) for d in (mat, otf)]
    assert all(r.exit_code == 0 for r in shown)
    assert shown[0].output.split("\n", 1)[1] == shown[1].output.split("\n", 1)[1]   # all but the location line
    assert "generated on the fly" in run(build_cli, ["inspect", str(otf)]).output
    res = run(build_cli, ["verify", str(otf), "--deep", "5"])
    assert res.exit_code == 0 and "no shard files to hash" in res.output and "5 samples generated twice" in res.output
    assert run(build_cli, ["inspect", str(otf), "--key", "24"]).exit_code == 2  # outside the dataset


def test_the_loader_config_cannot_tell_them_apart(sets):
    """Both kinds become Sources the loader treats alike; only `generate` differs."""
    a, b = (open_source(p) for p in sets["full"])
    same = {f.name for f in dataclasses.fields(a)} - {"manifest", "directory", "sizes", "sha256", "manifest_sha256",
                                                      "generate"}
    assert all(getattr(a, n) == getattr(b, n) for n in same) and a.generate is None and b.on_the_fly
