"""``voicebot tune``: LoRA fine-tuning of the chat model on the user's own data, on the CPU.

What it learns from: a file of the household's questions and answers (TOML, below) and
conversations exported by ``voicebot data export`` (corrections in, bad replies out). Each
reply is learned from the question it answered under the profile's system prompt: the prompt
the model sees when it answers (the embedded model is sent no earlier turns).

How: peft's LoRA on the value and output projections and the MLP of every layer (the
modules llama.cpp can apply as well, :data:`voicebot.adapters.TARGET_MODULES`), float32 on
the CPU, AdamW, loss on the reply's tokens only. A plain torch loop, not TRL's SFTTrainer:
the loop is 30 lines, and TRL would bring ``datasets`` and its own trainer state for no
gain at this size. Progress is a tqdm bar; Ctrl-C (or ``--stop-after``) keeps a checkpoint,
and ``--resume`` carries on from it with the same batches.

Before an adapter is kept, the base and the tuned model answer held-out items: paraphrases of
the user's questions that were not trained on, and the general quality test set
(``voicebot/quality_sets/test.toml``). A tuned model that passes fewer general items than the
base is refused unless ``force``. A kept adapter is ``<models>/adapters/<name>/v<N>/`` with
its card (data, steps, time, scores, load and latency cost).

The facts file::

    [[fact]]
    questions = ["What's the wifi password?", "What is the password for the wifi?"]
    answer = "The wifi password is tulip-river-42."
    held_out = ["Tell me the wifi password."]   # optional: only asked, never trained on
    expect = ["tulip-river-42"]                 # optional: what a right answer contains
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters import TARGET_MODULES, adapter_root, next_version, peft_to_gguf
from .config import ADAPTER_MARK, Profile, Settings
from .dialogue import Dialogue
from .errors import ConfigError, ModelError, VoicebotError

__all__ = [
    "Fact",
    "Scores",
    "TuneOptions",
    "TuneRefused",
    "TuneResult",
    "TuneStopped",
    "load_conversations",
    "load_facts",
    "training_samples",
    "tune",
]

_LOGGER = logging.getLogger(__name__)

Message = dict[str, str]


class TuneStopped(VoicebotError):
    """Training stopped before its last step; a checkpoint was kept (``--resume``)."""


class TuneRefused(VoicebotError):
    """The tuned model was worse on the general set: the adapter was not kept."""


@dataclass(frozen=True)
class Fact:
    """One of the user's questions, in several wordings, and its answer."""

    questions: tuple[str, ...]
    """Wordings trained on."""
    answer: str
    """The answer to learn."""
    held_out: tuple[str, ...] = ()
    """Wordings only asked when evaluating, never trained on."""
    expect: tuple[str, ...] = ()
    """What a right answer contains (case-insensitive); default: the answer itself."""

    def answered_by(self, reply: str) -> bool:
        """True when ``reply`` contains every expected phrase."""
        said = " ".join(reply.lower().split())
        wanted = self.expect or (self.answer.rstrip(".!? "),)
        return all(" ".join(w.lower().split()) in said for w in wanted)


