"""`phaseforge-eval` end to end: baselines on the committed test set, a tiny checkpoint through the scan,
unusable inputs, determinism, compare, testset/fetch wrappers and bad input."""
from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from builder.reflections import phai_hkl
from evaluation.cli import cli
from training.model import seeded_model, config_dict, tiny

CIF_DIR = Path(__file__).parent / "data" / "cif"
SMALL = "manifests/testsets/cod-p21c-small.json"
ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = {"report.json", "results.csv", "report.md", "timing.json", "r_vs_volume_class.png",
             "r_vs_volume_special.png", "r_hist.png"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    m = seeded_model(tiny(), 1)
    torch.save({"model": m.state_dict(), "config": {"model": config_dict(tiny())}, "train_state": {"step": 2}},
               d / "tiny.pt")
    torch.save(m.state_dict(), d / "bare.pt")
    return {"trainer": d / "tiny.pt", "bare": d / "bare.pt"}


@pytest.fixture()
def cif_dir(tmp_path: Path) -> Path:
    """Three usable CIFs, a space-group-15 one, a garbage file and one without coordinates."""
    d = tmp_path / "cifs"
    shutil.copytree(CIF_DIR, d, ignore=shutil.ignore_patterns("*.md"))
    (d / "9999001.cif").write_text("this is not a CIF\n")
    text = (CIF_DIR / "2101932.cif").read_text()
    (d / "9999002.cif").write_text("\n".join(ln for ln in text.splitlines() if "fract" not in ln))
    return d


def test_true_phases_give_r_one_on_the_small_test_set(tmp_path: Path):
    res = invoke("run", "--testset", SMALL, "--method", "true", "--out", tmp_path / "t", "--no-plots")
    assert res.exit_code == 0, res.output
    got = rows(tmp_path / "t")
    assert len(got) == 34 and all(r["r"] == "1.000000" and r["mpe"] == "0.000000" for r in got)
    rep = report(tmp_path / "t")
    assert rep["n"] == 34 and rep["f_solved"] == 1.0 and rep["median_r"] == 1.0 and rep["n_skipped"] == 0
    assert res.output.strip().splitlines()[-1] == "f(r>=0.8) = 1.0000 (34/34)  median r = 1.000000"


def test_random_signs_score_near_zero(tmp_path: Path):
    res = invoke("run", "--testset", "cod-p21c-small", "--method", "random", "--out", tmp_path / "r", "--no-plots")
    assert res.exit_code == 0, res.output
    rep = report(tmp_path / "r")
    assert rep["f_solved"] == 0.0 and abs(rep["median_r"]) < 0.3
    assert set(rep["by_class"]) == {"organic", "s-block", "d-block", "other"}
    assert sum(v["n"] for v in rep["by_class"].values()) == 34
    assert sum(v["n"] for v in rep["by_special"].values()) == 34
    assert sum(b["n"] for b in rep["by_volume"]) == 34


def test_tiny_checkpoint_runs_the_scan_end_to_end(tmp_path: Path, ckpts):
    out = tmp_path / "m"
    res = invoke("run", "--testset", SMALL, "--checkpoint", ckpts["trainer"], "--out", out, "--cycles", "1..2",
                 "--random-starts", "1", "--limit", "3", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert res.output.strip().splitlines()[-1].startswith("f(r>=0.8) = ")
    rep = report(out)
    assert rep["method"] == "model" and rep["n"] == 3
    assert rep["checkpoint"]["format"] == "trainer" and rep["checkpoint"]["step"] == 2
    assert rep["checkpoint"]["sha256"] == hashlib.sha256(ckpts["trainer"].read_bytes()).hexdigest()
    assert rep["inputs"]["sha256"] == hashlib.sha256((ROOT / SMALL).read_bytes()).hexdigest()
    assert rep["settings"]["cycles"] == [1, 2] and rep["settings"]["starts"] == ["zero", "random-1"]
    assert [c["cycles"] for c in rep["by_cycles"]] == [1, 2] and rep["fom"]["name"] == "confidence"
    for r in rows(out):
        assert r["best_cycles"] in {"1", "2"} and r["best_start"] in {"zero", "random-1"}
        assert float(r["r"]) >= max(float(r["fom_r"]), float(r["confidence_r"]), float(r["consistency_r"]))
    assert "FOM pick (confidence)" in (out / "report.md").read_text()


def test_bare_state_dict_gives_the_same_results(tmp_path: Path, ckpts):
    args = ["--testset", SMALL, "--cycles", "2", "--random-starts", "1", "--limit", "2", "--no-plots",
            "--device", "cpu"]
    a = invoke("run", *args, "--checkpoint", ckpts["trainer"], "--out", tmp_path / "a")
    b = invoke("run", *args, "--checkpoint", ckpts["bare"], "--out", tmp_path / "b")
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    assert report(tmp_path / "b")["checkpoint"]["format"] == "bare"
    assert (tmp_path / "a" / "results.csv").read_bytes() == (tmp_path / "b" / "results.csv").read_bytes()


def test_report_json_is_byte_identical_across_runs(tmp_path: Path, ckpts):
    for method in (["--checkpoint", ckpts["trainer"], "--cycles", "1..2", "--random-starts", "1"],
                   ["--method", "charge-flipping"]):
        outs = [tmp_path / f"{method[1].name if isinstance(method[1], Path) else method[1]}-{i}" for i in (1, 2)]
        for out in outs:
            res = invoke("run", "--testset", SMALL, "--limit", "2", "--out", out, "--no-plots", "--seed", "3",
                         "--device", "cpu", *method)
            assert res.exit_code == 0, res.output
        assert (outs[0] / "report.json").read_bytes() == (outs[1] / "report.json").read_bytes()
        assert (outs[0] / "results.csv").read_bytes() == (outs[1] / "results.csv").read_bytes()


def test_charge_flipping_reports_raw_and_polished(tmp_path: Path):
    res = invoke("run", "--testset", SMALL, "--method", "charge-flipping", "--limit", "2", "--out", tmp_path / "cf",
                 "--no-plots")
    assert res.exit_code == 0, res.output
    rep = report(tmp_path / "cf")
    assert rep["f_solved"] == 1.0 and rep["raw"]["n"] == 2 and "symmetrised" in rep
    for r in rows(tmp_path / "cf"):
        assert float(r["r"]) >= 0.8 and r["r_raw"] and r["converged"] in {"0", "1"}


def test_unusable_inputs_are_listed_and_do_not_stop_the_run(tmp_path: Path, cif_dir: Path):
    res = invoke("run", "--cifs", cif_dir, "--method", "true", "--out", tmp_path / "u", "--no-plots")
    assert res.exit_code == 0, res.output
    rep = report(tmp_path / "u")
    assert rep["n"] == 3 and rep["n_inputs"] == 6 and rep["f_solved"] == 1.0
    reasons = {s["id"]: s["reason"] for s in rep["skipped"]}
    assert reasons == {"9008040": "another space group", "9999001": "unparsable", "9999002": "missing coordinates"}
    assert rep["skipped_counts"] == {"another space group": 1, "missing coordinates": 1, "unparsable": 1}
    assert "9008040" in (tmp_path / "u" / "report.md").read_text()
    assert "skipped 9008040: another space group" in res.output
    # ferrocene and malonamide carry no U at all (tests/data/cif/README.md): every site gets the default
    assert {r["id"]: r["n_u_fallback"] for r in rows(tmp_path / "u")} == {"9004097": "0", "2101932": "11",
                                                                          "1209222": "26"}
    assert rep["u_fallback"] == {"structures": 2, "sites": 37, "ids": ["1209222", "2101932"], "u_iso": 0.05}
    assert "37 sites in 2 structures had no usable U" in (tmp_path / "u" / "report.md").read_text()
    sel = invoke("run", "--cifs", cif_dir, "--method", "true", "--select", "p21c-small", "--out", tmp_path / "s",
                 "--no-plots")
    assert sel.exit_code == 0, sel.output
    assert {s["id"]: s["reason"] for s in report(tmp_path / "s")["skipped"]}["1209222"] == \
        "cell out of the selected range"


def test_compare_puts_reports_side_by_side(tmp_path: Path):
    for m in ("true", "random"):
        assert invoke("run", "--testset", SMALL, "--method", m, "--limit", "5", "--out", tmp_path / m,
                      "--no-plots").exit_code == 0
    res = invoke("compare", tmp_path / "true", tmp_path / "random", "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"compare.json", "compare.md", "compare_r.png"}
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cmp["same_inputs"] and [r["method"] for r in cmp["runs"]] == ["true", "random"]
    assert cmp["runs"][0]["f_solved"] == 1.0 and cmp["runs"][1]["f_solved"] == 0.0
    assert "| true (true) |" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --testset and --cifs"),
    (["--testset", "no-such-set", "--method", "true"], "no test set"),
    (["--testset", SMALL], "give --checkpoint or --method"),
    (["--testset", SMALL, "--checkpoint", "missing.pt"], "does not exist"),
    (["--testset", SMALL, "--checkpoint", "x.pt", "--method", "random"], "--checkpoint runs the model"),
    (["--testset", SMALL, "--method", "true", "--d-min", "0"], "--d-min"),
    (["--testset", SMALL, "--method", "true", "--select", "p21c-small"], "--select applies to --cifs"),
    (["--cifs", "no/such/dir", "--method", "true"], "is not a directory"),
])
def test_bad_run_input_exits_2_and_writes_nothing(tmp_path: Path, args, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("earlier report\n")
    res = invoke("run", *args, "--out", out)
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: ") and message in res.stderr and len(res.stderr.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert (out / "report.json").read_text() == "earlier report\n"


def test_bad_checkpoint_and_cycles_exit_2(tmp_path: Path, ckpts):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    res = invoke("run", "--testset", SMALL, "--checkpoint", junk, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "cannot read checkpoint" in res.stderr and not (tmp_path / "o").exists()
    res = invoke("run", "--testset", SMALL, "--checkpoint", ckpts["bare"], "--cycles", "a..b", "--out",
                 tmp_path / "o")
    assert res.exit_code == 2 and "cycles" in res.stderr and not (tmp_path / "o").exists()
    f = tmp_path / "file"
    f.write_text("keep")
    res = invoke("run", "--testset", SMALL, "--method", "true", "--out", f)
    assert res.exit_code == 2 and f.read_text() == "keep"


def test_compare_bad_input(tmp_path: Path):
    res = invoke("compare", tmp_path / "nothing", "--out", tmp_path / "cmp")
    assert res.exit_code == 2 and "no report.json" in res.stderr and not (tmp_path / "cmp").exists()


def test_testset_command_wraps_build_testset(tmp_path: Path, cif_dir: Path):
    out = tmp_path / "ts.json"
    res = invoke("testset", "--cifs", cif_dir, "--select", "p21c-small", "--out", out)
    assert res.exit_code == 0, res.output
    ts = json.loads(out.read_text())
    assert [e["id"] for e in ts["entries"]] == ["9004097"] and ts["select"] == "p21c-small"
    assert {s["id"] for s in ts["skipped"]} == {"1209222", "2101932", "9008040", "9999001", "9999002"}
    bad = invoke("testset", "--cifs", tmp_path / "none", "--select", "p21c-small", "--out", tmp_path / "x.json")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and not (tmp_path / "x.json").exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_fetch_command_against_a_local_server(tmp_path: Path):
    entries = [{"id": cid, "sha256": hashlib.sha256((CIF_DIR / f"{cid}.cif").read_bytes()).hexdigest()}
               for cid in ("9004097", "2101932")]
    manifest = tmp_path / "ts.json"
    manifest.write_text(json.dumps({"entries": entries}))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(CIF_DIR)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        res = invoke("fetch", "--testset", manifest, "--out", tmp_path / "got", "--base-url", url, "--timeout", "10")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["2101932.cif", "9004097.cif"]
    bad = invoke("fetch", "--testset", "no-such-set", "--out", tmp_path / "none")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and not (tmp_path / "none").exists()


def test_cf_results_do_not_depend_on_workers(tmp_path: Path):
    for w in (1, 2):
        res = invoke("run", "--testset", SMALL, "--method", "charge-flipping", "--limit", "2", "--workers", w,
                     "--out", tmp_path / f"w{w}", "--no-plots")
        assert res.exit_code == 0, res.output
    assert (tmp_path / "w1" / "report.json").read_bytes() == (tmp_path / "w2" / "report.json").read_bytes()
    assert np.isclose(report(tmp_path / "w1")["f_solved"], 1.0)


def test_a_failing_structure_is_listed_not_fatal(tmp_path: Path, monkeypatch):
    """A structure on which the method itself fails joins the skipped list; the others are scored."""
    import evaluation.baselines as baselines
    import evaluation.run as run_mod

    real = baselines.charge_flip

    def flaky(cell6, *args, **kwargs):
        if cell6[0] < 7.6:
            raise FloatingPointError("diverged")
        return real(cell6, *args, **kwargs)

    monkeypatch.setattr(baselines, "charge_flip", flaky)
    prepared, skipped = run_mod.prepare_all(run_mod.open_testset(SMALL), phai_hkl(), 1.0, limit=4)
    rows_, failed, _ = run_mod.evaluate("charge-flipping", prepared, phai_hkl())
    bad = {p.id for p in prepared if p.cell6[0] < 7.6}
    assert bad and {f["id"] for f in failed} == bad and not skipped
    assert all(f["reason"] == "charge-flipping failed" and "diverged" in f["detail"] for f in failed)
    assert {r["id"] for r in rows_} == {p.id for p in prepared} - bad
