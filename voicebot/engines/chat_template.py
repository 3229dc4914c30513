"""Chat templates rendered the way transformers renders them, for the engines without it.

The llama.cpp and CTranslate2 engines apply a model's own Jinja chat template (from the GGUF
metadata or the Hugging Face files) themselves; rendering it in the same sandboxed environment
as transformers, with the same helpers, gives the same prompt token for token.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..errors import EngineError, ModelError

__all__ = ["compile_chat_template"]


def _raise_exception(message: str) -> None:
    """The ``raise_exception`` chat templates call (as transformers provides it)."""
    raise EngineError(f"the chat template refused the messages: {message}")


def compile_chat_template(source: str, origin: object) -> Any:
    """Compile a chat template; ``origin`` (the model) names it in errors.

    Raises:
        ModelError: the template does not compile.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(source)
    except jinja2.TemplateError as error:
        raise ModelError(f"bad chat template in {origin}: {error}") from error