def load_facts(path: str | Path) -> list[Fact]:
    """Read a facts file (see the module docstring).

    A fact without ``held_out`` and with three wordings or more has its last wording held out.

    Raises:
        ConfigError: unreadable, or a fact without questions or an answer.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read the facts file {path}: {error}") from None
    facts: list[Fact] = []
    for index, raw in enumerate(data.get("fact", []), 1):
        questions = [str(q).strip() for q in raw.get("questions", []) if str(q).strip()]
        answer = str(raw.get("answer", "")).strip()
        if not questions or not answer:
            raise ConfigError(f"{path}: fact {index} needs questions and an answer")
        held_out = [str(q).strip() for q in raw.get("held_out", []) if str(q).strip()]
        if not held_out and len(questions) >= 3:
            held_out = [questions.pop()]
        expect = tuple(str(e) for e in raw.get("expect", []))
        facts.append(Fact(tuple(questions), answer, tuple(held_out), expect))
    if not facts:
        raise ConfigError(f"{path}: no [[fact]] tables")
    return facts


def load_conversations(path: str | Path) -> list[list[Message]]:
    """Read chat-format JSONL (``voicebot data export``): one ``messages`` list a line.

    Raises:
        ConfigError: unreadable or not that format.
    """
    conversations: list[list[Message]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            conversations.append(
                [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
            )
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}:{number}: not a chat-format line") from None
    return conversations


def training_samples(
    facts: Sequence[Fact], conversations: Sequence[Sequence[Message]], profile: Profile
) -> list[list[Message]]:
    """The examples trained on: system prompt, a question, its answer."""
    system = Dialogue(profile).system_prompt()
    samples: list[list[Message]] = []
    for fact in facts:
        for question in fact.questions:
            samples.append(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": fact.answer},
                ]
            )
    for messages in conversations:
        prompt = next((m["content"] for m in messages if m["role"] == "system"), system)
        for before, reply in zip(messages, messages[1:], strict=False):
            if before["role"] == "user" and reply["role"] == "assistant":
                samples.append(
                    [
                        {"role": "system", "content": prompt},
                        before,
                        reply,
                    ]
                )
    return samples


@dataclass(frozen=True)
class TuneOptions:
    """How to train."""

    name: str
    """The adapter's name (``llm_adapter`` of a profile)."""
    steps: int = 60
    """Optimiser steps."""
    learning_rate: float = 5e-3
    """AdamW's peak learning rate (10 warm-up steps, then a linear decay to a tenth)."""
    rank: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha (the update is scaled by alpha / rank)."""
    batch_size: int = 8
    """Examples per step."""
    seed: int = 0
    """Seed of the initial weights and of the batch order."""
    checkpoint_every: int = 20
    """Steps between checkpoints."""
    stop_after: int = 0
    """Stop (with a checkpoint) after this many steps of this run; 0 runs to the end."""
    resume: bool = False
    """Carry on from the checkpoint of an earlier run with the same data and options."""
    force: bool = False
    """Keep the adapter even when the general set gets worse."""
    threads: int = 0
    """Torch CPU threads (0: every physical core)."""
    progress: bool = True
    """Show a progress bar."""
    adapters_dir: str = ""
    """Where adapters are written (default ``<models>/adapters``)."""


@dataclass
class Scores:
    """One model's results."""

    held_out: tuple[int, int] = (0, 0)
    """(answered, asked) of the held-out paraphrases."""
    trained: tuple[int, int] = (0, 0)
    """(answered, asked) of the trained wordings."""
    general: tuple[int, int] = (0, 0)
    """(passed, items) of the general quality test set."""
    load_s: float = 0.0
    """Time to load the model (with its adapter)."""
    first_token_ms: float = 0.0
    """Time to the first token of a fixed question (best of 3)."""
    tokens_per_s: float = 0.0
    """Decoding speed on that question (best of 3)."""
    answers: dict[str, str] = field(default_factory=dict)
    """Each held-out question's answer."""


@dataclass
class TuneResult:
    """What ``voicebot tune`` did."""

    adapter: Path | None
    """The kept adapter's directory; ``None`` when refused."""
    base: Scores
    """The base model's scores."""
    tuned: Scores
    """The tuned model's scores."""
    train_s: float
    """Training time of this run (a resumed run counts its own steps only)."""
    card: dict[str, Any]
    """The card written beside the adapter."""


def _sha256(paths: Sequence[Path], samples: Sequence[Sequence[Message]]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(samples, sort_keys=True).encode())
    for path in paths:
        digest.update(path.name.encode())
    return digest.hexdigest()


