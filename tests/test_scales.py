"""Scale presets: one per scale, overrides, and what each scale promises."""

import dataclasses

import pytest

from helpers.scales import (
    PAPER_ARCHITECTURES,
    SCALES,
    TRAINING_FIELDS,
    Preset,
    as_preset,
    get_preset,
)


def test_every_scale_has_a_preset_of_that_name():
    assert SCALES == ("smoke", "cpu", "gpu", "paper")
    for scale in SCALES:
        preset = get_preset(scale)
        assert isinstance(preset, Preset)
        assert preset.name == scale
        assert preset.main_architecture in preset.architectures
        assert preset.epochs >= 1 and preset.batch_size >= 1
        assert scale in preset.describe()


def test_scale_names_are_case_insensitive():
    assert get_preset("SMOKE") == get_preset("smoke")


@pytest.mark.parametrize("scale", ["huge", "", None, 28])
def test_unknown_scale_names_SCALE(scale):
    with pytest.raises(ValueError, match="SCALE=") as error:
        get_preset(scale)
    assert "smoke" in str(error.value) and "paper" in str(error.value)


def test_overrides_change_only_the_named_fields():
    base = get_preset("smoke")
    preset = get_preset("smoke", epochs=2, max_train=300)
    assert (preset.epochs, preset.max_train) == (2, 300)
    assert dataclasses.replace(preset, epochs=base.epochs, max_train=base.max_train) == base
    assert get_preset("smoke") == base and base.epochs == 6  # the stored preset is untouched


def test_unknown_override_field_is_rejected():
    with pytest.raises(ValueError, match="epoch"):
        get_preset("smoke", epoch=3)


def test_smoke_is_small():
    smoke = get_preset("smoke")
    assert smoke.image_size == 28
    assert smoke.architectures == ("small_cnn",) and smoke.main_architecture == "small_cnn"
    assert smoke.weights is None and smoke.offline_fallback
    assert smoke.epochs <= 10 and smoke.max_train <= 2000 and smoke.max_test <= 1000


def test_cpu_may_fall_back_offline():
    cpu = get_preset("cpu")
    assert cpu.image_size == 28 and cpu.weights == "imagenet" and cpu.offline_fallback


def test_gpu_uses_64_to_128_px_and_imagenet_weights():
    gpu = get_preset("gpu")
    assert gpu.image_size == 64 and gpu.backbone_input == 128
    assert 64 <= gpu.image_size <= gpu.backbone_input <= 128
    assert gpu.weights == "imagenet" and not gpu.offline_fallback
    assert set(gpu.architectures) <= set(PAPER_ARCHITECTURES)


def test_paper_follows_paper_000():
    paper = get_preset("paper")
    assert paper.architectures == (
        "inception_v3",
        "vgg16",
        "vgg19",
        "resnet50",
        "inception_resnet_v2",
        "densenet121",
        "densenet169",
    )
    assert paper.main_architecture == "inception_v3"
    assert paper.epochs == 50 and paper.batch_size == 32
    assert paper.image_size == 224 and paper.backbone_input == 299
    assert paper.weights == "imagenet" and not paper.offline_fallback
    assert paper.uap_i_max == 15 and paper.retrain_rounds == 5 and paper.retrain_epochs == 5
    # no caps: the papers' own subsets
    assert paper.max_train is None and paper.train_per_class is None
    # paper 000, Methods: eps = 0.0024 on images scaled (X - 128) / 128, i.e. 0.0012 on [0, 1]
    assert paper.uap_eps == pytest.approx(0.0012, abs=1e-5)
    assert paper.uap_mode == "faithful"  # the paper's algorithm, not the variant
    assert paper.pixel_victim == "resnet50"  # paper 004 attacks ResNet50


def test_uap_mode_and_pixel_victim_per_scale():
    modes = {scale: get_preset(scale).uap_mode for scale in SCALES}
    assert modes == {"smoke": "faithful", "cpu": "faithful", "gpu": "batched", "paper": "faithful"}
    assert (
        get_preset("gpu").pixel_victim == "resnet50"
        and "resnet50" in get_preset("gpu").architectures
    )
    assert get_preset("smoke").pixel_victim == get_preset("smoke").main_architecture


def test_scales_grow_from_smoke_to_paper():
    presets = [get_preset(s) for s in SCALES]
    sizes = [p.image_size for p in presets]
    epochs = [p.epochs for p in presets]
    assert sizes == sorted(sizes) and epochs[0] < epochs[-1]


def test_as_preset_takes_presets_and_scale_names():
    custom = get_preset("cpu", epochs=3)
    assert as_preset(custom) is custom
    assert as_preset("gpu") == get_preset("gpu") and as_preset("Paper") == get_preset("paper")


@pytest.mark.parametrize("value", ["huge", None, 28, {"name": "smoke"}])
def test_as_preset_rejects_other_values_naming_the_parameter(value):
    with pytest.raises(ValueError, match="preset=") as error:
        as_preset(value)
    assert "'smoke'" in str(error.value) and "get_preset" in str(error.value)
    with pytest.raises(ValueError, match="scale="):
        as_preset(value, parameter="scale")


def test_model_tag_is_the_name_unless_a_training_field_is_overridden():
    for scale in SCALES:
        assert get_preset(scale).model_tag() == scale
    assert get_preset("smoke", uap_eps=0.1, zeta_grid=(0.5,), notes="x").model_tag() == "smoke"
    tags = {field: get_preset("smoke", **{field: 7}).model_tag() for field in TRAINING_FIELDS}
    assert len(set(tags.values())) == len(TRAINING_FIELDS)
    assert all(tag.startswith("smoke-") and len(tag) == len("smoke-") + 8 for tag in tags.values())
    assert get_preset("smoke", epochs=7).model_tag() == tags["epochs"]


@pytest.mark.parametrize("scale", ["gpu", "paper"])
def test_a_rehearsal_keeps_the_scales_shapes_and_paths_and_shrinks_only_the_budgets(scale):
    from dataclasses import fields

    from helpers.scales import REHEARSAL_BUDGETS

    stock, rehearsal = get_preset(scale), get_preset(scale, rehearsal=True)
    changed = {
        f.name for f in fields(stock) if getattr(stock, f.name) != getattr(rehearsal, f.name)
    }
    assert changed <= set(REHEARSAL_BUDGETS) | {"rehearsal", "zeta_grid"}
    assert (
        rehearsal.zeta_grid == stock.zeta_grid[:2]
        and rehearsal.uap_i_max == 1
        and rehearsal.epochs == 1
    )
    for kept in (
        "architectures",
        "image_size",
        "backbone_input",
        "weights",
        "uap_mode",
        "pixel_victim",
    ):
        assert getattr(rehearsal, kept) == getattr(stock, kept)
    assert rehearsal.label == f"{scale}-rehearsal" and stock.label == scale
    # never the cache entries of the real scale
    assert rehearsal.model_tag().startswith(f"{scale}-rehearsal-")
    assert "REHEARSAL" in rehearsal.describe() and "REHEARSAL" not in stock.describe()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_rehearsal_must_be_true_or_false(value):
    with pytest.raises(ValueError, match="REHEARSAL="):
        get_preset("gpu", rehearsal=value)
