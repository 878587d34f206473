"""The ensemble: its fused map is its members' maps standardised and weighted, by formula; it
learns on generated data (fitted members, and a fitted member beside one trained in epochs);
its members are checked like a run's own components; it reloads, exports and thresholds as one
model."""

from __future__ import annotations

import pytest
import torch

from uadp.config import resolve
from uadp.engine.components import build_model
from uadp.engine.detector import load_bundle
from uadp.engine.pipeline import train_and_evaluate
from uadp.errors import ConfigError
from uadp.plugin import Batch
from uadp.registry import Registry
from uadp.testing import check_export, make_mvtec_dataset, quick_config

LITE0 = {"name": "timm", "model": "tf_efficientnet_lite0"}
BANK = {"reconstructor": {"name": "patchcore", "coreset_ratio": 0.5}, "backbone": LITE0 | {"stages": [3, 4]}}
SMALL_UNIAD = {
    "name": "uniad",
    "hidden_dim": 32,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 4,
    "ffn_dim": 64,
    "neighbor_size": 3,
}


def ensemble_config(data, runs, members, **sections):
    options = {
        "backbone": None,
        "reconstructor": {"name": "ensemble", "members": members, "fusion_images": 24},
        "eval": {"overlays_per_class": 0, "image_score": {"name": "max"}},
    }
    return quick_config(data, runs, **(options | sections))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return make_mvtec_dataset(tmp_path_factory.mktemp("data"), n_train=10, n_good=4, n_bad=6, size=96)


