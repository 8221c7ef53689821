"""Settings: defaults < YAML file < MOORAGE_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage import config


def test_defaults_need_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = config.load()
    assert settings.listen == "127.0.0.1:5000"
    assert settings.datadir == Path("moorage-data")
    assert settings.metadata_url.startswith("sqlite:///")
    assert settings.blob_root == Path("moorage-data/storage")
    assert settings.manifests.maxsize == 4 * 1024 * 1024
    assert settings.mount.automatic is False


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "moorage.yaml"
    file.write_text(
        "listen: 127.0.0.1:6000\nworkers: 3\nuploads: {ttl: 999}\nmanifests: {schema1: false}\n"
    )
    monkeypatch.setenv("MOORAGE_UPLOADS_TTL", "120")
    monkeypatch.setenv("MOORAGE_STORAGE_ROOTDIRECTORY", str(tmp_path / "blobs"))
    settings = config.load(file, workers=2)
    assert settings.listen == "127.0.0.1:6000"  # file
    assert settings.manifests.schema1 is False  # file, nested
    assert settings.uploads.ttl == 120  # env beats file
    assert settings.storage.rootdirectory == tmp_path / "blobs"  # env, nested
    assert settings.workers == 2  # flag beats file


def test_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("workers: many\n")
    with pytest.raises(config.ConfigError, match="workers"):
        config.load(file)
    file.write_text("- a list\n")
    with pytest.raises(config.ConfigError, match="mapping"):
        config.load(file)
    file.write_text("unknownkey: 1\n")
    with pytest.raises(config.ConfigError, match="unknownkey"):
        config.load(file)


def test_listen_must_be_host_port() -> None:
    with pytest.raises(config.ConfigError, match="HOST:PORT"):
        config.load(listen="localhost")
    assert config.load(listen="[::1]:5001").host == "::1"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, False),
        ("maintenance: {readonly: {enabled: true}}\n", {}, True),  # Distribution's spelling
        ("maintenance: {readonly: true}\n", {}, True),  # the shorthand
        ("", {"MOORAGE_MAINTENANCE_READONLY_ENABLED": "true"}, True),
        ("", {"MOORAGE_MAINTENANCE_READONLY": "true"}, True),
        ("maintenance: {readonly: true}\n", {"MOORAGE_MAINTENANCE_READONLY": "false"}, False),
    ],
)
def test_maintenance_readonly_in_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], expected: bool
) -> None:
    file = tmp_path / "moorage.yaml"
    file.write_text(text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.load(file).maintenance.readonly.enabled is expected


def test_maintenance_readonly_must_be_a_boolean(tmp_path: Path) -> None:
    file = tmp_path / "moorage.yaml"
    file.write_text("maintenance: {readonly: {enabled: sometimes}}\n")
    with pytest.raises(config.ConfigError, match=r"maintenance\.readonly\.enabled"):
        config.load(file)


def test_bare_on_and_off_in_the_file_mean_the_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML reads a bare `off` as false: `storage.directio: off` must still turn direct writes
    off (not make every byte direct, as a size of 0 would), and `http.sendfile` takes on/off."""
    assert config.load().http.sendfile == "auto"
    assert config.load().storage.directio == 128 << 20
    file = tmp_path / "moorage.yaml"
    file.write_text("storage: {directio: off}\nhttp: {sendfile: off}\n")
    settings = config.load(file)
    assert settings.storage.directio is None
    assert settings.http.sendfile == "off"
    file.write_text("storage: {directio: 64MiB}\nhttp: {sendfile: on}\n")
    settings = config.load(file)
    assert settings.storage.directio == 64 << 20
    assert settings.http.sendfile == "on"
    monkeypatch.setenv("MOORAGE_HTTP_SENDFILE", "off")
    assert config.load(file).http.sendfile == "off"  # the environment beats the file
    monkeypatch.delenv("MOORAGE_HTTP_SENDFILE")
    file.write_text("http: {sendfile: sometimes}\n")
    with pytest.raises(config.ConfigError, match="sendfile"):
        config.load(file)


def test_packed_settings_come_back_whole_secrets_included(tmp_path: Path) -> None:
    """What the supervisor hands a replacement worker (`config.pack`): the same settings, the
    secrets' values too (a dump would have masked them); anything else is refused."""
    path = tmp_path / "config.yml"
    path.write_text("http:\n  secret: a-secret-of-sixteen-chars\n  maxconnections: 7\n")
    settings = config.load(path, workers=3)
    back = config.unpack(config.pack(settings))
    assert back == settings
    assert back.http.secret is not None
    assert back.http.secret.get_secret_value() == "a-secret-of-sixteen-chars"
    assert (back.http.maxconnections, back.workers) == (7, 3)
    with pytest.raises(config.ConfigError):
        config.unpack(config.pack(settings.http))  # type: ignore[arg-type]
