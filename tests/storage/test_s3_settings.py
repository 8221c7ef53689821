"""The S3 driver's part schedule and its settings (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage import config
from moorage.storage import StorageError
from moorage.storage.s3 import MAX_PARTS, MIN_PART, S3Driver, part_size

GiB = 1 << 30


def test_part_schedule_fits_a_100_gib_layer_in_10000_parts() -> None:
    sizes = [part_size(n) for n in range(1, MAX_PARTS + 1)]
    assert min(sizes) == MIN_PART == 5 << 20  # S3's smallest part but the last
    assert max(sizes) <= 5 * GiB  # S3's largest part
    assert sizes == sorted(sizes)
    total, parts = 0, 0
    while total < 100 * GiB:
        parts += 1
        total += sizes[parts - 1]
    assert parts < 7000  # about 6,700: room to spare below 10,000
    assert sum(sizes) > 300 * GiB
    with pytest.raises(StorageError):
        part_size(MAX_PARTS + 1)


def test_storage_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "MOORAGE_STORAGE_DRIVER": "s3",
        "MOORAGE_STORAGE_REDIRECT": "true",
        "MOORAGE_STORAGE_S3_ENDPOINT": "http://127.0.0.1:9000",
        "MOORAGE_STORAGE_S3_REGION": "eu-west-3",
        "MOORAGE_STORAGE_S3_BUCKET": "layers",
        "MOORAGE_STORAGE_S3_PREFIX": "registry",
        "MOORAGE_STORAGE_S3_ACCESSKEY": "test:tester",
        "MOORAGE_STORAGE_S3_SECRETKEY": "testing",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    storage = config.load().storage
    assert storage.driver == "s3" and storage.redirect is True
    s3 = storage.s3
    assert (s3.endpoint, s3.region, s3.bucket, s3.prefix) == (
        "http://127.0.0.1:9000",
        "eu-west-3",
        "layers",
        "registry",
    )
    assert s3.accesskey == "test:tester"
    assert s3.secretkey is not None and s3.secretkey.get_secret_value() == "testing"


def test_storage_settings_merge_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "moorage.yaml"
    path.write_text("storage:\n  s3:\n    bucket: layers\n")
    monkeypatch.setenv("MOORAGE_STORAGE_DRIVER", "s3")
    storage = config.load(path).storage
    assert (storage.driver, storage.s3.bucket, storage.redirect) == ("s3", "layers", False)


async def test_s3_driver_needs_a_bucket() -> None:
    with pytest.raises(StorageError, match="bucket"):
        await S3Driver.open(None, endpoint="http://127.0.0.1:9")
