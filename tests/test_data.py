"""Unit tests of cnnbook.data (defined in book/cifar10.md), on a tiny synthetic CIFAR-10.

Nothing here touches the network: downloads go through an injected pooch downloader (or a
patched ``pooch.retrieve``) that copies, truncates or fails locally.
"""
import hashlib
import io
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from cnnbook import data

# The synthetic copies are not the official CIFAR-10; the loader says so (tested below).
pytestmark = pytest.mark.filterwarnings("ignore:this CIFAR-10 copy is not the official:UserWarning")

N_PER_BATCH = 20  # 5 training batches -> 100 training images
N_TEST = 20


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No configured CIFAR-10 directory, and an empty cache of our own."""
    monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(cache))
    return cache


def known_image():
    """An image (32, 32, 3) with red = row index, green = column index, blue = 200."""
    rows, cols = np.mgrid[0:32, 0:32]
    return np.stack([rows, cols, np.full((32, 32), 200)], axis=-1).astype(np.uint8)


def to_rows(X):
    """(n, 32, 32, 3) images -> (n, 3072) rows in the official layout (R plane, G plane, B plane)."""
    return X.transpose(0, 3, 1, 2).reshape(len(X), 3072)


def write_batch(path, X, y, label="batch", protocol=2, **overrides):
    batch = {
        "batch_label": label,
        "labels": [int(v) for v in y],
        "data": to_rows(X),
        "filenames": [f"img_{i:05d}.png" for i in range(len(X))],
    }
    batch.update(overrides)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def make_cifar(parent, seed=0):
    """Write parent/cifar-10-batches-py; return it and the arrays a loader should return."""
    rng = np.random.default_rng(seed)
    folder = parent / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    X_train = rng.integers(0, 256, size=(5 * N_PER_BATCH, 32, 32, 3), dtype=np.uint8)
    X_train[0] = known_image()
    y_train = rng.integers(0, 10, size=5 * N_PER_BATCH)
    y_train[:10] = np.arange(10)  # every label occurs
    X_test = rng.integers(0, 256, size=(N_TEST, 32, 32, 3), dtype=np.uint8)
    y_test = np.arange(N_TEST) % 10
    for b, name in enumerate(data.TRAIN_BATCHES):
        part = slice(b * N_PER_BATCH, (b + 1) * N_PER_BATCH)
        write_batch(folder / name, X_train[part], y_train[part], label=f"training batch {b + 1} of 5")
    write_batch(folder / data.TEST_BATCH, X_test, y_test, label="testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": N_PER_BATCH, "label_names": list(data.CLASSES), "num_vis": 3072},
                    f, protocol=2)
    return folder, (X_train, y_train, X_test, y_test)


@pytest.fixture
def synthetic(tmp_path):
    folder, arrays = make_cifar(tmp_path / "src")
    return folder, arrays


def make_archive(folder, path):
    """A .tar.gz of ``folder`` (stored as cifar-10-batches-py/...); returns (path, md5)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=data.CIFAR10_FOLDER)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def copying(archive):
    """A pooch downloader that 'downloads' by copying a local file, counting its calls."""
    def downloader(url, output_file, pooch, check_only=False):
        downloader.calls += 1
        shutil.copyfile(archive, output_file)
    downloader.calls = 0
    return downloader


