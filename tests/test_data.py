"""MedMNIST loading without the network, the papers' sampling, and the synthetic stand-ins."""

import dataclasses
import hashlib
import http.client
import io
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

from helpers import data
from helpers.data import (
    DataUnavailableError,
    MedDataset,
    cap,
    class_balanced,
    get_info,
    load,
    load_for_scale,
    make_synthetic,
    oversample,
)
from helpers.scales import get_preset

SPLIT_SIZES = {"train": 30, "val": 12, "test": 18}


# --------------------------------------------------------------------------- helpers


def write_fake_npz(folder, name="pneumonia", sizes=SPLIT_SIZES, seed=0, skip_split=None):
    """A small MedMNIST-like npz (uint8 images, labels as MedMNIST stores them); returns its
    path."""
    info = get_info(name)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in sizes.items():
        if split == skip_split:
            continue
        shape = (count, 28, 28) if info.channels == 1 else (count, 28, 28, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if info.multilabel:
            arrays[f"{split}_labels"] = rng.integers(
                0, 2, size=(count, info.n_classes), dtype=np.uint8
            )
        else:
            labels = np.arange(count) % info.n_classes
            arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / info.filename(28)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def offline(monkeypatch):
    """Every urlopen fails as it does without a network; returns the list of URLs tried."""
    tried = []

    def fail(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return tried


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager with headers."""

    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


@pytest.fixture
def serve(monkeypatch):
    """serve(payload): urlopen returns ``payload``; returns the list of URLs requested."""
    requested = []

    def install(payload: bytes):
        def urlopen(url, *args, **kwargs):
            requested.append(url)
            return FakeResponse(payload)

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)
        return requested

    return install


def toy_dataset(labels, name="oct"):
    """A dataset whose image i is the constant i: sampled images can be traced to their origin."""
    labels = np.asarray(labels, dtype=np.int64)
    images = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
    return MedDataset(get_info(name), "train", images, labels)


def origins(dataset):
    return dataset.images.reshape(-1).astype(int)


# --------------------------------------------------------------------------- get_info


@pytest.mark.parametrize(
    "alias, key",
    [
        ("pneumonia", "pneumonia"),
        ("PneumoniaMNIST", "pneumonia"),
        ("chest_xray", "pneumonia"),
        ("octmnist", "oct"),
        ("OCT", "oct"),
        ("dermamnist", "derma"),
        ("skin", "derma"),
        ("chestmnist", "chest"),
        ("chest", "chest"),
    ],
)
def test_get_info_resolves_aliases(alias, key):
    assert get_info(alias).key == key


def test_get_info_unknown_name_names_dataset():
    with pytest.raises(ValueError, match="dataset='bloodmnist'") as error:
        get_info("bloodmnist")
    assert "pneumonia" in str(error.value)


def test_normal_and_disease_classes():
    pneumonia, oct_, derma, chest = (get_info(n) for n in ("pneumonia", "oct", "derma", "chest"))
    assert pneumonia.normal_classes == (0,) and pneumonia.disease_classes == (1,)
    assert pneumonia.task == "binary-class" and pneumonia.n_classes == 2
    assert oct_.normal_classes == (3,) and oct_.short_names[3] == "NM"
    assert oct_.disease_classes == (0, 1, 2)
    # Tsai et al. 2023: benign keratosis, dermatofibroma and melanocytic nevi are "normal".
    assert derma.normal_classes == (2, 3, 5)
    assert [derma.short_names[c] for c in derma.normal_classes] == ["BKL", "DF", "NV"]
    assert derma.disease_classes == (0, 1, 4, 6) and derma.channels == 3
    assert chest.multilabel and chest.n_classes == 14 and chest.normal_classes == ()
    assert not any(get_info(n).multilabel for n in ("pneumonia", "oct", "derma"))


def test_filenames_and_urls():
    oct_ = get_info("oct")
    assert oct_.filename(28) == "octmnist.npz" and oct_.filename(64) == "octmnist_64.npz"
    assert oct_.url(28) == "https://zenodo.org/records/10519652/files/octmnist.npz?download=1"
    for info in data.DATASETS.values():
        assert set(info.md5) == set(data.SIZES)
        assert all(len(md5) == 32 for md5 in info.md5.values())


# ------------------------------------------------------------------------- load: arguments, offline


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"split": "training"}, "split="),
        ({"split": "valid"}, "split="),
        ({"size": 32}, "size="),
        ({"size": "28"}, "size="),
        ({"source": "web"}, "source="),
    ],
)
def test_load_rejects_bad_arguments_naming_them(kwargs, parameter, offline):
    with pytest.raises(ValueError, match=parameter):
        load("pneumonia", **kwargs)
    assert offline == []  # rejected before any download attempt


def test_offline_real_source_says_what_to_download_and_where(offline, isolated_course_cache):
    with pytest.raises(DataUnavailableError) as error:
        load("oct", "train", 28, source="real")
    message = str(error.value)
    assert "octmnist.npz" in message
    assert "https://zenodo.org/records/10519652/files/octmnist.npz" in message
    assert str(isolated_course_cache / "medmnist") in message
    assert "MEDMNIST_DIR" in message
    assert offline == [get_info("oct").url(28)]
    assert not list((isolated_course_cache / "medmnist").iterdir())  # no .part left behind


def test_offline_auto_with_allow_synthetic_returns_loud_synthetic_data(offline, capsys):
    dataset = load("oct", "test", 28, source="auto", allow_synthetic=True, synthetic_count=40)
    assert dataset.synthetic and dataset.kind == "SYNTHETIC"
    assert dataset.images.shape == (40, 28, 28, 1)
    assert any("synthetic stand-in" in note for note in dataset.notes)
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "NOT medical results" in out
    assert "download failed" in out


def test_offline_auto_without_allow_synthetic_raises(offline):
    with pytest.raises(DataUnavailableError, match="octmnist.npz"):
        load("oct", "test", 28, source="auto", allow_synthetic=False)


def test_download_false_does_not_touch_the_network(offline):
    with pytest.raises(DataUnavailableError, match="download=False"):
        load("pneumonia", "test", source="real", download=False)
    assert offline == []


def test_requested_synthetic_is_quiet_when_not_verbose(offline, capsys):
    dataset = load("pneumonia", "val", source="synthetic", synthetic_count=10, verbose=False)
    assert dataset.synthetic and len(dataset) == 10
    assert capsys.readouterr().out == "" and offline == []


# --------------------------------------------------------------------------- load: local files


def test_local_npz_loads_as_float_images_and_int_labels(tmp_path, offline):
    path = write_fake_npz(tmp_path / "mine")
    with np.load(path) as raw:
        stored = raw["val_images"]
    with pytest.warns(UserWarning, match="MD5"):
        val = load("pneumonia", "val", 28, source="real", root=tmp_path / "mine")
    assert not val.synthetic and val.source == str(path)
    assert val.images.dtype == np.float32 and val.images.shape == (12, 28, 28, 1)
    assert 0.0 <= val.images.min() and val.images.max() <= 1.0
    np.testing.assert_allclose(val.images[..., 0] * 255, stored, atol=1e-4)
    assert val.labels.dtype == np.int64 and val.labels.shape == (12,)
    np.testing.assert_array_equal(val.labels, np.arange(12) % 2)
    np.testing.assert_array_equal(val.class_counts(), [6, 6])
    assert offline == []


def test_local_rgb_npz(tmp_path):
    write_fake_npz(tmp_path, "derma")
    with pytest.warns(UserWarning, match="MD5"):
        test = load("derma", "test", root=tmp_path)
    assert test.images.shape == (18, 28, 28, 3) and test.images.dtype == np.float32
    assert test.labels.shape == (18,) and set(test.labels) == set(range(7))


def test_local_multilabel_npz(tmp_path):
    path = write_fake_npz(tmp_path, "chest")
    with pytest.warns(UserWarning, match="MD5"):
        train = load("chest", "train", root=tmp_path)
    assert train.images.shape == (30, 28, 28, 1)
    assert train.labels.shape == (30, 14) and train.labels.dtype == np.uint8
    with np.load(path) as raw:
        np.testing.assert_array_equal(train.labels, raw["train_labels"])
    np.testing.assert_array_equal(train.class_counts(), train.labels.sum(axis=0))


def test_medmnist_dir_is_searched(tmp_path, monkeypatch):
    write_fake_npz(tmp_path / "b")
    monkeypatch.setenv("MEDMNIST_DIR", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    with pytest.warns(UserWarning, match="MD5"):
        test = load("pneumonia", "test", source="real")
    assert test.source == str(tmp_path / "b" / "pneumoniamnist.npz") and len(test) == 18


def test_root_comes_before_medmnist_dir(tmp_path, monkeypatch):
    write_fake_npz(tmp_path / "root", sizes={"train": 5, "val": 5, "test": 7})
    write_fake_npz(tmp_path / "env")
    monkeypatch.setenv("MEDMNIST_DIR", str(tmp_path / "env"))
    with pytest.warns(UserWarning, match="MD5"):
        assert len(load("pneumonia", "test", root=tmp_path / "root")) == 7


def test_corrupt_npz_names_the_file_and_its_url(tmp_path, offline):
    path = tmp_path / "pneumoniamnist_64.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.warns(UserWarning, match="MD5"), pytest.raises(ValueError) as error:
        load("pneumonia", size=64, root=tmp_path, allow_synthetic=True)
    message = str(error.value)
    assert "not a readable npz" in message and f"Delete {path} " in message
    assert get_info("pneumonia").url(64) in message
    assert path.is_file() and offline == []


def test_npz_without_the_split_is_rejected(tmp_path):
    path = write_fake_npz(tmp_path, skip_split="test")
    with (
        pytest.warns(UserWarning, match="MD5"),
        pytest.raises(ValueError, match="test_images") as error,
    ):
        load("pneumonia", "test", root=tmp_path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "name, shape, labels",
    [
        ("pneumonia", (6, 28, 28, 3), (6, 1)),  # RGB images in a greyscale dataset's file
        ("derma", (6, 28, 28), (6, 1)),  # greyscale images in a colour dataset's file
        ("pneumonia", (6, 64, 64), (6, 1)),  # 64 px images in the 28 px file
        ("chest", (6, 28, 28), (6, 1)),  # one label per image for a 14-finding dataset
        ("oct", (6, 28, 28), (5, 1)),  # fewer labels than images
    ],
)
def test_npz_whose_arrays_do_not_fit_the_dataset_is_rejected(tmp_path, name, shape, labels):
    info = get_info(name)
    arrays = {f"{split}_images": np.zeros(shape, np.uint8) for split in ("train", "val", "test")}
    arrays.update(
        {f"{split}_labels": np.zeros(labels, np.uint8) for split in ("train", "val", "test")}
    )
    path = tmp_path / info.filename(28)
    np.savez(path, **arrays)
    with pytest.warns(UserWarning, match="MD5"), pytest.raises(ValueError) as error:
        load(name, "test", 28, source="real", root=tmp_path)
    message = str(error.value)
    assert str(path) in message and str(shape) in message and "official file" in message
    assert f"{info.channels})" in message


@pytest.fixture
def no_download(monkeypatch):
    """data.download fails the test if called."""

    def download(*args, **kwargs):
        raise AssertionError("downloaded although a file was in the cache")

    monkeypatch.setattr(data, "download", download)


def test_readers_copy_in_the_cache_is_kept_used_and_warned_about(
    isolated_course_cache, no_download
):
    # a re-packaged copy: not the official MD5
    cached = write_fake_npz(isolated_course_cache / "medmnist")
    before = cached.read_bytes()
    with pytest.warns(UserWarning, match=r"MD5 differs.*using it anyway") as caught:
        train = load("pneumonia", "train", source="real")
    assert str(cached) in str(caught[0].message)
    assert (
        not train.synthetic and train.source == str(cached) and len(train) == SPLIT_SIZES["train"]
    )
    assert cached.read_bytes() == before  # kept as it was


def test_corrupt_file_in_the_cache_is_kept_and_named(isolated_course_cache, no_download):
    cached = isolated_course_cache / "medmnist" / "pneumoniamnist.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.warns(UserWarning, match="MD5"), pytest.raises(ValueError) as error:
        load("pneumonia", "train", source="real")
    assert f"Delete {cached} " in str(error.value) and get_info("pneumonia").url(28) in str(
        error.value
    )
    assert cached.read_bytes() == b"half a download"  # the reader deletes it, not the course


# --------------------------------------------------------------------------- download


def _with_md5(name, payload):
    info = get_info(name)
    return dataclasses.replace(info, md5={**info.md5, 28: hashlib.md5(payload).hexdigest()})


def test_download_verifies_md5_and_lands_in_the_cache(tmp_path, serve, isolated_course_cache):
    payload = write_fake_npz(tmp_path / "upstream").read_bytes()
    requested = serve(payload)
    info = _with_md5("pneumonia", payload)
    path = data.download(info, 28)
    assert path == isolated_course_cache / "medmnist" / "pneumoniamnist.npz"
    assert path.read_bytes() == payload
    assert requested == [info.url(28)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["pneumoniamnist.npz"]


def test_load_downloads_a_missing_file_once_then_uses_the_cache(
    tmp_path, serve, monkeypatch, recwarn
):
    payload = write_fake_npz(tmp_path / "upstream").read_bytes()
    requested = serve(payload)
    monkeypatch.setitem(data.DATASETS, "pneumonia", _with_md5("pneumonia", payload))
    train = load("pneumonia", "train", source="real")
    test = load("pneumonia", "test", source="real")
    assert (len(train), len(test)) == (30, 18) and not train.synthetic
    assert len(requested) == 1  # the second split came from the cache
    assert not [w for w in recwarn if "MD5" in str(w.message)]  # the official file: no warning


class BrokenResponse(FakeResponse):
    """A response whose connection breaks after the first block."""

    def read(self, *args):
        if self.tell():
            raise http.client.IncompleteRead(b"", 1000)
        return super().read(*args)


def test_broken_connection_gives_the_offline_message_and_leaves_nothing_behind(
    monkeypatch, isolated_course_cache
):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: BrokenResponse(b"x" * 100))
    with pytest.raises(DataUnavailableError, match="IncompleteRead") as error:
        data.download(get_info("pneumonia"), 28)
    assert get_info("pneumonia").url(28) in str(error.value)
    assert list((isolated_course_cache / "medmnist").iterdir()) == []


def test_download_with_wrong_md5_leaves_nothing_behind(tmp_path, serve, isolated_course_cache):
    serve(write_fake_npz(tmp_path / "upstream").read_bytes())
    with pytest.raises(DataUnavailableError, match="MD5") as error:
        data.download(get_info("pneumonia"), 28)
    assert "pneumoniamnist.npz" in str(error.value)
    assert list((isolated_course_cache / "medmnist").iterdir()) == []


# --------------------------------------------------------------------------- sampling

LABELS = [0] * 30 + [1] * 100 + [2] * 5 + [3] * 45


def test_class_balanced_takes_min_of_per_class_and_available_without_duplicates():
    dataset = toy_dataset(LABELS)
    sample = class_balanced(dataset, 20, seed=1)
    np.testing.assert_array_equal(sample.class_counts(), [20, 20, 5, 20])
    ids = origins(sample)
    assert len(set(ids)) == len(ids) == 65
    np.testing.assert_array_equal(sample.labels, dataset.labels[ids])  # images keep their labels
    assert not np.all(np.diff(sample.labels) >= 0)  # shuffled, not class by class
    np.testing.assert_array_equal(class_balanced(dataset, 20, seed=1).images, sample.images)


def test_cap_keeps_proportions_and_never_exceeds_the_cap():
    dataset = toy_dataset(LABELS)  # 180 images: 30/100/5/45
    for limit in (50, 90, 179):
        sample = cap(dataset, limit, seed=0)
        ids = origins(sample)
        assert len(sample) <= limit and len(set(ids)) == len(ids)
        expected = np.array([30, 100, 5, 45]) * limit / 180
        assert np.all(np.abs(sample.class_counts() - expected) <= 1), (limit, sample.class_counts())
        np.testing.assert_array_equal(sample.labels, dataset.labels[ids])
    assert cap(dataset, None) is dataset and cap(dataset, 500) is dataset


def test_cap_on_multilabel_data():
    info = get_info("chest")
    labels = (np.arange(100)[:, None] % 3 == np.arange(14)[None] % 3).astype(np.uint8)
    dataset = MedDataset(
        info, "train", np.arange(100, dtype=np.float32).reshape(-1, 1, 1, 1), labels
    )
    sample = cap(dataset, 40, seed=0)
    ids = origins(sample)
    assert len(sample) == 40 and len(set(ids)) == 40
    np.testing.assert_array_equal(sample.labels, labels[ids])


def test_oversample_equalises_counts_by_repeating_existing_images():
    dataset = toy_dataset(LABELS)
    sample = oversample(dataset, seed=0)
    np.testing.assert_array_equal(sample.class_counts(), [100, 100, 100, 100])
    ids = origins(sample)
    assert set(ids) == set(range(180))  # every original image kept
    np.testing.assert_array_equal(sample.labels, dataset.labels[ids])
    repeats = np.bincount(ids, minlength=180)
    assert np.all(repeats[30:130] == 1)  # the largest class is not repeated
    assert repeats[130:135].sum() == 100 and repeats[130:135].min() >= 1  # 5 images -> 100


def test_oversample_marks_its_copies_and_draws_come_from_the_split_as_stored():
    dataset = toy_dataset(LABELS)
    sample = oversample(dataset, seed=0)
    ids = origins(sample)
    assert sample.duplicate.sum() == len(sample) - 180
    originals = ids[sample.distinct()]
    assert sorted(originals) == list(range(180))  # every stored image exactly once
    for seed in range(3):
        images, index = data.draw_distinct(sample, 150, np.random.default_rng(seed))
        assert len(set(ids[index])) == 150 and not sample.duplicate[index].any()
        np.testing.assert_array_equal(images, sample.images[index])
    images, index = data.draw_distinct(sample, 10_000, np.random.default_rng(0))
    assert len(index) == 180  # at most the distinct images
    plain = toy_dataset(LABELS)
    assert (
        plain.duplicate is None
        and len(data.draw_distinct(plain, 500, np.random.default_rng(0))[1]) == 180
    )


def test_load_for_scale_keeps_the_oversampling_marks_through_the_caps():
    splits = load_for_scale("derma", get_preset("smoke"), seed=0, source="synthetic", verbose=False)
    train = splits["train"]
    assert train.duplicate is not None and train.duplicate.any() and (~train.duplicate).sum() >= 100
    distinct = train.images[train.distinct()].reshape(len(train.distinct()), -1)
    assert len(np.unique(distinct, axis=0)) == len(distinct)  # no image twice
    assert splits["test"].duplicate is None


def test_multilabel_training_set_has_no_image_without_a_finding_as_paper_004():
    smoke = get_preset("smoke")
    splits = load_for_scale("chest", smoke, seed=0, source="synthetic", verbose=False)
    assert splits["train"].labels.any(axis=1).all()
    assert len(splits["train"]) == smoke.max_train  # still the full budget
    assert not splits["test"].labels.any(axis=1).all()  # the test set keeps its normals


def test_oversample_skips_absent_classes():
    sample = oversample(toy_dataset([0] * 3 + [1] * 7), seed=0)
    np.testing.assert_array_equal(sample.class_counts(), [7, 7, 0, 0])


@pytest.mark.parametrize("sampler", [lambda d: class_balanced(d, 5), oversample])
def test_single_label_samplers_reject_multilabel_data(sampler):
    dataset = load("chest", "train", source="synthetic", synthetic_count=30, verbose=False)
    with pytest.raises(ValueError, match="multi-label"):
        sampler(dataset)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_load_for_scale_balances_pneumonia_as_the_papers(seed):
    smoke = get_preset("smoke")  # 400 / 150 per class (paper: 900 / 270)
    splits = load_for_scale("pneumonia", smoke, seed=seed, source="synthetic", verbose=False)
    assert set(splits) == {"train", "val", "test"}
    np.testing.assert_array_equal(splits["train"].class_counts(), [400, 400])
    np.testing.assert_array_equal(splits["test"].class_counts(), [150, 150])
    assert len(splits["val"]) <= smoke.max_test
    assert all(s.synthetic and s.images.shape[1:] == (28, 28, 1) for s in splits.values())
    ids = [img.tobytes() for img in splits["train"].images]
    assert len(set(ids)) == len(ids)  # balanced by subsampling, not by repetition


@pytest.mark.parametrize("seed", [0, 3])
def test_load_for_scale_balances_oct(seed):
    splits = load_for_scale(
        "oct", get_preset("smoke"), seed=seed, source="synthetic", verbose=False
    )
    np.testing.assert_array_equal(splits["train"].class_counts(), [400] * 4)
    np.testing.assert_array_equal(splits["test"].class_counts(), [150] * 4)


def test_load_for_scale_oversamples_derma_within_max_train():
    smoke = get_preset("smoke")
    splits = load_for_scale("derma", smoke, seed=0, source="synthetic", verbose=False)
    counts = splits["train"].class_counts()
    assert len(splits["train"]) <= smoke.max_train
    assert counts.max() - counts.min() <= 2 and counts.min() > 0  # balanced
    test_counts = splits["test"].class_counts()
    # test stays imbalanced
    assert test_counts[5] > 5 * test_counts[3] and len(splits["test"]) <= smoke.max_test


def test_load_for_scale_accepts_a_scale_name():
    by_name = load_for_scale("oct", "smoke", seed=1, source="synthetic", verbose=False)
    by_preset = load_for_scale(
        "oct", get_preset("smoke"), seed=1, source="synthetic", verbose=False
    )
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(by_name[split].labels, by_preset[split].labels)
        np.testing.assert_array_equal(by_name[split].images, by_preset[split].images)


@pytest.mark.parametrize("preset", ["huge", None, 28, {"image_size": 28}])
def test_load_for_scale_rejects_what_is_not_a_preset(preset, offline):
    with pytest.raises(ValueError, match="preset=") as error:
        load_for_scale("pneumonia", preset, source="synthetic", verbose=False)
    assert "smoke" in str(error.value) and offline == []


def test_load_for_scale_keeps_one_stored_copy_of_the_sampled_images(tmp_path, monkeypatch, recwarn):
    write_fake_npz(tmp_path, "oct", sizes={"train": 400, "val": 100, "test": 200})
    preset = get_preset("smoke", train_per_class=10, test_per_class=5, max_test=30)
    converted = []
    to_unit_float = data.to_unit_float

    def spy(images):
        converted.append(len(images))
        return to_unit_float(images)

    monkeypatch.setattr(data, "to_unit_float", spy)
    splits = load_for_scale("oct", preset, seed=4, root=tmp_path, source="real", verbose=False)
    assert converted == []  # nothing becomes float32 until it is read
    for split, sample in splits.items():
        assert sample.stored.dtype == np.uint8 and len(sample.stored) == len(
            np.unique(sample.index)
        )
        assert sample.images.dtype == np.float32 and sample.images.max() <= 1.0
        full = load("oct", split, root=tmp_path)  # the same sample as from the whole split
        sampler = {
            "train": lambda d: data._sample_train(d, preset, 4),
            "val": lambda d: cap(d, preset.max_test, 5),
            "test": lambda d: data._sample_test(d, preset, 6),
        }[split]
        expected = sampler(full)
        np.testing.assert_array_equal(sample.images, expected.images)
        np.testing.assert_array_equal(sample.labels, expected.labels)


def test_load_for_scale_prints_one_banner_per_dataset(capsys):
    load_for_scale(
        "pneumonia",
        get_preset("smoke", max_test=50, test_per_class=20, train_per_class=20),
        source="synthetic",
    )
    assert capsys.readouterr().out.count("SYNTHETIC STAND-IN") == 1


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic():
    info = get_info("oct")
    a, b = (make_synthetic(info, "train", 28, seed=5, count=60) for _ in range(2))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_synthetic_seed_changes_images_not_class_patterns():
    info = get_info("pneumonia")
    a, b = (make_synthetic(info, "train", 28, seed=seed, count=1500) for seed in (0, 1))
    assert np.abs(a.images - b.images).mean() > 0.02  # different images
    contrasts = [
        (d.images[d.labels == 1].mean(0) - d.images[d.labels == 0].mean(0)).ravel() for d in (a, b)
    ]
    assert np.corrcoef(contrasts)[0, 1] > 0.9  # same class pattern for both seeds
    other = make_synthetic(get_info("oct"), "train", 28, seed=0, count=1500)
    oct_contrast = (
        other.images[other.labels == 1].mean(0) - other.images[other.labels == 0].mean(0)
    ).ravel()
    # but not the same for every dataset
    assert abs(np.corrcoef(contrasts[0], oct_contrast)[0, 1]) < 0.5


@pytest.mark.parametrize(
    "name, channels, size",
    [
        ("pneumonia", 1, 28),
        ("oct", 1, 28),
        ("derma", 3, 28),
        ("chest", 1, 28),
        ("derma", 3, 64),
    ],
)
def test_synthetic_shapes_dtypes_ranges(name, channels, size):
    info = get_info(name)
    d = make_synthetic(info, "val", size, count=50)
    assert d.synthetic and d.info is info and d.split == "val"
    assert d.images.shape == (50, size, size, channels) and d.images.dtype == np.float32
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0 and d.images.std() > 0.02
    if info.multilabel:
        assert d.labels.shape == (50, 14) and d.labels.dtype == np.uint8
        assert set(np.unique(d.labels)) <= {0, 1}
    else:
        assert d.labels.shape == (50,) and d.labels.dtype == np.int64
        assert set(d.labels) == set(range(info.n_classes))  # every class present


@pytest.mark.parametrize("name, split", [("pneumonia", "train"), ("oct", "val"), ("derma", "test")])
def test_synthetic_class_proportions_follow_the_real_split(name, split):
    d = make_synthetic(get_info(name), split, 28, count=3000)
    real = np.array(get_info(name).class_counts[split], dtype=float)
    np.testing.assert_allclose(d.class_counts() / 3000, real / real.sum(), atol=0.03)


def test_synthetic_default_count_and_minimum():
    info = get_info("pneumonia")
    assert len(make_synthetic(info, "test", 28)) == 624  # the official count when small
    with pytest.raises(ValueError, match="count"):
        make_synthetic(get_info("derma"), "train", 28, count=5)


def test_synthetic_multilabel_has_about_half_without_finding():
    d = make_synthetic(get_info("chest"), "train", 28, count=3000)
    no_finding = (d.labels.sum(axis=1) == 0).mean()
    assert 0.40 < no_finding < 0.54  # product of (1 - prevalence) = 0.467
    prevalence = d.labels.mean(axis=0)
    assert prevalence[3] == prevalence.max()  # infiltration is the commonest finding
    # findings are visible: images with a finding are brighter (opacities)
    assert d.images[d.labels.sum(1) > 0].mean() > d.images[d.labels.sum(1) == 0].mean()


@pytest.mark.parametrize("name", ["pneumonia", "oct"])
def test_synthetic_data_is_learnable(name):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    info = get_info(name)
    train = make_synthetic(info, "train", 28, seed=0, count=600)
    test = make_synthetic(info, "test", 28, seed=1, count=300)
    model = LogisticRegression(max_iter=300).fit(train.images.reshape(600, -1), train.labels)
    score = balanced_accuracy_score(test.labels, model.predict(test.images.reshape(300, -1)))
    assert score > 1.0 / info.n_classes + 0.3, score


def test_synthetic_pneumonia_classes_overlap_like_real_x_rays():
    """Faint class patterns make borderline cases: learnable, but not perfectly separable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    info = get_info("pneumonia")
    train = make_synthetic(info, "train", 28, seed=0, count=1000)
    test = make_synthetic(info, "test", 28, seed=1, count=1000)
    model = LogisticRegression(max_iter=500).fit(train.images.reshape(1000, -1), train.labels)
    score = balanced_accuracy_score(test.labels, model.predict(test.images.reshape(1000, -1)))
    assert 0.8 < score < 0.98, score


# --------------------------------------------------------------------------- real data


def test_real_pneumonia_test_split(real_medmnist_dir):
    if real_medmnist_dir is None:
        pytest.skip("no real pneumoniamnist.npz (set MEDMNIST_DIR)")
    with pytest.warns(UserWarning, match="MD5"):
        test = load("pneumonia", "test", 28, root=real_medmnist_dir)
    assert not test.synthetic
    assert test.images.shape == (624, 28, 28, 1) and test.images.dtype == np.float32
    np.testing.assert_array_equal(test.class_counts(), [234, 390])
    assert 0.0 <= test.images.min() and test.images.max() <= 1.0 and test.images.max() > 0.9


@pytest.mark.keep_medmnist_dir
def test_opting_in_keeps_medmnist_dir():
    from conftest import ORIGINAL_MEDMNIST_DIR

    assert os.environ.get("MEDMNIST_DIR") == ORIGINAL_MEDMNIST_DIR


def test_medmnist_dir_is_cleared_and_cache_is_per_test(isolated_course_cache, tmp_path):
    assert "MEDMNIST_DIR" not in os.environ
    assert os.environ["COURSE_CACHE_DIR"] == str(isolated_course_cache)
    assert isolated_course_cache.is_relative_to(tmp_path)
    assert data.search_folders()[-1] == isolated_course_cache / "medmnist"
