"""`uadp extend`: a trained model learns new classes and keeps what it knew.

The learning tests extend a model trained on two generated classes by a third: the new class is
found far above chance, the known classes score as before, the bundle records the class history
and its stored images, and the MLflow run is the child of the one that made the model."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import all_runs
from test_patchcore import clustered_points
from uadp.cli import main
from uadp.contract import Reconstructor
from uadp.engine.detector import read_bundle
from uadp.engine.exemplars import NOT_FITTED, Exemplars, spread
from uadp.testing import make_mvtec_dataset
from uadp_plugins._layers import coreset
from uadp_plugins._layers.coreset import greedy_coreset, plain_greedy_coreset
from uadp_plugins.reconstructors.patchcore_model import PatchCore

FIRST, NEW = "stripes,checker", "dots"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return make_mvtec_dataset(
        tmp_path_factory.mktemp("data"), classes=("stripes", "checker", "dots"), n_train=10, n_good=4, n_bad=6, size=96
    )


def run(*words, capsys=None) -> tuple[int, str, str]:
    code = main([str(word) for word in words])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


SMALL = ["--set", "eval.overlays_per_class=0", "--set", "data.workers=0", "--set", "extend.exemplars_per_class=4"]


@pytest.fixture(scope="module")
def default_stack_base(generated, tmp_path_factory):
    """The default stack (a PatchCore bank and cada-knn) on the first two classes."""
    runs = tmp_path_factory.mktemp("runs")
    summary = runs / "base.json"
    code = main(
        ["run", "--data", str(generated), "--classes", FIRST, "--image-size", "96", "--set", f"tracking.root={runs}"]
        + SMALL
        + ["--output-json", str(summary)]
    )
    assert code == 0
    document = json.loads(summary.read_text())
    return runs, document["mlflow_run_id"], document


def extend_by_new(base_run: str, data, runs, summary, capsys) -> tuple[str, dict]:
    """`uadp extend` of the base run by the new class from ``data``: what it printed, and its summary."""
    code, out, err = run(
        "extend", base_run, "--data", data, "--classes", NEW, "--root", runs, *SMALL,
        "--output-json", summary, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    return out, json.loads(summary.read_text())


def test_the_default_stack_learns_a_new_class_and_keeps_the_known_ones(generated, default_stack_base, capsys):
    runs, base_run, base = default_stack_base
    out, extended = extend_by_new(base_run, generated, runs, runs / "extended.json", capsys)
    assert f"by {NEW}: 10 new training images, 8 stored ones replayed" in out
    assert set(extended["per_class"]) == {"stripes", "checker", "dots"}
    assert extended["base"]["per_class"]["dots"]["image_auroc"] > 0.9  # learned, far above chance
    for known in FIRST.split(","):  # and kept: the banks hold every row they had
        for metric in ("image_auroc", "pixel_ap"):
            before, after = base["base"]["per_class"][known][metric], extended["base"]["per_class"][known][metric]
            assert after >= before - 0.02, (known, metric, before, after)
    assert set(extended["threshold"]["thresholds"]["image"]) == {"all", "stripes", "checker", "dots"}

    old = read_bundle(runs / "checkpoints" / base_run / "model.pt")
    new = read_bundle(runs / "checkpoints" / extended["mlflow_run_id"] / "model.pt")
    assert new["classes"] == ["checker", "dots", "stripes"]
    assert [step["classes"] for step in new["history"]] == [["stripes", "checker"], ["dots"]]
    assert [step["images"] for step in new["history"]] == [20, 10]
    assert [step["epochs"] for step in new["history"]] == [None, None]  # fitted in one pass: no epochs
    assert new["history"][1]["run"] == extended["mlflow_run_id"]
    banks = [key.removesuffix("memory_bank") for key in new["reconstructor"] if key.endswith("memory_bank")]
    assert banks  # the default's bank (an ensemble's: each member's)
    for prefix in banks:  # every known row kept; the new rows carry the new images' ids
        before, after = old["reconstructor"][f"{prefix}memory_bank"], new["reconstructor"][f"{prefix}memory_bank"]
        kept = (before[:, None, :] == after[None, :, :]).all(-1).any(1)
        assert bool(kept.all()) and len(after) > len(before)
        sources = new["reconstructor"][f"{prefix}bank_source"]
        assert set(sources.tolist()) - set(range(20)) <= set(range(20, 30)) and sources.max() >= 20
    for scale in ("map_scale", "score_scale"):  # an ensemble's members keep their weighing
        if scale in old["reconstructor"]:
            assert torch.equal(old["reconstructor"][scale], new["reconstructor"][scale])
    stored = Exemplars.from_state(new["exemplars"])
    assert [stored.count(name, fitted=True) for name in ("stripes", "checker", "dots")] == [4, 4, 4]
    assert all(i >= 20 for c, i in zip(stored.classes, stored.ids) if c == "dots")

    by_id = {r.info.run_id: r for r in all_runs(runs)}
    child = by_id[extended["mlflow_run_id"]]
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == base_run
    history = json.loads(child.data.tags["uadp.class_history"])
    assert [step["classes"] for step in history] == [["stripes", "checker"], ["dots"]]
    assert [step["epochs"] for step in history] == [None, None]  # the tag shows each step's epochs


def test_a_model_is_not_extended_by_a_class_it_knows_or_the_folder_lacks(generated, default_stack_base, capsys):
    runs, base_run, _ = default_stack_base
    before = len(all_runs(runs))
    for classes, said in (
        ("checker", "--classes checker: the model already knows this class"),
        ("dots,dots", "a class is named twice"),
        ("screws", "--classes screws: no training images of this class in the data folder"),
    ):
        code, _, err = run("extend", base_run, "--data", generated, "--classes", classes, "--root", runs, capsys=capsys)
        assert code == 2 and said in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert len(all_runs(runs)) == before  # refused before any run was recorded


def test_a_reconstructor_that_cannot_extend_says_so_in_one_line(generated, default_stack_base, capsys, monkeypatch):
    runs, base_run, _ = default_stack_base
    monkeypatch.setattr(PatchCore, "extend", Reconstructor.extend)  # a memory bank without extend
    before = len(all_runs(runs))
    code, _, err = run("extend", base_run, "--data", generated, "--classes", NEW, "--root", runs, capsys=capsys)
    assert code == 2 and "cannot extend" in err and len(err.strip().splitlines()) == 1
    assert len(all_runs(runs)) == before


@pytest.mark.parametrize("replay", [True, False])
def test_a_network_trained_in_epochs_trains_further_with_the_stored_images(generated, tmp_path, capsys, replay):
    """UniAD: trained on two classes, then on the third with (or without) the stored images of the
    first two; it learns the new class either way."""
    runs = tmp_path / "runs"
    quick = ["--image-size", "96", "--set", f"tracking.root={runs}", "--set", "train.batch_size=8", *SMALL]
    small_uniad = [
        "--set", "reconstructor.hidden_dim=64", "--set", "reconstructor.num_encoder_layers=1",
        "--set", "reconstructor.num_decoder_layers=1", "--set", "reconstructor.ffn_dim=128",
        "--set", "reconstructor.neighbor_size=3", "--set", "backbone.stages=[1,2,3,4]",
    ]  # fmt: skip
    summary = tmp_path / "base.json"
    code, _, err = run(
        "run", "--data", generated, "--classes", FIRST, "--reconstructor", "uniad", "--aligner", "none",
        "--epochs", "4", *quick, *small_uniad, "--output-json", summary, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    base_run = json.loads(summary.read_text())["mlflow_run_id"]
    extended = tmp_path / "extended.json"
    epochs = ["--epochs", "4"] if replay else []  # without: as many as extend.budget allows
    code, out, err = run(
        "extend", base_run, "--data", generated, "--classes", NEW, "--root", runs, *epochs,
        *SMALL, "--set", f"extend.replay={str(replay).lower()}", "--output-json", extended, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert f"new training images, {8 if replay else 0} stored ones replayed" in out
    document = json.loads(extended.read_text())
    assert document["per_class"]["dots"]["image_auroc"] > 0.8
    (child,) = [r for r in all_runs(runs) if r.info.run_id == document["mlflow_run_id"]]
    # without --epochs: 0.3 of 4 epochs over the 14 images it learned and the 7 new ones, over 7 images
    assert child.data.params["train.epochs"] == ("4" if replay else "3")
    assert child.data.tags["mlflow.parentRunId"] == base_run
    bundle = read_bundle(runs / "checkpoints" / document["mlflow_run_id"] / "model.pt")
    assert [step["epochs"] for step in bundle["history"]] == [4, 4 if replay else 3]  # a next budget counts 4
    if replay:  # its checkpoint cannot continue it: the stored images and new classes are not in it
        code, _, err = run("run", "--resume", child.info.run_id, "--set", f"tracking.root={runs}", capsys=capsys)
        assert code == 2 and "an extension is not resumed: run the same `uadp extend` again" in err


@pytest.mark.parametrize(("home_bounds", "screen"), [(True, False), (False, False), (True, True), (False, True)])
def test_the_bank_grows_from_its_rows_as_the_plain_greedy_loop_would(monkeypatch, home_bounds, screen):
    """The selection that extends a bank starts from the bank's rows as centres already chosen,
    and picks exactly what the paper's loop picks from there: whether the new points' distances to
    the bank start exact or as upper bounds from their home clusters, and whether stale bounds come
    down in float32 or by bfloat16 products."""
    monkeypatch.setattr(coreset, "BF16_SCREEN", screen)
    monkeypatch.setattr(coreset, "SCREEN_CENTRES", 1)
    monkeypatch.setattr(coreset, "SCREEN_BLOCK", 50)
    monkeypatch.setattr(coreset, "FRONT", 100)
    monkeypatch.setattr(coreset, "GROUP", 64)
    monkeypatch.setattr(coreset, "HOME_BLOCK", 700)
    monkeypatch.setattr(coreset, "HOME_BOUNDS", home_bounds)
    features, known = clustered_points(3000, 24, seed=1), clustered_points(200, 24, seed=5)
    picks, _ = greedy_coreset(features, 400, 0, chosen=known)
    assert torch.equal(picks, plain_greedy_coreset(features, 400, 0, chosen=known))
    # the first pick is the row farthest from every known row
    assert int(picks[0]) == int(torch.cdist(features, known).amin(1).argmax())


def test_home_bounds_are_upper_bounds_and_mostly_exact(monkeypatch):
    """A growing bank's first bounds: never below a point's distance to its nearest bank row (the
    selection relies on it), and for most points equal to it (which is what makes them cheap)."""
    monkeypatch.setattr(coreset, "HOME_BLOCK", 500)
    features, known = clustered_points(3000, 24, seed=1), clustered_points(400, 24, seed=5)
    bound = coreset._home_bounds(features, known)
    exact = torch.cdist(features.double(), known.double()).amin(1)
    assert bool((bound.double() >= exact - 1e-4).all())
    assert float((bound.double() <= exact + 1e-4).double().mean()) > 0.7


def test_stored_images_spread_over_each_class_and_keep_their_ids(tmp_path):
    from uadp.contract import Sample
    from uadp.engine.exemplars import of_run

    data = make_mvtec_dataset(tmp_path / "data", classes=("stripes", "dots"), n_train=10, n_good=1, n_bad=1, size=64)
    train = [Sample(str(p), p.parts[-4], 0) for p in sorted(data.glob("*/train/good/*.png"))]
    assert [train[i].class_name for i in spread(train, 3)] == ["dots"] * 3 + ["stripes"] * 3
    assert spread(train, 3)[:3] == [0, 4, 9]  # first, middle, last of the class
    stored = of_run(train, list(range(100, 120)), train[:2], 3, (48, 48))
    assert stored.ids == [100, 104, 109, 110, 114, 119, NOT_FITTED, NOT_FITTED]
    samples, ids = stored.write(tmp_path / "out", fitted=True)
    assert ids == stored.ids[:6] and all(p.class_name in ("stripes", "dots") for p in samples)
    from PIL import Image

    assert Image.open(samples[0].path).size == (48, 48)


def test_the_new_products_alone_are_enough(default_stack_base, tmp_path, capsys):
    """The known products' folders are gone: the folder holds the new class only. The model
    still knows every class: the known ones' thresholds come from their stored images."""
    runs, base_run, _ = default_stack_base
    only_new = make_mvtec_dataset(tmp_path / "new", classes=("dots",), n_train=10, n_good=4, n_bad=6, size=96)
    _, extended = extend_by_new(base_run, only_new, runs, tmp_path / "extended.json", capsys)
    assert set(extended["per_class"]) == {"dots"} and extended["per_class"]["dots"]["image_auroc"] > 0.9
    thresholds = extended["threshold"]["thresholds"]
    assert thresholds["calibration_images"] == {"stripes": 4, "checker": 4, "dots": 10}
    new = read_bundle(runs / "checkpoints" / extended["mlflow_run_id"] / "model.pt")
    assert new["classes"] == ["checker", "dots", "stripes"]