def truncating(archive):
    def downloader(url, output_file, pooch, check_only=False):
        blob = archive.read_bytes()
        with open(output_file, "wb") as f:
            f.write(blob[: len(blob) // 2])
    return downloader


def offline(url, output_file, pooch, check_only=False):
    import requests

    raise requests.exceptions.ConnectionError(f"Failed to resolve host for {url} (no network)")


def assert_equal_arrays(got, expected):
    for g, e in zip(got, expected):
        assert np.array_equal(g, e)


# ------------------------------------------------------------------ loading


def test_load_shapes_dtypes_and_values(synthetic):
    folder, expected = synthetic
    X_train, y_train, X_test, y_test = data.load_cifar10(root=folder)
    assert X_train.shape == (5 * N_PER_BATCH, 32, 32, 3) and X_train.dtype == np.uint8
    assert X_test.shape == (N_TEST, 32, 32, 3) and X_test.dtype == np.uint8
    assert y_train.shape == (5 * N_PER_BATCH,) and y_train.dtype == np.int64
    assert y_test.shape == (N_TEST,) and y_test.dtype == np.int64
    assert set(np.unique(y_train)) == set(range(10)) and y_test.min() >= 0 and y_test.max() <= 9
    assert X_train.flags["C_CONTIGUOUS"] and X_test.flags["C_CONTIGUOUS"]
    assert_equal_arrays((X_train, y_train, X_test, y_test), expected)


def test_pixel_layout_red_plane_first(synthetic):
    folder, _ = synthetic
    X_train = data.load_cifar10(root=folder)[0]
    rows, cols = np.mgrid[0:32, 0:32]
    assert np.array_equal(X_train[0, :, :, 0], rows)  # red plane = first 1024 numbers of the row
    assert np.array_equal(X_train[0, :, :, 1], cols)
    assert np.all(X_train[0, :, :, 2] == 200)
    X, y = data.load_batch(folder / "data_batch_1")
    assert X.shape == (N_PER_BATCH, 32, 32, 3) and np.array_equal(X[0], known_image())


def test_root_may_contain_the_folder_or_be_it(synthetic):
    folder, expected = synthetic
    assert data.find_cifar10(root=folder.parent) == folder
    assert data.find_cifar10(root=folder) == folder
    assert_equal_arrays(data.load_cifar10(root=str(folder.parent)), expected)
    assert_equal_arrays(data.load_cifar10(root=folder), expected)


def test_environment_variable(synthetic, monkeypatch, tmp_path):
    folder, expected = synthetic
    for value in (folder.parent, folder):
        monkeypatch.setenv(data.CIFAR10_ENV, str(value))
        assert data.find_cifar10() == folder
        assert_equal_arrays(data.load_cifar10(download=False), expected)
    # an explicit root wins over the environment variable
    other, other_expected = make_cifar(tmp_path / "other", seed=1)
    assert_equal_arrays(data.load_cifar10(root=other), other_expected)


def test_environment_variable_pointing_to_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(data.CIFAR10_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*CNNBOOK_CIFAR10_DIR"):
        data.load_cifar10()


def test_loads_from_cache_without_downloading(isolated_env, monkeypatch):
    _, expected = make_cifar(isolated_env)

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetch_cifar10 must not be called when the cache holds the data")

    monkeypatch.setattr(data, "fetch_cifar10", no_fetch)
    assert data.find_cifar10() == isolated_env / data.CIFAR10_FOLDER
    assert_equal_arrays(data.load_cifar10(), expected)


def test_missing_batch_file_is_named(synthetic):
    folder, _ = synthetic
    (folder / "data_batch_3").unlink()
    for root in (folder, folder.parent):
        with pytest.raises(FileNotFoundError) as info:
            data.load_cifar10(root=root)
        assert "data_batch_3" in str(info.value) and str(folder) in str(info.value)


def test_nonexistent_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_cifar10(root=tmp_path / "missing")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data": np.zeros((N_PER_BATCH, 3000), np.uint8)}, r"uint8 array of shape \(n, 3072\)"),
        ({"data": np.zeros((N_PER_BATCH, 3072), np.float32)}, "float32"),
        ({"labels": [10] * N_PER_BATCH}, r"0\.\.9"),
        ({"labels": [0] * (N_PER_BATCH - 1)}, "'labels'"),
        ({"labels": None}, "'labels'"),
    ],
)
def test_invalid_batch_contents_are_reported(synthetic, overrides, message):
    folder, (X_train, y_train, _, _) = synthetic
    path = folder / "data_batch_2"
    write_batch(path, X_train[:N_PER_BATCH], y_train[:N_PER_BATCH], **overrides)
    with pytest.raises(ValueError, match=message) as info:
        data.load_cifar10(root=folder)
    assert str(path) in str(info.value)


def test_batch_without_data_key(synthetic):
    folder, _ = synthetic
    path = folder / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="no 'data' entry") as info:
        data.load_batch(path)
    assert str(path) in str(info.value)


