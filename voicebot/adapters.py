"""LoRA adapters made by ``voicebot tune``: where they live and the format each engine loads.

An adapter is a directory ``<models>/adapters/<name>/v<N>/`` holding peft's own files
(``adapter_config.json``, ``adapter_model.safetensors``: the transformers engine merges them
into the model when it loads), the same weights as a llama.cpp LoRA (``adapter.gguf``: the
llama.cpp engine applies it to the quantised model at run time), and its card (``card.json``,
``README.md``). A profile names one with ``llm_adapter = "household"`` (the newest version)
or ``"household/v2"`` (that one), or a directory's path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .config import ADAPTER_MARK
from .errors import ModelError

__all__ = [
    "GGUF_NAME",
    "adapter_root",
    "find_adapter",
    "next_version",
    "peft_to_gguf",
    "split_reference",
]

GGUF_NAME = "adapter.gguf"
"""The llama.cpp LoRA file in an adapter directory."""

_VERSION = re.compile(r"^v(\d+)$")
# peft module names -> llama.cpp tensor names (LLaMA-family models, SmolLM2 included). The
# query and key projections are left out of training on purpose: llama.cpp's converter
# permutes their rows for its rotary embedding, so their LoRA would need the same permutation.
_GGUF_NAMES = {
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TARGET_MODULES = tuple(name.split(".")[1] for name in _GGUF_NAMES)
"""The modules ``voicebot tune`` trains (all of them convertible to llama.cpp)."""
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$"
)


def split_reference(reference: str) -> tuple[str, str]:
    """``(model, adapter)`` of a chat model reference (:attr:`Profile.llm_reference
    <voicebot.config.Profile.llm_reference>`); the adapter is "" when none."""
    model, _, adapter = reference.partition(ADAPTER_MARK)
    return model, adapter


def adapter_root(adapters_dir: Path, name: str) -> Path:
    """The directory of an adapter's versions (``adapters_dir``: ``<models>/adapters``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ModelError(f"adapter name {name!r}: use letters, digits, '.', '_' and '-'")
    return adapters_dir / name


def _versions(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _VERSION.match(p.name))]
    return sorted(found)


def next_version(root: Path) -> str:
    """The name of the next version in ``root`` (``v1`` first)."""
    versions = _versions(root)
    return f"v{versions[-1][0] + 1 if versions else 1}"


def find_adapter(reference: str, models_dir: Path) -> Path:
    """The directory of the adapter a profile names.

    Raises:
        ModelError: no such adapter (with the command that makes one).
    """
    path = Path(reference).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return path
    name, _, version = reference.partition("/")
    root = adapter_root(models_dir / "adapters", name)
    if version:
        chosen = root / version
        if (chosen / "adapter_config.json").is_file():
            return chosen
    else:
        versions = _versions(root)
        if versions:
            return versions[-1][1]
    raise ModelError(
        f"no adapter {reference!r} in {models_dir / 'adapters'}: make one with "
        f"`voicebot tune --name {name} --facts FILE`"
    )


def peft_to_gguf(adapter_dir: Path, base_gguf: Path, out: Path | None = None) -> Path:
    """Write a peft LoRA adapter as a llama.cpp LoRA GGUF (``adapter.gguf`` beside it).

    The format llama.cpp's ``llama_lora_adapter_init`` reads: ``general.type = adapter``,
    ``adapter.type = lora``, ``adapter.lora.alpha``, and for each adapted weight ``W`` of the
    base model the pair ``<W>.lora_a`` (rank x in) and ``<W>.lora_b`` (out x rank), unchanged
    from peft's ``lora_A`` and ``lora_B``. llama.cpp scales by ``alpha / rank`` as peft does.

    Raises:
        ModelError: a module llama.cpp cannot take, or unreadable files.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise ModelError("only plain LoRA converts to llama.cpp (no rsLoRA, no DoRA)")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    reader = gguf.GGUFReader(str(base_gguf))
    arch_field = reader.fields.get("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else "llama"
    base_names = {tensor.name for tensor in reader.tensors}
    out = out or adapter_dir / GGUF_NAME
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config["lora_alpha"]))
    written = 0
    for key in sorted(weights):
        match = _PEFT_KEY.match(key)
        if match is None or match[2] not in _GGUF_NAMES:
            raise ModelError(f"cannot convert adapter tensor {key} for llama.cpp")
        base = f"blk.{match[1]}.{_GGUF_NAMES[match[2]]}.weight"
        if base not in base_names:
            raise ModelError(f"the base model {base_gguf.name} has no tensor {base}")
        array: Any = np.ascontiguousarray(weights[key], dtype=np.float32)
        writer.add_tensor(f"{base}.lora_{match[3].lower()}", array)
        written += 1
    if not written:
        raise ModelError(f"no LoRA weights in {adapter_dir}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
