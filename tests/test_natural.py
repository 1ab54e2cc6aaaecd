"""Natural images for UAPs without medical data: loading, sampling, composition, chunked UAPs."""

import numpy as np
import pytest
from PIL import Image
from toy_models import brightness_model, flat

from helpers import natural


@pytest.fixture
def photo_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(tmp_path / "sub" / "b.PNG")
    Image.fromarray(np.full((20, 50, 4), 255, np.uint8)).save(tmp_path / "c.png")  # RGBA
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


def test_load_folder_resizes_converts_and_skips_unreadable_files(photo_folder):
    rgb = natural.load_folder(photo_folder, 28, 3)
    grey = natural.load_folder(photo_folder, 28, 1)
    # broken.jpg and notes.txt skipped
    assert rgb.shape == (3, 28, 28, 3) and grey.shape == (3, 28, 28, 1)
    assert rgb.dtype == np.float32 and 0.0 <= rgb.min() and rgb.max() <= 1.0
    white = [i for i, image in enumerate(grey) if image.min() == 1.0]
    assert len(white) == 1  # the all-white RGBA photo


def test_load_folder_count_picks_a_seeded_subset(photo_folder):
    first = natural.load_folder(photo_folder, 16, 1, count=2, seed=3)
    again = natural.load_folder(photo_folder, 16, 1, count=2, seed=3)
    assert first.shape == (2, 16, 16, 1) and np.array_equal(first, again)


@pytest.mark.parametrize(
    "kwargs, parameter", [({"size": 4}, "size"), ({"channels": 2}, "channels")]
)
def test_bad_sizes_and_channels_are_rejected(photo_folder, kwargs, parameter):
    args = {"size": 28, "channels": 3, **kwargs}
    with pytest.raises(ValueError, match=parameter):
        natural.load_folder(photo_folder, args["size"], args["channels"])


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="folder=.*not a folder"):
        natural.load_folder(tmp_path / "nope", 28, 1)
    with pytest.raises(ValueError, match="holds no images"):
        natural.load_folder(tmp_path, 28, 1)


def test_sample_photos_are_seeded_crops_of_open_photographs():
    photos = natural.sample_photos(32, 3, count=12, seed=1)
    assert photos.shape == (12, 32, 32, 3) and photos.std() > 0.05
    assert np.array_equal(photos, natural.sample_photos(32, 3, count=12, seed=1))
    assert not np.array_equal(photos, natural.sample_photos(32, 3, count=12, seed=2))


def test_skimage_photos_are_distinct_and_not_medical():
    """Paper 001's attacker has no medical data: no histology, retina or microscopy samples; no
    photo twice."""
    medical = {
        "immunohistochemistry",
        "skin",
        "retina",
        "kidney",
        "cells3d",
        "cell",
        "human_mitosis",
        "protein_transport",
    }
    assert not medical & set(natural.SKIMAGE_PHOTOS)
    photos = {name: np.asarray(image) for name, image in natural.skimage_photos().items()}
    assert len(photos) >= 5
    names = list(photos)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = photos[a].shape == photos[b].shape and np.array_equal(photos[a], photos[b])
            assert not same, f"{a} and {b} are the same photo"


def test_natural_images_prefers_the_folder_from_the_environment(photo_folder, monkeypatch):
    monkeypatch.setenv(natural.ENV_NATURAL_DIR, str(photo_folder))
    images, source = natural.natural_images(28, 1, count=10)
    assert len(images) == 3 and str(photo_folder) in source
    monkeypatch.delenv(natural.ENV_NATURAL_DIR)
    images, source = natural.natural_images(28, 1, count=10)
    assert len(images) == 10 and "scikit-image" in source


def test_label_composition_gives_shares_per_class():
    shares = natural.label_composition([0, 2, 2, 2], ["a", "b", "c"])
    assert shares.to_dict() == {"a": 0.25, "b": 0.0, "c": 0.75}


