"""The chat model on an OpenAI-compatible server: ``[llm] backend = "openai"``.

For a chat model that runs elsewhere: llama.cpp's ``llama-server`` (or llama-cpp-python's
``llama_cpp.server``), vLLM, Ollama, or a hosted API. The reply is streamed with the
``openai`` client library (``/v1/chat/completions`` with ``stream: true``) into the same
chunker, dialogue, memory and skills as the local engines.

- **Barge-in** sets the cancel event: the stream is closed (its HTTP connection dropped, so
  the server stops generating) at the next token, a few milliseconds on any server that
  streams.
- **Failures** (the server down, no token within ``[llm] timeout_s``, the key refused, an
  answer that is not a chat completion) raise :class:`~voicebot.errors.LlmUnavailableError`:
  the session sends an ``error`` event and says a short apology, and the next turn asks the
  server again. No retries: a voice reply that waits for one is already too late.
- **The token budget** needs a tokenizer: the local one of the same model when there is one
  (``[llm] tokenizer``, or the catalog model named by ``[llm] model``), with its chat
  template, so the count is exact; else an estimate of 4 characters a token plus 4 per
  message, which is what OpenAI's own guidance gives for English.
- It is not a turn detector: the session judges the end of turn by punctuation
  (docs/architecture.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import LlmUnavailableError
from .base import Message

__all__ = ["OpenAIChat", "estimate_tokens"]

_LOGGER = logging.getLogger(__name__)

_NO_KEY = "no-key"
"""Sent when no key is set: the client library insists on one; local servers ignore it."""


def estimate_tokens(messages: Sequence[Message]) -> int:
    """About 4 characters a token, plus 4 tokens a message for the chat template."""
    return sum(len(m["content"]) // 4 + 4 for m in messages) + 3


class _TemplateTokenizer:
    """Counts prompt tokens exactly with a local tokenizer and its chat template."""

    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(directory))

    def count(self, messages: Sequence[Message]) -> int:
        ids = self._tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in newer versions
            ids = ids["input_ids"]
        return len(ids)


class OpenAIChat:
    """A chat model served by an OpenAI-compatible server, streaming its reply."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str = "",
        timeout_s: float = 10.0,
        max_new_tokens: int = 60,
        temperature: float = 0.0,
        tokenizer: str | Path | None = None,
        parallel_calls: int = 4,
        client: Any = None,
    ) -> None:
        """Describe the server (nothing is sent until the first reply).

        Args:
            model: The name the server knows the model by.
            base_url: The server's API root, ``http://host:port/v1``.
            api_key: Sent as the bearer token (empty: a placeholder).
            timeout_s: Longest wait to connect, and for each next token.
            max_new_tokens: Longest reply.
            temperature: 0 for greedy decoding.
            tokenizer: A local Hugging Face tokenizer directory of the same model (exact
                token counts); None to estimate.
            parallel_calls: Replies streamed at once (the server batches them); the
                model's worker runs this many threads.
            client: An ``openai.OpenAI`` to use instead (tests).
        """
        import openai

        self._openai: Any = openai
        self.model = model
        """The server's model name."""
        self.name = f"{model} at {base_url}"
        """For logs."""
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.parallel_calls = parallel_calls
        """Calls the model's worker may run at once."""
        self.device = "remote"
        """Where the model runs."""
        self._client: Any = client or openai.OpenAI(
            base_url=base_url,
            api_key=api_key or _NO_KEY,
            timeout=timeout_s,
            max_retries=0,
        )
        self._tokenizer: _TemplateTokenizer | None = None
        self.token_counting = "estimate"
        """``exact`` (a local tokenizer) or ``estimate`` (4 characters a token)."""
        if tokenizer is not None:
            try:
                self._tokenizer = _TemplateTokenizer(Path(tokenizer))
                self.token_counting = "exact"
            except Exception as error:  # noqa: BLE001 - any failure: fall back to the estimate
                _LOGGER.warning("cannot load the tokenizer %s (%s): estimating", tokenizer, error)
        _LOGGER.info("chat model %s on %s (token counts: %s)", model, base_url, self.token_counting)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of these messages: exact with a local tokenizer, else estimated."""
        if self._tokenizer is not None:
            return self._tokenizer.count(messages)
        return estimate_tokens(messages)

    def _failure(self, error: BaseException) -> LlmUnavailableError:
        openai = self._openai
        if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            text = "the chat server refused the API key (VOICEBOT_LLM_API_KEY)"
        elif isinstance(error, openai.APITimeoutError | TimeoutError) or _named(error, "Timeout"):
            text = f"the chat server did not answer within {self.timeout_s:g} s"
        elif isinstance(error, openai.APIConnectionError | OSError) or _named(error):
            text = f"cannot reach the chat server at {self.base_url}"
        elif isinstance(error, openai.APIStatusError):
            text = f"the chat server answered HTTP {error.status_code}"
        else:
            text = "the chat server's answer is not a chat completion"
        failure = LlmUnavailableError(f"{text}: {error}")
        failure.__cause__ = error
        return failure

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply as the server streams it; close the stream once ``cancel`` is set.

        Raises:
            LlmUnavailableError: the server is down, too slow, refused the key, or sent
                something that is not a streamed chat completion.
        """
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                stream=True,
                max_tokens=self.max_new_tokens,
                temperature=self.temperature,
            )
        except Exception as error:  # noqa: BLE001 - every failure of the server is one answer
            raise self._failure(error) from error
        chunks = 0
        try:
            for chunk in response:
                chunks += 1
                if cancel.is_set():
                    return
                choices = chunk.choices
                if not choices:
                    continue  # a usage or keep-alive chunk
                text = choices[0].delta.content
                if text is not None and not isinstance(text, str):
                    raise TypeError(f"delta content is {type(text).__name__}")
                if text:
                    yield text
                if cancel.is_set():
                    return
            if chunks == 0 and not cancel.is_set():
                # Every server sends at least the role or the finish: this was not a stream
                # of chat completion chunks (an error page, a proxy's answer).
                raise ValueError("the stream held no chat completion chunk")
        except GeneratorExit:
            raise
        except Exception as error:  # noqa: BLE001 - dropped mid-reply, garbage, a timeout
            raise self._failure(error) from error
        finally:
            # Dropping the connection is how an OpenAI-compatible server is told to stop.
            response.close()