def test_fused_map_is_the_members_standardised_weighted_mean(generated, tmp_path):
    second = BANK | {"backbone": LITE0 | {"stages": [2, 3]}, "weight": 3.0}
    config = resolve(ensemble_config(generated, tmp_path, [BANK, second]), Registry())
    _, ensemble, _ = build_model(config, Registry())
    images = torch.rand(6, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    ensemble.fit([Batch(images=images[:3]), Batch(images=images[3:])])
    assert ensemble.map_scale[:, 1].gt(0).all() and not torch.equal(ensemble.map_scale[0], ensemble.map_scale[1])
    ensemble.eval()
    test = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    fused = ensemble.predict(Batch(images=test))
    expected_map, expected_score = 0.0, 0.0
    for index, weight in enumerate([0.25, 0.75]):
        own = ensemble.members[index].predict(ensemble.member_batch(index, Batch(images=test)))
        mean, std = ensemble.map_scale[index]
        expected_map = expected_map + weight * (own.anomaly_map - mean) / std
        mean, std = ensemble.score_scale[index]
        expected_score = expected_score + weight * (own.image_scores - mean) / std
    torch.testing.assert_close(fused.anomaly_map, expected_map)
    torch.testing.assert_close(fused.image_scores, expected_score)


def test_an_extension_reads_the_stored_images_only_for_a_member_that_asks(generated, tmp_path, monkeypatch):
    config = resolve(ensemble_config(generated, tmp_path, [BANK, BANK]), Registry())
    _, ensemble, _ = build_model(config, Registry())
    images = torch.rand(6, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    ensemble.fit(
        [
            Batch(images=images[:3], fitted_index=torch.arange(3)),
            Batch(images=images[3:], fitted_index=torch.arange(3, 6)),
        ]
    )
    scales = ensemble.map_scale.clone()
    read = []

    def stored():
        for start in (0, 2):
            read.append(start)
            yield Batch(images=images[start : start + 2], fitted_index=torch.arange(start, start + 2))

    new = [Batch(images=torch.rand(2, 3, 128, 128), fitted_index=torch.tensor([6, 7]))]
    ensemble.extend(new, stored())  # memory banks: no use for the stored images
    assert read == [] and torch.equal(ensemble.map_scale, scales)

    seen = []  # a member that reads them: every member sees every batch, read from the source once
    monkeypatch.setattr(
        type(ensemble.members[0]), "extend", lambda self, new, replay: seen.append(len(list(replay))) or {}
    )
    ensemble.extend(new, stored())
    assert seen == [2, 2] and read == [0, 2]


def test_members_are_resolved_and_checked_like_a_runs_components(generated, tmp_path):
    registry = Registry()
    config = resolve(ensemble_config(generated, tmp_path, [BANK, BANK]), registry)
    member = config.reconstructor.options()["members"][0]
    assert member["reconstructor"]["num_neighbors"] == 9 and member["backbone"]["weights"] == "auto"  # filled in
    assert registry.reconstructor_traits("ensemble", config.reconstructor.options())["training"] == "fit"
    assert config.eval.calibration == "leave-one-out"  # every member leaves an image out
    mixed = resolve(
        ensemble_config(generated, tmp_path, [BANK, {"reconstructor": SMALL_UNIAD, "backbone": LITE0}]), registry
    )
    assert registry.reconstructor_traits("ensemble", mixed.reconstructor.options())["training"] == "epochs"
    assert mixed.eval.calibration == "hold-out"
    wrong = [BANK, {"reconstructor": {"name": "patchcore", "coreset_ratoi": 0.1}, "backbone": LITE0}]
    with pytest.raises(ConfigError, match=r"reconstructor.members\[1\].reconstructor.*coreset_ratio"):
        resolve(ensemble_config(generated, tmp_path, wrong), registry)
    with pytest.raises(ConfigError, match=r"members\[1\]: reconstructor patchcore needs a backbone"):
        resolve(ensemble_config(generated, tmp_path, [BANK, {"reconstructor": {"name": "patchcore"}}]), registry)
    with pytest.raises(ConfigError, match="trained on synthesized anomalies"):
        resolve(ensemble_config(generated, tmp_path, [BANK, {"reconstructor": {"name": "omnial"}}]), registry)


def test_an_ensemble_of_memory_banks_finds_the_defects_and_works_as_one_model(generated, tmp_path):
    second = BANK | {"backbone": LITE0 | {"stages": [2, 3]}}
    config = ensemble_config(generated, tmp_path / "runs", [BANK, second])
    result = train_and_evaluate(config, Registry(), log=lambda text: None)
    assert len(result.history) == 1 and result.history[0]["0.patchcore/bank"] > 0
    assert result.report.mean["image_auroc"] > 0.9 and result.report.mean["pixel_auroc"] > 0.85
    detector = load_bundle(result.bundle)
    assert detector.thresholds is not None and detector.config.eval.calibration == "leave-one-out"
    assert check_export(result.bundle) < 1e-3


@pytest.mark.slow
def test_a_bank_beside_a_network_trained_in_epochs(generated, tmp_path):
    """Mixed members: the network trains in epochs (its loss logged under its name), the bank
    is fitted after the last epoch; the fused maps separate defects from good images."""
    members = [BANK, {"reconstructor": SMALL_UNIAD, "backbone": LITE0 | {"stages": [1, 2, 3, 4]}}]
    config = ensemble_config(generated, tmp_path / "runs", members, train={"epochs": 2, "batch_size": 8, "lr": 1e-3})
    result = train_and_evaluate(config, Registry(), log=lambda text: None)
    assert len(result.history) == 2 and "loss/1.uniad" in result.history[0]
    assert result.history[-1]["fit/0.patchcore/bank"] > 0
    assert result.report.mean["image_auroc"] > 0.85


def test_an_ensemble_needs_two_members():
    from uadp.plugin import BuildContext, ConfigError, Member, Prediction, Reconstructor
    from uadp_plugins.reconstructors.ensemble import EnsembleConfig
    from uadp_plugins.reconstructors.ensemble_model import Ensemble

    class Flat(Reconstructor):
        def predict(self, batch):
            return Prediction(anomaly_map=torch.ones(len(batch.images), 8, 8), embeddings={})

    alone = Member("flat", None, Flat(), "fit", 1.0)
    with pytest.raises(ConfigError, match="at least two members"):
        Ensemble(EnsembleConfig(), BuildContext((8, 8), None, (alone,)))
    pair = Ensemble(EnsembleConfig(), BuildContext((8, 8), None, (alone, Member("flat", None, Flat(), "fit", 3.0))))
    fused = pair.predict(Batch(images=torch.rand(2, 3, 8, 8)))  # unscaled (mean 0, std 1): the weighted mean
    torch.testing.assert_close(fused.anomaly_map, torch.ones(2, 8, 8))
    assert fused.image_scores is None  # no member gives a score of its own: the core reduces the map