def _encode(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
    """Token ids and labels: the prompt is masked (-100), the reply and its end are learned."""
    prompt = tokenizer.apply_chat_template(
        list(messages[:-1]), add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):
        raise ModelError("the chat template does not extend the prompt with the reply")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids


def _batch_indices(step: int, batch_size: int, count: int, seed: int) -> list[int]:
    """The examples of a step: epochs of shuffled order, a function of the step alone (a
    resumed run draws the same batches)."""
    import numpy as np

    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, count)
        order = np.random.default_rng(seed * 100_003 + epoch).permutation(count)
        indices.append(int(order[offset]))
    return indices


def train_adapter(
    model_dir: Path,
    samples: Sequence[Sequence[Message]],
    out: Path,
    replay: Sequence[Sequence[Message]],
    checkpoint: Path,
    options: TuneOptions,
    *,
    data_hash: str,
    log: Callable[[str], None] = _LOGGER.info,
) -> dict[str, Any]:
    """Train a LoRA adapter on ``samples`` and save it (peft's format) in ``out``.

    A quarter of each batch is ``replay``: the base model's own right answers to other
    questions (the quality dev set's), so that what it knew is kept while it learns the user's
    facts.

    Raises:
        TuneStopped: stopped by Ctrl-C or ``stop_after``; the checkpoint was kept.
    """
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .engines._hardware import physical_cores

    threads = options.threads or physical_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=options.rank,
        lora_alpha=int(options.alpha),
        lora_dropout=0.0,
        target_modules=list(TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    encoded = [_encode(tokenizer, sample) for sample in samples]
    replayed = [e for e in (_encode(tokenizer, s) for s in replay) if len(e[0]) <= _MAX_REPLAY]
    replay_size = options.batch_size // 4 if replayed else 0
    own_size = options.batch_size - replay_size
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=0.0)
    warmup = min(10, max(1, options.steps // 10))

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - 0.9 * (step - warmup) / max(1, options.steps - warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    settings = {
        "steps": options.steps,
        "learning_rate": options.learning_rate,
        "rank": options.rank,
        "alpha": options.alpha,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "data": data_hash,
    }
    start_step = 0
    state_file = checkpoint / "state.pt"
    if options.resume:
        if not state_file.is_file():
            raise ConfigError(f"nothing to resume: no checkpoint in {checkpoint}")
        state = torch.load(state_file, weights_only=False)
        if state["settings"] != settings:
            raise ConfigError(
                "the checkpoint was made with other data or options: run without --resume"
            )
        set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        log(f"resuming at step {start_step} of {options.steps}")

    def save_checkpoint(step: int) -> None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(checkpoint))
        torch.save(
            {
                "step": step,
                "settings": settings,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            state_file,
        )

    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(
        total=options.steps,
        initial=start_step,
        desc=f"tuning {options.name}",
        unit="step",
        disable=not options.progress,
    )
    step = start_step
    try:
        while step < options.steps:
            if options.stop_after and step - start_step >= options.stop_after:
                raise KeyboardInterrupt
            rows = [encoded[i] for i in _batch_indices(step, own_size, len(encoded), options.seed)]
            if replay_size:
                rows += [
                    replayed[i]
                    for i in _batch_indices(step, replay_size, len(replayed), options.seed + 1)
                ]
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, (ids, wanted) in enumerate(rows):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(ids)] = torch.tensor(wanted)
                mask[row, : len(ids)] = 1
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            token_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=-100,
                reduction="none",
            ).view(targets.shape)
            counted = (targets != -100).float()
            # Each example weighs the same, whatever its length: a rehearsed answer of 40
            # tokens must not outweigh a household fact of 12.
            loss = ((token_loss * counted).sum(1) / counted.sum(1).clamp(min=1)).mean()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % options.checkpoint_every == 0 and step < options.steps:
                save_checkpoint(step)
    except KeyboardInterrupt:
        bar.close()
        save_checkpoint(step)
        raise TuneStopped(
            f"stopped at step {step} of {options.steps}; the same command with --resume carries on"
        ) from None
    bar.close()
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    shutil.rmtree(checkpoint, ignore_errors=True)
    return {
        **settings,
        "modules": list(TARGET_MODULES),
        "threads": threads,
        "examples": len(samples),
        "replay_examples": len(replay),
        "steps_this_run": step - start_step,
        "seconds_this_run": round(seconds, 1),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
    }


_MAX_REPLAY = 160
"""Longest rehearsed example in tokens (longer ones cost more time than they add)."""
_SPEED_QUESTION = "What is the capital of France?"


def _speed(chat: Any, system: str) -> tuple[float, float]:
    """(first token ms, tokens/s) of a fixed question, best of 3."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": _SPEED_QUESTION}]
    best_first, best_rate = float("inf"), 0.0
    for _ in range(3):
        start = time.perf_counter()
        first = 0.0
        pieces = 0
        for _piece in chat.stream(messages, threading.Event()):
            if not pieces:
                first = time.perf_counter() - start
            pieces += 1
        total = time.perf_counter() - start
        best_first = min(best_first, first * 1000)
        if pieces > 1:
            best_rate = max(best_rate, (pieces - 1) / max(total - first, 1e-6))
    return round(best_first, 1), round(best_rate, 1)


GENERAL_NOISE = 0.03
"""Share of the general test set by which one scoring of the same model can differ from
the next on the embedded 135M model (its answers depend on what its prompt cache held:
the same settings scored again moved by up to 3 answers in 115, docs/quality.md)."""


def general_noise(items: int) -> int:
    """Answers of ``items`` a tuned model may lose to the base and still be kept: the
    run-to-run noise (:data:`GENERAL_NOISE`), not a loss."""
    return math.ceil(GENERAL_NOISE * items)


def evaluate(
    settings: Settings,
    profile: Profile,
    facts: Sequence[Fact],
    reference: str,
    *,
    general: bool = True,
    replay: list[list[Message]] | None = None,
    log: Callable[[str], None] = _LOGGER.info,
) -> Scores:
    """Load the chat model ``reference`` (a profile's :attr:`~Profile.llm_reference`) and
    score it on the facts (held-out and trained wordings) and the general test set.

    ``replay``, when given, receives the model's answers to the quality *dev* items it got
    right, each with the very messages it was sent (never the test set: that one only
    measures).
    """
    import asyncio

    from .engines import Engines, load_llm
    from .engines.fake import FakeStt, FakeTts, FakeVad
    from .quality import ItemResult
    from .quality import evaluate as quality
    from .responder import Responder

    start = time.perf_counter()
    chat: Any = load_llm(settings, reference=reference)
    scores = Scores(load_s=round(time.perf_counter() - start, 2))
    loaded = chat
    try:
        plain = dataclasses.replace(profile, llm_adapter="", llm_model="")
        engines = Engines(stt=FakeStt([""]), llm=chat, tts=FakeTts(), vad_factory=FakeVad)
        responder = Responder(engines, settings, plain)

        async def ask(question: str) -> str:
            dialogue = Dialogue(plain)
            dialogue.add_user(question)
            outcome = await responder.respond(
                dialogue, 1, _ignore, cancel=threading.Event(), speak=False
            )
            return outcome.text

        held = trained = asked_held = asked_trained = 0
        for fact in facts:
            for question in fact.held_out:
                answer = asyncio.run(ask(question))
                scores.answers[question] = answer
                asked_held += 1
                held += fact.answered_by(answer)
                mark = "ok " if fact.answered_by(answer) else "BAD"
                log(f"{mark} [held out] {question} -> {answer}")
            for question in fact.questions:
                asked_trained += 1
                trained += fact.answered_by(asyncio.run(ask(question)))
        scores.held_out = (held, asked_held)
        scores.trained = (trained, asked_trained)
        profiled = dataclasses.replace(settings, profiles={plain.name: plain}, profile=plain.name)
        if general:
            report = quality(engines, profiled, sets=["test"])
            results = report.sets["test"].results
            scores.general = (sum(r.passed for r in results), len(results))
        if replay is not None:
            recorder = _Recorder(chat)
            engines.llm = recorder

            def keep_if_right(result: ItemResult) -> None:
                # Called after each dev item: the samples since the last call are that item's.
                # Only the answers scored right are replayed: a wrong one ("The answer is 1.")
                # would be taught to the adapter as the base's behaviour.
                if result.passed:
                    replay.extend(recorder.samples)
                recorder.samples.clear()

            quality(engines, profiled, sets=["dev"], on_result=keep_if_right)
            engines.llm = chat
        scores.first_token_ms, scores.tokens_per_s = _speed(chat, Dialogue(plain).system_prompt())
    finally:
        close = getattr(loaded, "close", None)
        if callable(close):
            close()
    return scores


async def _ignore(event: object) -> None:
    return None


class _Recorder:
    """A chat model that keeps every prompt it is sent with the reply it streamed."""

    def __init__(self, chat: Any) -> None:
        self._chat = chat
        self.samples: list[list[Message]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chat, name)

    def stream(self, messages: Sequence[Any], cancel: threading.Event) -> Any:
        pieces: list[str] = []
        try:
            for piece in self._chat.stream(messages, cancel):
                pieces.append(piece)
                yield piece
        finally:  # a reply cut after its sentences counts as said
            text = "".join(pieces).strip()
            if text:
                prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
                self.samples.append([*prompt, {"role": "assistant", "content": text}])


def tune(
    settings: Settings,
    options: TuneOptions,
    *,
    facts_path: str | Path | None = None,
    data_paths: Sequence[str | Path] = (),
    log: Callable[[str], None] = _LOGGER.info,
) -> TuneResult:
    """Train an adapter for the settings' profile, evaluate it against the base, keep it.

    Raises:
        ConfigError: no data, unreadable files. TuneStopped: stopped early (resumable).
        TuneRefused: worse on the general set without ``force``.
    """
    from .engines import model_manager, resolve_model
    from .engines.llm_llamacpp import find_gguf
    from .models import default_models_dir

    profile = settings.get_profile()
    facts = load_facts(facts_path) if facts_path else []
    conversations = [c for path in data_paths for c in load_conversations(path)]
    samples = training_samples(facts, conversations, profile)
    if not samples:
        raise ConfigError("nothing to learn: give --facts FILE and/or --data FILE.jsonl")
    models_dir = default_models_dir(settings.models_dir)
    adapters = Path(options.adapters_dir) if options.adapters_dir else models_dir / "adapters"
    root = adapter_root(adapters, options.name)
    base_reference = profile.llm_model or settings.llm.model
    resolved = resolve_model(base_reference, "llm", model_manager(settings))
    model_dir = Path(str(resolved))
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"tuning needs the chat model as a Hugging Face directory; {model_dir} is not one"
        )
    inputs = [Path(p) for p in ([facts_path] if facts_path else []) + list(data_paths)]
    data_hash = _sha256(inputs, samples)
    staging = root / ".staging"
    base_profile_ref = dataclasses.replace(profile, llm_adapter="").llm_reference
    checkpoint = root / ".checkpoint"
    saved = checkpoint / "base.json"
    replay: list[list[Message]] = []
    if options.resume and saved.is_file():  # scored before the stop: not again
        kept = json.loads(saved.read_text())
        base, replay = _scores_from(kept["scores"]), kept["replay"]
    else:
        log("scoring the base model (and keeping its answers to the dev set to rehearse)")
        base = evaluate(settings, profile, facts, base_profile_ref, replay=replay, log=log)
        checkpoint.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"scores": _scores_dict(base), "replay": replay}))
    if not options.resume:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"training on {len(samples)} examples: {len(facts)} facts, {len(conversations)} chats")
    training = train_adapter(
        model_dir,
        samples,
        staging,
        replay,
        checkpoint,
        options,
        data_hash=data_hash,
        log=log,
    )
    try:
        gguf = find_gguf(model_dir)
    except ModelError:
        gguf = None  # a model without a GGUF is never run by llama.cpp
    if gguf is not None:
        peft_to_gguf(staging, gguf)
    log("scoring the tuned model")
    tuned = evaluate(
        settings, profile, facts, f"{base_profile_ref}{ADAPTER_MARK}{staging}", log=log
    )
    worse = tuned.general[0] < base.general[0] - general_noise(base.general[1])
    card: dict[str, Any] = {
        "name": options.name,
        "base_model": base_reference,
        "profile": profile.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {
            "facts_file": str(facts_path or ""),
            "facts": len(facts),
            "held_out_questions": sum(len(f.held_out) for f in facts),
            "conversation_files": [str(p) for p in data_paths],
            "conversations": len(conversations),
            "examples": len(samples),
            "sha256": data_hash,
        },
        "training": training,
        "scores": {"base": _scores_dict(base), "tuned": _scores_dict(tuned)},
        "accepted": not worse or options.force,
        "forced": worse and options.force,
        "llama_cpp": gguf is not None,
    }
    if worse and not options.force:
        shutil.rmtree(staging, ignore_errors=True)
        raise TuneRefused(
            f"the tuned model passes {tuned.general[0]}/{tuned.general[1]} of the general test "
            f"set, the base {base.general[0]}/{base.general[1]}: not kept (--force keeps it)"
        )
    version = next_version(root)
    final = root / version
    card["version"] = version
    (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (staging / "README.md").write_text(render_card(card))
    staging.rename(final)
    return TuneResult(final, base, tuned, float(training["seconds_this_run"]), card)


def _scores_from(data: dict[str, Any]) -> Scores:
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return Scores(**values)


def _scores_dict(scores: Scores) -> dict[str, Any]:
    data = dataclasses.asdict(scores)
    return {key: list(v) if isinstance(v, tuple) else v for key, v in data.items()}


def render_card(card: dict[str, Any]) -> str:
    """The adapter's card as Markdown."""
    base, tuned = card["scores"]["base"], card["scores"]["tuned"]
    training, data = card["training"], card["data"]

    def pair(value: list[int]) -> str:
        return f"{value[0]}/{value[1]}"

    rows = [
        ("held-out paraphrases (not trained on)", pair(base["held_out"]), pair(tuned["held_out"])),
        ("trained wordings", pair(base["trained"]), pair(tuned["trained"])),
        ("general quality test set", pair(base["general"]), pair(tuned["general"])),
        ("load time (s)", f"{base['load_s']:.2f}", f"{tuned['load_s']:.2f}"),
        ("first token (ms)", f"{base['first_token_ms']:.1f}", f"{tuned['first_token_ms']:.1f}"),
        ("tokens/s", f"{base['tokens_per_s']:.1f}", f"{tuned['tokens_per_s']:.1f}"),
    ]
    table = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    forced = " Kept with --force although the general set got worse." if card["forced"] else ""
    lines = [
        f"# Adapter {card['name']} {card.get('version', '')}",
        "",
        f"LoRA adapter of `{card['base_model']}` for profile `{card['profile']}`, made by "
        f"`voicebot tune` on {card['created_at']}.{forced}",
        "",
        "## Data",
        "",
        f"- facts file: `{data['facts_file'] or 'none'}`: {data['facts']} facts, "
        f"{data['held_out_questions']} held-out questions never trained on",
        f"- conversations: {data['conversations']} "
        f"from {', '.join(data['conversation_files']) or 'no export'}",
        f"- examples trained on: {data['examples']} (sha256 {data['sha256'][:16]})",
        "",
        "## Training",
        "",
        f"{training['steps']} steps of {training['batch_size']} examples, LoRA rank "
        f"{training['rank']}, alpha {training['alpha']}, learning rate "
        f"{training['learning_rate']}, modules {', '.join(training['modules'])}, "
        f"{training['threads']} CPU threads: {training['seconds_this_run']} s for the "
        f"{training['steps_this_run']} steps of the last run, loss {training['first_loss']} "
        f"-> {training['final_loss']}.",
        "",
        "## Scores",
        "",
        "| | base | tuned |",
        "|---|---|---|",
        *table,
        "",
    ]
    return "\n".join(lines)
