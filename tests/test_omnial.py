"""OmniAL (Zhao, CVPR 2023): DCSA, DiffNeck, the two networks, the losses, the map; a learning test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from uadp.contract import Batch, BuildContext
from uadp.errors import ConfigError
from uadp_plugins._layers.dcsa import DCSA, BasicBlock
from uadp_plugins._layers.ssim import ssim
from uadp_plugins.reconstructors.omnial import OmniALConfig
from uadp_plugins.reconstructors.omnial_model import DiffNeck, LocalisationNet, OmniAL, ReconstructionNet, focal_loss

SMALL = dict(rec_width=8, rec_max_width=32, loc_width=8, loc_max_width=32, diffneck_width=8)


def test_dcsa_adds_channel_and_spatial_attention():
    torch.manual_seed(0)
    block = DCSA(32, "instance", dilation=2, reduction=16).eval()
    x = torch.randn(2, 32, 16, 16)
    y = block(x)
    assert y.shape == x.shape
    channel = block.channel(x)  # [B,C,1,1]: a per-channel offset
    assert channel.shape == (2, 32, 1, 1)
    x1 = x + channel
    summary = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1)
    spatial = block.spatial(summary) + 0.1 * block.dilated(summary)  # [B,1,H,W]: broadcast over channels
    assert torch.allclose(y, x1 + spatial, atol=1e-6)
    assert block.dilated[0].dilation == (2, 2) and block.channel[1].out_channels == 2


def test_dcsa_ablation_switches():
    block = DCSA(16, "batch", channel_attention=False, dilated_spatial=False)
    assert block.channel is None and block.dilated is None
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


def test_basic_block_uses_the_requested_norm_and_dilation():
    block = BasicBlock(3, 8, "instance", dilation=4)
    assert isinstance(block[1], torch.nn.InstanceNorm2d) and block[0].dilation == (4, 4)
    assert block(torch.randn(1, 3, 20, 20)).shape == (1, 8, 20, 20)
    assert isinstance(BasicBlock(3, 8, "batch")[1], torch.nn.BatchNorm2d)


def test_reconstruction_net_outputs_an_image_and_a_jnd_map_without_skips():
    cfg = OmniALConfig(**SMALL)
    net = ReconstructionNet(cfg)
    rec, jnd = net(torch.rand(2, 3, 64, 64))
    assert rec.shape == (2, 3, 64, 64) and jnd.shape == (2, 64, 64)
    assert 0 <= float(rec.detach().min()) and float(rec.detach().max()) <= 1  # sigmoid
    assert len(net.encoder) == 5 and len(net.decoder) == 4
    # dilation 2^(s-2) from scale 3; InstanceNorm throughout
    assert [stage[0][0].dilation[0] for stage in net.encoder] == [1, 1, 2, 4, 8]
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_reconstruction_net_skip_option_and_dcsa_sigmoid():
    net = ReconstructionNet(OmniALConfig(**SMALL, rec_skips=True, dcsa_sigmoid=True))
    rec, jnd = net(torch.rand(1, 3, 48, 48))  # also a size that is not a multiple of 16
    assert rec.shape == (1, 3, 48, 48) and jnd.shape == (1, 48, 48)
    assert net.decoder[-1][0][0].in_channels == 16 + 8  # upsampled scale 2 + the scale-1 skip
    assert isinstance(net.encoder[0][1].channel[-1], torch.nn.Sigmoid)


def test_localisation_net_downsamples_through_scale_4_and_dilates_deeper():
    cfg = OmniALConfig(**SMALL)
    net = LocalisationNet(cfg, 8)
    logits, deepest = net(torch.rand(2, 8, 64, 64))
    assert logits.shape == (2, 4, 64, 64)
    assert deepest.shape[-2:] == (8, 8)  # pooled before scales 2, 3, 4 only
    assert [stage[0][0].dilation[0] for stage in net.encoder] == [1, 1, 2, 4, 8, 16]
    assert all(not isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())


def test_diffneck_sums_the_union_path_and_down_weighted_sides():
    torch.manual_seed(0)
    neck = DiffNeck(8, 0.1).eval()
    rec, jnd, inp = torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16), torch.rand(2, 3, 16, 16)
    out = neck(rec, jnd, inp)
    j = jnd.unsqueeze(1)
    expected = neck.union(torch.cat([rec, j, inp], 1)) + 0.1 * (
        neck.rec(torch.cat([rec, inp], 1)) + neck.jnd(torch.cat([j, inp], 1))
    )
    assert torch.allclose(out, expected)
    assert neck.union[0].in_channels == 7 and neck.rec[0].in_channels == 6 and neck.jnd[0].in_channels == 4


def test_focal_loss_matches_its_definition_and_reduces_to_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 4, 5, 5), torch.randint(0, 4, (3, 5, 5))
    assert torch.allclose(focal_loss(logits, target, 0.0), F.cross_entropy(logits, target))
    p = F.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    assert torch.allclose(focal_loss(logits, target, 2.0), (-((1 - p) ** 2) * p.log()).mean(), atol=1e-6)


def test_ssim_loss_matches_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    _, full = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    # the mean over every pixel (scikit-image's own mean leaves out a 5-px border); borders are
    # reflected without repeating the edge pixel here, so they differ slightly
    value = float(ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]))
    assert value == pytest.approx(full.mean(), abs=5e-3)
    assert float(ssim(torch.from_numpy(a)[None, None], torch.from_numpy(a)[None, None])) == pytest.approx(1.0, abs=1e-5)


def test_map_is_the_smoothed_sum_of_the_anomaly_levels():
    model = OmniAL(OmniALConfig(**SMALL, map_smoothing="none"), BuildContext((32, 32), None))
    logits = torch.randn(2, 4, 32, 32)
    assert torch.allclose(model.anomaly_map(logits), 1 - F.softmax(logits, 1)[:, 0], atol=1e-6)
    smoothed = OmniAL(OmniALConfig(**SMALL), BuildContext((32, 32), None)).anomaly_map(logits)
    assert smoothed.shape == (2, 32, 32) and float(smoothed.std()) < float((1 - F.softmax(logits, 1)[:, 0]).std())


def test_training_step_reports_each_loss_and_backpropagates():
    torch.manual_seed(0)
    model = OmniAL(OmniALConfig(**SMALL), BuildContext((32, 32), None))
    images = torch.rand(2, 3, 32, 32)
    batch = Batch(
        images=images,
        targets={
            "clean_image": torch.rand(2, 3, 32, 32),
            "jnd": torch.rand(2, 32, 32),
            "levels": torch.randint(0, 4, (2, 32, 32)).float(),
        },
    )
    out = model.training_step(batch)
    assert set(out) == {"loss", "image", "jnd", "focal"}
    assert torch.allclose(out["loss"], out["image"] + out["jnd"] + out["focal"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    prediction = model.predict(Batch(images=images))
    assert prediction.anomaly_map.shape == (2, 32, 32) and "bottleneck" in prediction.embeddings


def test_a_synthesizer_without_its_targets_is_a_clear_error():
    """Another synthesizer (one that gives only a mask) is named at the first batch, not a KeyError."""
    model = OmniAL(OmniALConfig(**SMALL), BuildContext((32, 32), None))
    batch = Batch(
        images=torch.rand(2, 3, 32, 32),
        targets={"clean_image": torch.rand(2, 3, 32, 32), "mask": torch.zeros(2, 32, 32)},
    )
    with pytest.raises(ConfigError, match="targets jnd and levels.*gives clean_image, mask.*missing: jnd, levels"):
        model.training_step(batch)


def test_without_diffneck_the_localisation_net_takes_reconstruction_and_input():
    model = OmniAL(OmniALConfig(**SMALL, diffneck=False), BuildContext((32, 32), None))
    assert model.neck is None and model.localisation.encoder[0][0][0].in_channels == 6
    assert model.predict(Batch(images=torch.rand(1, 3, 32, 32))).anomaly_map.shape == (1, 32, 32)


def test_registered_with_its_presets_and_needs_a_synthesizer(tiny_dataset, runs_root):
    from uadp.config import build_config
    from uadp.engine.components import build_components
    from uadp.errors import ConfigError
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    registration = get_registry().get("reconstructors", "omnial")
    assert {k: v for k, v in registration.traits.items() if k != "advice"} == {
        "inputs": "images",
        "synthesizer": "required",
        "training": "epochs",
        "members": False,
        "leave_one_out": False,
        "preset": "omnial-cpu",
    }
    assert "small defects" in registration.traits["advice"]  # says what it is weak at
    cpu, paper = build_config("omnial-cpu"), build_config("omnial-paper")
    assert cpu.synthesizer.name == paper.synthesizer.name == "panel-jnd"
    assert paper.data.image_size == 256 and paper.train.batch_size == 20 and paper.train.lr == 1e-4
    assert paper.reconstructor.name == "omnial" and paper.train.lr_steps == [560, 630] and paper.train.lr_gamma == 0.2
    config = quick_config(tiny_dataset, runs_root, reconstructor={"name": "omnial", **SMALL})
    with pytest.raises(ConfigError, match="needs one"):
        build_components(config, get_registry())


@pytest.mark.slow
def test_omnial_learns_on_generated_data(tiny_dataset, runs_root):
    """One model for four generated classes, trained only on panel-JND anomalies: image AUROC >= 0.9."""
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    config = quick_config(
        tiny_dataset,
        runs_root,
        reconstructor={"name": "omnial", **SMALL},
        synthesizer={"name": "panel-jnd"},
        data={"image_size": 64, "workers": 0},
        train={"epochs": 20, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1, "weight_decay": 0.0, "grad_clip": None},
        # every training image trains (none kept apart for thresholds): the bar was measured so
        eval={
            "overlays_per_class": 0,
            "image_score": {"name": "max_avgpool", "kernel": 5},
            "calibration_fraction": 0.0,
        },
    )
    result = train_and_evaluate(config, get_registry(), log=lambda _: None)
    assert any("feature cache off" in note for note in result.notes)
    # measured (AMD EPYC, 2 threads): mean image AUROC 0.958 (this seed, 0), 0.938 and 0.990 with seeds 1
    # and 2 (30 epochs: 0.927 to 1.000); chance is 0.5
    assert result.report.mean["image_auroc"] >= 0.9, result.report.mean


@pytest.mark.slow
def test_uadp_run_reconstructor_omnial_end_to_end(tiny_dataset, tmp_path, monkeypatch, capsys):
    """`uadp run --reconstructor omnial` starts from its preset, brings panel-jnd, reports every metric."""
    import json

    from uadp.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = [f"reconstructor.{k}={v}" for k, v in SMALL.items()] + ["data.workers=0", "eval.overlays_per_class=1"]
    argv = [
        "run",
        "--data",
        str(tiny_dataset),
        "--reconstructor",
        "omnial",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--output-json",
        "summary.json",
    ]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "starting from its preset omnial-cpu" in captured.err
    assert "feature cache off: the reconstructor takes raw images" in captured.out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"pixel_ap", "pixel_dsc", "image_auroc"} <= set(summary["mean"])
    assert all(0 <= v <= 1 for v in summary["pooled"].values())
    assert list((tmp_path / "uadp-runs").rglob("synthesis.png"))

    # an inference-only option (the map smoothing) re-scores the trained model without retraining...
    run_id = summary["mlflow_run_id"]
    rescored = ["run", "--from-run", run_id, "--set", "data.workers=0", "--output-json", "rescored.json"]
    assert main(rescored + ["--set", "reconstructor.map_smoothing=none"]) == 0
    again = json.loads((tmp_path / "rescored.json").read_text())
    assert again["timing"]["train_s"] == 0
    assert again["mean"]["pixel_ap"] != summary["mean"]["pixel_ap"]  # 3x3 mean vs no smoothing
    capsys.readouterr()
    # ...an option that defines the model does not
    assert main(rescored + ["--set", "reconstructor.rec_width=4"]) == 2
    assert "reconstructor.rec_width" in capsys.readouterr().err
    # a bundle saved before an option existed still serves --from-run: the option takes its default
    state = torch.load(tmp_path / "uadp-runs" / "checkpoints" / run_id / "model.pt", weights_only=False)
    del state["config"]["reconstructor"]["rec_skips"], state["config"]["synthesizer"]["jnd_model"]
    torch.save(state, tmp_path / "older.pt")
    assert main(["run", "--from-run", str(tmp_path / "older.pt"), "--set", "data.workers=0"]) == 0, (
        capsys.readouterr().err
    )


def test_uadp_show_marks_the_inference_only_options(capsys):
    from uadp.cli import main

    assert main(["show", "omnial"]) == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines() if ":" in line}
    assert "[inference only" in lines["map_sigma"] and "[inference only" in lines["map_smoothing"]
    assert "[inference only" not in lines["rec_width"]