def test_iter_folder_yields_chunks(photo_folder):
    # 4 image files, one unreadable
    chunks = list(natural.iter_folder(photo_folder, 16, 1, chunk=2))
    assert len(chunks) == 2 and sum(len(c) for c in chunks) == 3
    assert all(c.shape[1:] == (16, 16, 1) for c in chunks)


def test_uap_in_chunks_warm_starts_each_chunk_from_the_last():
    """Chunk 1 = brightness 0.45: one step of 0.1 flips it (rho = 0.1). Chunk 2 = 0.38: alone, a
    step reaches only 0.48 and nothing flips; from rho = 0.1 it reaches 0.58 and flips (rho = 0.2 ->
    xi = 0.15)."""
    model, evaluation = brightness_model(), flat(0.45, 0.38, 0.70, 0.10)
    settings = dict(xi=0.15, norm=np.inf, eps=0.1, eval_images=evaluation, progress=False)
    result, log = natural.uap_in_chunks(model, [flat(0.45), flat(0.38)], **settings)
    np.testing.assert_allclose(result.perturbation, 0.15, atol=1e-6)
    assert list(log["natural images used"]) == [1, 2]
    assert list(log["rate"]) == pytest.approx([0.25, 0.5])  # 0.45 fooled; then 0.38 too
    alone, _ = natural.uap_in_chunks(model, [flat(0.38)], **settings)
    assert np.all(alone.perturbation == 0)


def test_uap_in_chunks_splits_an_array_into_chunks():
    images = flat(*np.linspace(0.05, 0.3, 5))  # nothing flips: only the bookkeeping is tested
    result, log = natural.uap_in_chunks(
        brightness_model(),
        images,
        xi=0.1,
        norm=np.inf,
        eps=0.01,
        chunk=2,
        eval_images=images,
        progress=False,
    )
    assert list(log["natural images used"]) == [2, 4, 5] and list(log["rate"]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="chunk"):
        natural.uap_in_chunks(brightness_model(), images, xi=0.1, eval_images=images, chunk=0)


@pytest.mark.slow
def test_uap_in_chunks_on_the_smoke_model_beats_random(smoke_pneumonia_model):
    from helpers import uap

    splits, trained = smoke_pneumonia_model
    photos = natural.sample_photos(28, 1, count=60, seed=0)
    test = splits["test"].images[:100]
    xi = uap.xi_from_zeta(splits["train"].images[:100], 0.08, 2)
    result, log = natural.uap_in_chunks(
        trained.model, photos, xi=xi, eval_images=test, chunk=20, eps=0.01, progress=False
    )
    assert list(log["natural images used"]) == [20, 40, 60]
    assert np.linalg.norm(result.perturbation) <= xi + 1e-4
    control = uap.evaluate(trained.model, test, uap.random_perturbation(test.shape[1:], xi, 2))[
        "fooling_rate"
    ]
    assert log["rate"].iloc[-1] == pytest.approx(
        uap.evaluate(trained.model, test, result.perturbation)["fooling_rate"]
    )
    assert log["rate"].iloc[-1] > control + 0.05  # natural photos make a real UAP
    with pytest.raises(ValueError, match="chunk"):
        natural.uap_in_chunks(trained.model, photos, xi=xi, eval_images=test, chunk=0)


def test_without_a_folder_gpu_says_so_loudly_and_paper_refuses(monkeypatch, capsys):
    monkeypatch.delenv(natural.ENV_NATURAL_DIR, raising=False)
    images, source = natural.natural_images(16, 1, 4, scale="smoke")
    assert (
        images.shape == (4, 16, 16, 1)
        and "scikit-image" in source
        and "!!" not in capsys.readouterr().out
    )
    natural.natural_images(16, 1, 4, scale="gpu")
    banner = capsys.readouterr().out
    assert (
        "!! NATURAL IMAGES" in banner and natural.ENV_NATURAL_DIR in banner and "ImageNet" in banner
    )
    with pytest.raises(ValueError, match="scale 'paper'") as error:
        natural.natural_images(16, 1, 100_000, scale="paper")
    assert natural.ENV_NATURAL_DIR in str(error.value) and "Open Images" in str(error.value)