def test_truncated_batch_file(synthetic):
    folder, _ = synthetic
    path = folder / "data_batch_5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable CIFAR-10 batch") as info:
        data.load_cifar10(root=folder)
    assert str(path) in str(info.value)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unpickling_refuses_foreign_globals(tmp_path):
    path = tmp_path / "evil_batch"
    path.write_bytes(pickle.dumps({"data": _Payload(), "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load the global"):
        data.load_batch(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_of_any_pickle_protocol(tmp_path, protocol):
    X = np.random.default_rng(protocol).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "batch"
    write_batch(path, X, [1, 2, 3], protocol=protocol)
    X_loaded, y_loaded = data.load_batch(path)
    assert np.array_equal(X_loaded, X) and y_loaded.tolist() == [1, 2, 3]


# ----------------------------------------------------------- downloading


def test_download_false_without_data(isolated_env, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("download=False must not try to download")

    monkeypatch.setattr(data, "fetch_cifar10", no_fetch)
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_cifar10(download=False)
    message = str(info.value)
    assert "download=False" in message and "CNNBOOK_CIFAR10_DIR" in message and str(isolated_env) in message


def test_no_network_names_env_var_and_url(isolated_env, monkeypatch):
    """load_cifar10 with nothing configured downloads; a dead network gives a clear error."""
    pooch = pytest.importorskip("pooch")
    import requests

    def retrieve(url, *args, **kwargs):
        raise requests.exceptions.ConnectionError(f"Max retries exceeded with url: {url}")

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_cifar10()
    message = str(info.value)
    assert "CNNBOOK_CIFAR10_DIR" in message and data.CIFAR10_URL in message
    assert isinstance(info.value, RuntimeError)
    assert not (isolated_env / data.CIFAR10_FOLDER).exists()


def test_fetch_with_failing_downloader(isolated_env):
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.fetch_cifar10(isolated_env, downloader=offline)
    message = str(info.value)
    assert "CNNBOOK_CIFAR10_DIR" in message and data.CIFAR10_URL in message
    assert list(isolated_env.iterdir()) == []  # no partial archive, no temporary file


def test_fetch_extracts_and_loads(synthetic, isolated_env, tmp_path):
    folder, expected = synthetic
    archive, md5 = make_archive(folder, tmp_path / "cifar.tar.gz")
    download = copying(archive)
    path = data.fetch_cifar10(isolated_env, md5=md5, downloader=download)
    assert path == isolated_env / data.CIFAR10_FOLDER and download.calls == 1
    assert sorted(p.name for p in isolated_env.iterdir()) == [data.CIFAR10_FOLDER]  # archive removed
    assert_equal_arrays(data.load_cifar10(), expected)  # found in the cache ($CNNBOOK_DATA_DIR)
    # a second fetch finds the extracted data and downloads nothing
    assert data.fetch_cifar10(isolated_env, md5=md5, downloader=offline) == path


def test_corrupt_download_then_retry(synthetic, isolated_env, tmp_path):
    folder, expected = synthetic
    archive, md5 = make_archive(folder, tmp_path / "cifar.tar.gz")
    with pytest.raises(data.ChecksumError) as info:
        data.fetch_cifar10(isolated_env, md5=md5, downloader=truncating(archive))
    message = str(info.value)
    assert "md5" in message and "checksum" in message and data.CIFAR10_ARCHIVE in message
    assert isinstance(info.value, data.DatasetUnavailableError)
    assert list(isolated_env.iterdir()) == []  # nothing half-extracted, no temporary files
    path = data.fetch_cifar10(isolated_env, md5=md5, downloader=copying(archive))
    assert_equal_arrays(data.load_cifar10(root=path), expected)


def test_wrong_checksum_for_intact_file(synthetic, isolated_env, tmp_path):
    folder, _ = synthetic
    archive, _ = make_archive(folder, tmp_path / "cifar.tar.gz")
    with pytest.raises(data.ChecksumError, match=data.CIFAR10_MD5):
        data.fetch_cifar10(isolated_env, downloader=copying(archive))  # the official md5
    assert list(isolated_env.iterdir()) == []


def test_incomplete_archive_leaves_nothing(synthetic, isolated_env, tmp_path):
    folder, _ = synthetic
    (folder / "test_batch").unlink()
    archive, md5 = make_archive(folder, tmp_path / "cifar.tar.gz")
    with pytest.raises(data.DatasetUnavailableError, match="test_batch"):
        data.fetch_cifar10(isolated_env, md5=md5, downloader=copying(archive))
    leftovers = [p.name for p in isolated_env.iterdir()]
    assert data.CIFAR10_FOLDER not in leftovers
    assert not [name for name in leftovers if name.startswith(".cifar10-extract-")]


def test_unsafe_archive_is_refused(isolated_env, tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        blob = b"gotcha"
        member = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        member.size = len(blob)
        tar.addfile(member, io.BytesIO(blob))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(data.DatasetUnavailableError, match="unsafe member path"):
        data.fetch_cifar10(isolated_env, md5=md5, downloader=copying(archive))
    assert not (tmp_path / "escaped.txt").exists() and not (isolated_env.parent / "escaped.txt").exists()
    assert not (isolated_env / data.CIFAR10_FOLDER).exists()
    assert not [p for p in isolated_env.iterdir() if p.name.startswith(".cifar10-extract-")]


def test_fetch_rejects_url_pooch_cannot_download(isolated_env):
    with pytest.raises(ValueError, match="pooch cannot download"):
        data.fetch_cifar10(isolated_env, url="file:///tmp/cifar-10-python.tar.gz")


# ------------------------------------------------------------ preprocessing


def test_get_cifar10_data(synthetic):
    folder, (X_train, y_train, X_test, y_test) = synthetic
    d = data.get_cifar10_data(num_training=70, num_validation=20, num_test=15, root=folder)
    assert set(d) == {"X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "mean_image"}
    assert d["X_train"].shape == (70, 3, 32, 32) and d["X_val"].shape == (20, 3, 32, 32)
    assert d["X_test"].shape == (15, 3, 32, 32) and d["mean_image"].shape == (3, 32, 32)
    for key in ["X_train", "X_val", "X_test", "mean_image"]:
        assert d[key].dtype == np.float32 and d[key].flags["C_CONTIGUOUS"]
    for key in ["y_train", "y_val", "y_test"]:
        assert d[key].dtype == np.int64
    # the split: first 70 training images, the next 20, the first 15 test images
    assert np.array_equal(d["y_train"], y_train[:70]) and np.array_equal(d["y_val"], y_train[70:90])
    assert np.array_equal(d["y_test"], y_test[:15])
    # the mean of the training split only, subtracted from all three
    mean = X_train[:70].mean(axis=0).transpose(2, 0, 1)
    assert np.allclose(d["mean_image"], mean, atol=1e-4)
    assert np.abs(d["X_train"].mean(axis=0, dtype=np.float64)).max() < 1e-3
    for key, raw in [("X_train", X_train[:70]), ("X_val", X_train[70:90]), ("X_test", X_test[:15])]:
        assert np.allclose(d[key] + d["mean_image"], raw.transpose(0, 3, 1, 2), atol=1e-4)


def test_get_cifar10_data_options(synthetic):
    folder, (X_train, _, X_test, _) = synthetic
    d = data.get_cifar10_data(num_training=50, num_validation=10, num_test=5, subtract_mean=False,
                              dtype=np.float64, channels_first=False, root=folder)
    assert d["X_train"].shape == (50, 32, 32, 3) and d["X_train"].dtype == np.float64
    assert d["mean_image"].shape == (32, 32, 3)
    assert np.array_equal(d["X_val"], X_train[50:60].astype(np.float64))
    assert np.array_equal(d["X_test"], X_test[:5].astype(np.float64))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_training": 49500, "num_validation": 1000}, ["49500", "1000", "50000"]),
        ({"num_test": 20000}, ["20000", "10000"]),
        ({"num_training": 0}, ["num_training", "0"]),
        ({"num_validation": -5}, ["num_validation", "-5"]),
        ({"num_test": 2.5}, ["num_test", "2.5"]),
        ({"num_training": True}, ["num_training", "True"]),
        ({"dtype": np.int32}, ["dtype", "int32"]),
    ],
)
def test_get_cifar10_data_rejects_bad_arguments(kwargs, words, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("bad arguments must be rejected before loading")

    monkeypatch.setattr(data, "load_cifar10", no_load)
    with pytest.raises(ValueError) as info:
        data.get_cifar10_data(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_get_cifar10_data_more_than_the_copy_holds(synthetic):
    folder, _ = synthetic
    with pytest.raises(ValueError, match=r"90 \+ 20 = 110 exceeds the 100 training images"):
        data.get_cifar10_data(num_training=90, num_validation=20, num_test=5, root=folder)
    with pytest.raises(ValueError, match="exceeds the 20 test images"):
        data.get_cifar10_data(num_training=10, num_validation=10, num_test=30, root=folder)


# ------------------------------------------------------------------ which copy

def test_official_md5_table_is_the_published_one():
    # The per-file MD5s of cifar-10-batches-py published with the dataset (torchvision checks them).
    assert data.CIFAR10_FILE_MD5 == {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    }


def pretend_official(monkeypatch):
    """Make every file hash to its published MD5 (and forget cached fingerprints)."""
    real = data._file_digests
    monkeypatch.setattr(data, "_file_digests",
                        lambda path, *a: (data.CIFAR10_FILE_MD5[path.name], real(path)[1]))
    monkeypatch.setattr(data, "_FINGERPRINTS", {})


def test_official_copy_is_recognised(synthetic, monkeypatch):
    folder, _ = synthetic
    pretend_official(monkeypatch)
    assert data.cifar10_fingerprint(folder) == "official"


def test_official_needs_every_file(synthetic, monkeypatch):
    folder, _ = synthetic
    pretend_official(monkeypatch)
    (folder / "batches.meta").unlink()
    assert data.cifar10_fingerprint(folder).startswith("sha256:")


def test_other_copy_is_named_by_content(synthetic, tmp_path):
    folder, _ = synthetic
    fp = data.cifar10_fingerprint(folder)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    int(fp[len("sha256:"):], 16)
    twin = tmp_path / "twin"
    shutil.copytree(folder, twin / data.CIFAR10_FOLDER)
    assert data.cifar10_fingerprint(twin) == fp  # the same bytes elsewhere: the same name
    other, _ = make_cifar(tmp_path / "other", seed=1)
    assert data.cifar10_fingerprint(other) != fp


def test_fingerprint_is_cached_until_a_file_changes(synthetic, monkeypatch):
    folder, _ = synthetic
    calls = []
    real = data._file_digests
    monkeypatch.setattr(data, "_file_digests", lambda path, *a: calls.append(path.name) or real(path))
    first = data.cifar10_fingerprint(folder)
    assert len(calls) == 7
    assert data.cifar10_fingerprint(folder) == first and len(calls) == 7  # no re-hashing
    path = folder / "test_batch"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 1  # one bit of one image's data
    path.write_bytes(bytes(blob))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = data.cifar10_fingerprint(folder)
    assert len(calls) == 14 and changed != first


def test_fingerprint_without_data_names_the_fix(isolated_env):
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.cifar10_fingerprint()


def test_loading_another_copy_warns_once_and_records_it(synthetic, monkeypatch):
    folder, arrays = synthetic
    monkeypatch.setattr(data, "_WARNED", set())
    monkeypatch.setattr(data, "_LOADED", {})
    fp = data.cifar10_fingerprint(folder)
    with pytest.warns(UserWarning, match=f"not the official one.*{fp}") as record:
        assert_equal_arrays(data.load_cifar10(folder), arrays)
    assert record[0].filename == __file__  # attributed to the caller, not to cnnbook.data
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_cifar10(folder)  # the second time: no warning
    assert data.loaded_fingerprints() == [fp]


def test_loading_the_official_copy_does_not_warn(synthetic, monkeypatch):
    folder, _ = synthetic
    pretend_official(monkeypatch)
    monkeypatch.setattr(data, "_LOADED", {})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_cifar10(folder)
    assert data.loaded_fingerprints() == ["official"]