def _named(error: BaseException, *parts: str) -> bool:
    """The HTTP library's own exceptions (a read timeout mid-stream), without importing it:
    which HTTP library the ``openai`` client uses differs between its versions."""
    name = type(error).__name__
    return all(part in name for part in parts) and type(error).__module__.startswith("httpx")


def load_openai_chat(settings: Any, manager: Any, reference: str = "") -> OpenAIChat:
    """An :class:`OpenAIChat` from ``[llm]`` settings (``reference``: a profile's model)."""
    from ..errors import ConfigError

    llm = settings.llm
    if not llm.base_url:
        raise ConfigError('[llm] backend = "openai" needs base_url (http://host:port/v1)')
    model = reference or llm.model
    return OpenAIChat(
        model,
        base_url=llm.base_url,
        api_key=llm.api_key,
        timeout_s=llm.timeout_s,
        max_new_tokens=llm.max_new_tokens,
        temperature=llm.temperature,
        tokenizer=_local_tokenizer(llm.tokenizer or model, manager),
    )


def _local_tokenizer(reference: str, manager: Any) -> Path | None:
    """A local tokenizer directory for ``reference`` (a catalog id, a directory, or a
    ``tokenizer.json``), or None."""
    path: Path | None = None
    if reference in manager.catalog and manager.catalog[reference].kind == "llm":
        try:
            path = Path(manager.path(reference))
        except Exception:  # noqa: BLE001 - not pulled: estimate
            return None
    elif Path(reference).expanduser().exists():
        path = Path(reference).expanduser()
    if path is None:
        return None
    if path.is_file():
        path = path.parent
    for directory in (path, path / "hf"):
        if (directory / "tokenizer.json").exists() and (
            directory / "tokenizer_config.json"
        ).exists():
            return directory
    return None