def test_an_extension_trains_for_the_share_of_joint_work_its_budget_allows():
    """``extend.budget`` of the epochs x images of training every class again, over the new and
    replayed images: a small new class trains for more epochs than the model's own (up to twice
    them), a large one for fewer, and neither costs more than the budget."""
    from types import SimpleNamespace

    from uadp.config import RunConfig
    from uadp.engine.extension import further_epochs

    # the model extended was itself an extension, trained 12 epochs; joint training takes the first step's 30
    config = RunConfig.model_validate({"train": {"epochs": 12}})
    job = SimpleNamespace(config=config, extension=SimpleNamespace(images_seen=573, own_epochs=30))
    small = further_epochs(job, new=45, replayed=89)  # 0.3 x 30 x 618 / 134 = 41.5
    large = further_epochs(job, new=360, replayed=57)  # 0.3 x 30 x 933 / 417 = 20.1
    assert (small, large) == (41, 20)
    for epochs, images, new in ((small, 134, 45), (large, 417, 360)):
        assert epochs * images <= config.extend.budget * 30 * (573 + new)
    assert further_epochs(job, new=1, replayed=0) == 60
    job.extension.own_epochs = None  # a bundle whose history lacks the epochs: the model's config says
    assert further_epochs(job, new=45, replayed=89) == 16  # 0.3 x 12 x 618 / 134
