"""The ``voicebot`` command line: parses flags into Settings and runs a subcommand.

A user's mistake (a bad file, an unknown profile, a missing model) prints one clear line on
stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Settings, load_settings
from .errors import VoicebotError

__all__ = ["main"]

_LOGGER = logging.getLogger(__name__)

EXIT_USAGE = 2


def _quiet_libraries() -> None:
    # Keep library chatter (progress bars, hub warnings) off stdout and out of the way; our own
    # output decides what the user sees.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")


def _add_engine_flags(parser: argparse.ArgumentParser, *, stt: bool, llm: bool, tts: bool) -> None:
    group = parser.add_argument_group("models")
    if stt:
        group.add_argument(
            "--stt-model",
            dest="stt.model",
            metavar="MODEL",
            help="speech model: catalog id, CTranslate2 dir or hub name",
        )
        group.add_argument(
            "--stt-device", dest="stt.device", metavar="DEV", help="auto, cpu or cuda"
        )
        group.add_argument(
            "--language", dest="stt.language", metavar="CODE", help="spoken language (default en)"
        )
    if llm:
        group.add_argument(
            "--llm-model",
            dest="llm.model",
            metavar="MODEL",
            help="chat model: catalog id, HF model dir, .gguf or hub name",
        )
        group.add_argument(
            "--llm-device", dest="llm.device", metavar="DEV", help="auto, cpu or cuda"
        )
        group.add_argument(
            "--llm-backend",
            dest="llm.backend",
            choices=("auto", "llama-cpp", "ctranslate2", "transformers"),
            help="chat engine (default auto: the fastest here, measured once)",
        )
        group.add_argument("--max-new-tokens", dest="llm.max_new_tokens", type=int, metavar="N")
    if tts:
        group.add_argument(
            "--voice",
            dest="tts.voice",
            metavar="VOICE",
            help="Piper voice: catalog id or .onnx path",
        )
        group.add_argument(
            "--speaking-rate",
            dest="tts.speaking_rate",
            type=float,
            metavar="X",
            help="1.0 natural, 1.2 is 20%% faster",
        )
    if llm or tts:
        group.add_argument("--profile", dest="profile", metavar="NAME", help="bot profile")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {k: v for k, v in vars(args).items() if ("." in k or k == "profile") and v is not None}
    if args.command == "client":
        values.pop("profile", None)  # the server's profile, not a local setting
    return values


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, overrides=_overrides(args))


# ----------------------------------------------------------------------------- models


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import ModelManager, default_models_dir

    settings = _settings(args)
    manager = ModelManager(root=default_models_dir(settings.models_dir), progress=not args.quiet)
    if args.models_command == "list":
        print(f"{'ID':<26}{'KIND':<6}{'STATUS':<11}{'SIZE':>9}  {'DEFAULT':<8}LICENSE")
        for entry in manager.catalog.values():
            size = f"{entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else "-"
            print(
                f"{entry.id:<26}{entry.kind:<6}{manager.status(entry.id):<11}{size:>9}  "
                f"{'yes' if entry.default else '':<8}{entry.license}"
            )
        print(f"\nmodels directory: {manager.root}")
        return 0
    if args.models_command == "path":
        print(manager.path(args.id))
        return 0
    ids = args.ids or (
        [e.id for e in manager.catalog.values() if e.source == "pypi"]
        if getattr(args, "all", False)
        else [manager.default_id(k) for k in ("stt", "llm", "tts")]
    )
    for model_id in ids:
        if args.models_command == "pull":
            manager.pull(model_id, force=args.force)
            print(f"{model_id}: ok ({manager.path(model_id)})", file=sys.stderr)
        else:
            manager.verify(model_id)
            print(f"{model_id}: verified", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- one-shot


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from .audio import read_audio
    from .engines import load_stt

    settings = _settings(args)
    pcm = read_audio(args.file, 16000)
    stt = load_stt(settings)
    print(stt.transcribe(pcm).text)
    return 0


def _cmd_say(args: argparse.Namespace) -> int:
    from .audio import write_wav
    from .engines import load_tts

    settings = _settings(args)
    profile = settings.get_profile()
    tts = load_tts(settings, reference=profile.voice)
    rate = args.__dict__.get("tts.speaking_rate") or profile.speaking_rate or None
    pcm = b"".join(tts.synthesize(args.text, speaking_rate=rate))
    if args.output:
        write_wav(args.output, pcm, tts.sample_rate_hz)
        print(f"wrote {args.output} ({len(pcm) / 2 / tts.sample_rate_hz:.2f} s)", file=sys.stderr)
    else:
        from .transports.mic import play_blocking

        play_blocking(pcm, tts.sample_rate_hz, device=args.output_device)
    return 0


def _open_store(settings: Settings) -> Any:
    from .store import Store

    return Store(settings.store_location(), keep_days=settings.store.keep_days)


def _cmd_reply(args: argparse.Namespace) -> int:
    from .audio import read_audio, write_wav
    from .engines import load_engines
    from .session import Session

    settings = _settings(args)
    pcm = read_audio(args.input, 16000)
    store = _open_store(settings)
    start = time.perf_counter()
    engines = load_engines(settings)
    load_s = time.perf_counter() - start
    audio: list[bytes] = []
    rate = [engines.tts.sample_rate_hz]

    async def sink(event: Any) -> None:
        from .events import AudioOut, ReplyText, Transcript

        if isinstance(event, Transcript):
            print(f"you: {event.text}", flush=True)
        elif isinstance(event, ReplyText):
            print(f"{session.profile.display_name}: {event.text}", flush=True)
        elif isinstance(event, AudioOut):
            audio.append(event.pcm)
            rate[0] = event.sample_rate_hz

    session = Session(
        engines,
        settings,
        sink=sink,
        store=store,
        conversation_id=args.conversation,
        barge_in=False,
        realtime_playback=False,
    )

    async def run() -> tuple[dict[str, float], float]:
        await session.start()
        compute_start = time.perf_counter()
        await session.reply_to_audio(pcm)
        return (session.metrics[-1] if session.metrics else {}), time.perf_counter() - compute_start

    metrics, compute_s = asyncio.run(run())
    if not audio:
        print("voicebot: heard nothing intelligible in the recording; no reply", file=sys.stderr)
    write_wav(args.output, b"".join(audio), rate[0])
    store.close()
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in metrics.items())
    reply_s = len(b"".join(audio)) / 2 / rate[0]
    print(
        f"conversation {session.conversation_id} | load {load_s:.1f} s | {timings} | "
        f"total compute {compute_s * 1000:.0f} ms | reply {reply_s:.1f} s -> {args.output}",
        file=sys.stderr,
    )
    return 0


# ----------------------------------------------------------------------------- text chat


def _cmd_text(args: argparse.Namespace) -> int:
    from .engines import Engines, load_llm, make_vad_factory
    from .events import ErrorEvent, ReplyDone, ReplyText, TimerFinished
    from .feedback import parse_feedback_command
    from .session import Session
    from .skills import SkillRouter, TimerService

    settings = _settings(args)
    store = _open_store(settings)
    if args.conversation and not store.exists(args.conversation):
        raise VoicebotError(f"no conversation {args.conversation!r}: see `voicebot history list`")
    profile = settings.get_profile()
    llm = load_llm(settings, reference=profile.llm_reference)

    class _Mute:
        sample_rate_hz = 16000

        def synthesize(self, text: str, cancel: Any = None, *, speaking_rate: Any = None) -> Any:
            return iter(())

    class _NoStt:
        def transcribe(self, pcm: bytes) -> Any:
            raise VoicebotError("the text chat does not transcribe")

    engines = Engines(stt=_NoStt(), llm=llm, tts=_Mute(), vad_factory=make_vad_factory(settings))
    interactive = sys.stdin.isatty()
    name = profile.display_name

    async def sink(event: Any) -> None:
        if isinstance(event, ReplyText):
            print(event.text, end=" ", flush=True)
        elif isinstance(event, ReplyDone):
            print(flush=True)
        elif isinstance(event, ErrorEvent):
            print(f"\n[error: {event.message}]", file=sys.stderr, flush=True)
        elif isinstance(event, TimerFinished):
            print(f"\a\n{name}: ", end="", flush=True)  # the terminal's bell, then its words

    async def run() -> None:
        timers = TimerService(store)
        await timers.start()
        session = Session(
            engines,
            settings,
            sink=sink,
            store=store,
            conversation_id=args.conversation,
            skills=SkillRouter(settings.skills, timers=timers) if settings.skills.enabled else None,
        )
        cid = await session.start()
        print(
            f"[{name} | profile {profile.name} | conversation {cid} | "
            "/good, /bad [the right answer] rate the last reply | /quit to leave]",
            file=sys.stderr,
            flush=True,
        )
        for turn in session.dialogue.turns[-6:]:
            who = "you" if turn.role == "user" else name
            print(f"  {who}: {turn.text}", file=sys.stderr)
        loop = asyncio.get_running_loop()
        while True:
            if interactive:
                print("you> ", end="", flush=True, file=sys.stderr)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            rating = parse_feedback_command(text)
            if rating is not None:
                stored = await session.give_feedback(*rating)
                note = "noted, thank you" if stored else "there is no reply to rate yet"
                print(f"[{note}]", file=sys.stderr, flush=True)
                continue
            print(f"{name}: ", end="", flush=True)
            await session.send_text(text)
            await session.wait_idle()
        await session.close()
        await timers.close()

    try:
        asyncio.run(run())
    finally:
        store.close()
    return 0


# ----------------------------------------------------------------------------- voice chat


def _cmd_devices(args: argparse.Namespace) -> int:
    from .transports.mic import list_devices

    devices = list_devices()
    if not devices:
        print("no sound devices found", file=sys.stderr)
        return 1
    print(f"{'IDX':>3}  {'IN':>2} {'OUT':>3}  {'RATE':>6}  {'API':<10} NAME")
    for d in devices:
        mark = ("<" if d.is_default_input else " ") + (">" if d.is_default_output else " ")
        print(
            f"{d.index:>3}{mark}{d.max_input_channels:>2} {d.max_output_channels:>3}  "
            f"{d.default_sample_rate_hz:>6}  {d.host_api:<10} {d.name}"
        )
    print("\n< default input, > default output", file=sys.stderr)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .engines import load_engines

    settings = _settings(args)
    if bool(args.input) != bool(args.output):
        raise VoicebotError("--input and --output go together (file mode)")
    store = _open_store(settings)
    if args.conversation and not store.exists(args.conversation):
        raise VoicebotError(f"no conversation {args.conversation!r}: see `voicebot history list`")
    settings.get_profile()
    if args.input:
        from .audio import read_audio

        recording = read_audio(args.input, 16000)
    else:
        from .transports.mic import resolve_device

        resolve_device(args.input_device, "input")  # fail before the models load
        resolve_device(args.output_device, "output")
    print("[loading models...]", file=sys.stderr, flush=True)
    engines = load_engines(settings)
    engines.warm_up()
    try:
        if args.input:
            return asyncio.run(_chat_file(args, settings, store, engines, recording))
        return _run_until_signal(_chat_mic(args, settings, store, engines))
    finally:
        engines.close()
        store.close()


async def _chat_file(
    args: argparse.Namespace, settings: Settings, store: Any, engines: Any, recording: bytes
) -> int:
    from .audio import write_wav
    from .session import Session
    from .transports.console import ConsoleView, fan_out, latency_summary
    from .transports.file import Timeline, feed_recording

    position = [0.0]
    started = time.perf_counter()
    if args.fast:
        timeline = Timeline(engines.tts.sample_rate_hz, lambda: position[0])
    else:
        timeline = Timeline(engines.tts.sample_rate_hz, lambda: time.perf_counter() - started)
    view = ConsoleView(settings.get_profile().display_name, show_state=args.verbose > 0)
    session = Session(
        engines,
        settings,
        sink=fan_out(timeline, view),
        store=store,
        conversation_id=args.conversation,
        input_sample_rate_hz=16000,
        barge_in=True if args.barge_in is None else args.barge_in,
        realtime_playback=not args.fast,
    )
    await session.start(greet=args.greet)
    started = time.perf_counter()
    await feed_recording(session, recording, 16000, realtime=not args.fast, position=position)
    await session.close()
    write_wav(args.output, timeline.audio(len(recording) / 32000), timeline.sample_rate_hz)
    print(
        f"[conversation {session.conversation_id}: {len(view.metrics)} turns; "
        f"{latency_summary(view.metrics)}; wrote {args.output}]",
        file=sys.stderr,
    )
    return 0


async def _chat_mic(args: argparse.Namespace, settings: Settings, store: Any, engines: Any) -> int:
    from .session import Session
    from .skills import SkillRouter, TimerService
    from .transports.console import ConsoleView, fan_out, latency_summary
    from .transports.mic import MicrophoneSource, SpeakerSink, with_timer_chime

    source = MicrophoneSource(args.input_device)
    speaker = SpeakerSink(args.output_device)
    rate = source.open()
    speaker.open()
    view = ConsoleView(settings.get_profile().display_name)
    timers = TimerService(store)
    session = Session(
        engines,
        settings,
        sink=fan_out(with_timer_chime(speaker), view),
        store=store,
        conversation_id=args.conversation,
        input_sample_rate_hz=rate,
        barge_in=bool(args.barge_in),
        skills=SkillRouter(settings.skills, timers=timers) if settings.skills.enabled else None,
    )
    try:
        await timers.start()
        cid = await session.start(greet=args.greet is not False)
        mode = "barge-in on" if session.barge_in else "half-duplex: use --barge-in with a headset"
        print(f"[conversation {cid}; {mode}; Ctrl-C to stop]", file=sys.stderr, flush=True)
        await session.run(source.chunks())
    finally:
        await session.close()
        await timers.close()
        source.close()
        speaker.close()
        if view.metrics:
            print(f"[{latency_summary(view.metrics)}]", file=sys.stderr)
    return 0


def _run_until_signal(main: Any, *, graceful: bool = False) -> int:
    """Run a coroutine until it ends or SIGINT/SIGTERM arrives (then stop it cleanly).

    With ``graceful``, a signal first asks the running daemon to stop, and cancels it only if
    it has not stopped within half a second.
    """
    import signal

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)

        def on_signal() -> None:
            if graceful and _CURRENT_DAEMON:
                _CURRENT_DAEMON[0].stop()
                loop.call_later(0.5, task.cancel)
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return int(await task)
        except asyncio.CancelledError:
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


# ----------------------------------------------------------------------------- server


def _cmd_serve(args: argparse.Namespace) -> int:
    from .engines import load_engines
    from .transports.websocket import VoiceServer, check_server_settings

    settings = _settings(args)
    check_server_settings(settings)
    from . import heap

    heap.limit_arenas(settings.server.malloc_arenas)  # before the model threads start
    store = _open_store(settings)
    if store.backend != "sqlite":  # the URL without its password
        print(f"voicebot: conversation store {store.location}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    print("voicebot: loading and warming up the models...", file=sys.stderr, flush=True)
    engines = load_engines(settings)
    engines.warm_up()
    ready_s = time.perf_counter() - started

    async def serve() -> int:
        from .workers import prestarted_executor

        # Its threads all made now: the count an hour of use is compared with (bench --soak).
        asyncio.get_running_loop().set_default_executor(prestarted_executor())
        server = VoiceServer(engines, settings, store)
        await server.start()
        interval_s = settings.server.memory_trim_interval_s
        trimmer = asyncio.create_task(heap.trim_periodically(interval_s))
        print(
            f"voicebot: ready in {ready_s:.1f} s. Open {server.url} in a browser "
            f"(websocket at {server.url.replace('http', 'ws', 1)}ws)",
            file=sys.stderr,
            flush=True,
        )
        try:
            await server.serve_forever()
        finally:
            trimmer.cancel()
            # SIGTERM or Ctrl-C: replies in progress finish, the rest are closed with 1001.
            await server.drain()
        return 0

    try:
        return _run_until_signal(serve())
    finally:
        engines.close()
        store.close()


def _cmd_client(args: argparse.Namespace) -> int:
    return asyncio.run(_client(args))


async def _client(args: argparse.Namespace) -> int:
    from .audio import read_audio, write_wav
    from .events import AudioOut, Interrupted
    from .transports.client import REFUSAL_CLOSE_CODES, VoiceClient
    from .transports.file import Timeline

    if args.input:
        recording = read_audio(args.input, 16000)
        rate = 16000
    else:
        from .transports.mic import MicrophoneSource

        mic = MicrophoneSource(args.input_device)
        rate = mic.open()
    client = VoiceClient(
        args.url,
        sample_rate_hz=rate,
        token=args.token or "",
        profile=args.profile,
        conversation_id=args.conversation,
        # With the mic, open speakers let it hear the bot, which would interrupt itself.
        barge_in=bool(args.input) if args.barge_in is None else args.barge_in,
        greet=False,
        fallback_urls=args.more_urls,
        reconnect_for_s=args.reconnect_for,
    )
    ready = await client.connect()
    out_rate = int(ready["sample_rate"])
    print(
        f"[connected: conversation {ready['conversation_id']}, profile {ready['profile']}]",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    timeline = Timeline(out_rate, lambda: time.perf_counter() - started)
    speaker = None
    if not args.output:
        from .transports.mic import SpeakerSink

        speaker = SpeakerSink(args.output_device)
        speaker.open()

    async def send() -> None:
        if args.input:
            from .transports.file import chunks_paced

            async for chunk in chunks_paced(recording, rate):
                await client.send_audio(chunk)
            await client.stop()
        else:
            async for chunk in mic.chunks():
                await client.send_audio(chunk)

    sender = asyncio.create_task(send(), name="client-send")
    name = ready.get("display_name", "bot")
    try:
        async for item in client.events():
            if isinstance(item, bytes):
                if speaker is not None:
                    await speaker(AudioOut(0, item, out_rate))
                else:
                    timeline.add(item, out_rate)
                continue
            kind = item.get("type")
            if kind == "reconnecting":
                why = f"{item['code']} {item['reason']}".strip()
                print(f"[connection closed ({why}): reconnecting]", file=sys.stderr, flush=True)
            elif kind == "ready":
                print(
                    f"[resumed conversation {item['conversation_id']} at {client.url}]",
                    file=sys.stderr,
                    flush=True,
                )
            elif kind == "transcript" and item.get("text"):
                print(f"you: {item['text']}", flush=True)
            elif kind == "reply_done":
                print(f"{name}: {item['text']}", flush=True)
            elif kind == "interrupted":
                timeline.cut()
                if speaker is not None:
                    await speaker(Interrupted(0, ""))
                print(f"  [interrupted; heard: {item['heard_text']!r}]", flush=True)
            elif kind == "metrics":
                parts = ", ".join(f"{k} {v:.0f}" for k, v in item["ms"].items())
                print(f"[turn {item['turn_id']} ms: {parts}]", file=sys.stderr, flush=True)
            elif kind == "error":
                print(f"[error {item['code']}: {item['message']}]", file=sys.stderr, flush=True)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await client.close()
        if speaker is not None:
            speaker.close()
        if args.output:  # also on Ctrl-C (a cancelled task): the only way mic mode ends
            write_wav(args.output, timeline.audio(), out_rate)
            print(f"[wrote {args.output}]", file=sys.stderr)
    if client.closed_abnormally:
        print(
            f"[the server closed the session: {client.close_code} {client.close_reason}]",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_USAGE if client.close_code in REFUSAL_CLOSE_CODES else 1
    return 0


# ----------------------------------------------------------------------------- daemon


def _cmd_daemon(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.install_service or args.print_service:
        return _install_service(args)
    if [a for a in args.daemon_args if a != "--"]:
        raise VoicebotError(f"unexpected arguments: {' '.join(args.daemon_args)}")
    if bool(args.input) != bool(args.output):
        raise VoicebotError("--input and --output go together (file mode)")
    recording = b""
    if args.input:
        from .audio import read_audio

        recording = read_audio(args.input, 16000)
    else:
        from .transports.mic import resolve_device

        # Local and satellite mode alike: a mistyped device is a usage error, said once,
        # before any model loads (the reopen loop would otherwise retry it forever).
        resolve_device(args.input_device, "input")
        resolve_device(args.output_device, "output")
    from .engines.wake import MicroWakeWordDetector

    wake = MicroWakeWordDetector(
        settings.daemon.wake_word, threshold=settings.daemon.wake_threshold
    )
    engines = None
    store = None
    if not settings.daemon.server:
        from . import heap
        from .engines import load_engines

        heap.limit_arenas(settings.server.malloc_arenas)  # before the model threads start

        store = _open_store(settings)
        print("[loading models...]", file=sys.stderr, flush=True)
        engines = load_engines(settings)
        engines.warm_up()
    try:
        return _run_until_signal(
            _daemon(args, settings, wake, engines, store, recording), graceful=True
        )
    finally:
        if engines is not None:
            engines.close()
        if store is not None:
            store.close()


async def _daemon(
    args: argparse.Namespace,
    settings: Settings,
    wake: Any,
    engines: Any,
    store: Any,
    recording: bytes,
) -> int:
    from .audio import write_wav
    from .session import Session
    from .skills import SkillRouter, TimerService
    from .transports.console import ConsoleView, fan_out
    from .transports.daemon import ConversationMarker, Daemon, ResamplingSource, StatusReporter
    from .transports.file import Timeline, chunks_paced

    out_rate = engines.tts.sample_rate_hz if engines is not None else 22050
    started = time.perf_counter()
    view = ConsoleView(settings.get_profile().display_name, show_state=True)
    if args.input:
        output: Any = Timeline(out_rate, lambda: time.perf_counter() - started)
    else:
        from .transports.mic import SpeakerSink

        output = SpeakerSink(args.output_device)
        output.open()
    speaker = fan_out(output, view)
    # The speaker's timers (a local daemon's: the server keeps a satellite's).
    timers = TimerService(store) if store is not None and not settings.daemon.server else None
    skills = (
        SkillRouter(settings.skills, timers=timers)
        if timers is not None and settings.skills.enabled
        else None
    )

    # A local daemon continues its conversation across a restart (a crash, kill -9, an
    # update) when its last turn was within [daemon] conversation_timeout_s.
    marker = resumed = None
    if store is not None and not settings.daemon.server:
        marker = ConversationMarker(settings.data_path() / "daemon-conversation", store)
        resumed = await asyncio.to_thread(marker.last, settings.daemon.conversation_timeout_s)
    resume_id = [resumed[0]] if resumed else []

    async def remember(conversation_id: str) -> None:
        if marker is not None:
            await asyncio.to_thread(marker.remember, conversation_id)

    def make_conversation(sink: Any) -> Any:
        if settings.daemon.server:
            from .transports.satellite import RemoteConversation

            return RemoteConversation(
                settings.daemon.server,
                sink,
                token=settings.server.token,
                profile=args.profile,
                output_sample_rate_hz=out_rate,
            )
        return Session(
            engines,
            settings,
            sink=sink,
            store=store,
            input_sample_rate_hz=16000,
            barge_in=False,
            skills=skills,
            timer_key=_DAEMON_TIMERS,
            conversation_id=resume_id.pop() if resume_id else None,
        )

    status = StatusReporter(
        settings.daemon, workers=engines.workers if engines is not None else None
    )
    daemon = Daemon(
        settings.daemon,
        wake=wake,
        make_conversation=make_conversation,
        speaker=speaker,
        status=status,
        output_sample_rate_hz=out_rate,
        mute_for_cue=not args.input,  # a recording has no speaker to echo the cue
        on_conversation=remember,
        resumed_idle_s=resumed[1] if resumed else None,
    )
    _CURRENT_DAEMON[:] = [daemon]

    input_device = [args.input_device]

    def open_source() -> Any:
        if args.input:
            return chunks_paced(recording, 16000)
        from .transports.mic import MicrophoneSource

        mic = MicrophoneSource(input_device[0])
        rate = mic.open()
        if input_device[0] is not None:
            input_device[0] = mic.device_name  # indices change on replug: reopen by name
        # The daemon closes each source when its cycle ends: that closes the device too.
        return ResamplingSource(mic.chunks(), rate, close=mic.close)

    where = f"satellite of {settings.daemon.server}" if settings.daemon.server else "local models"
    print(
        f'[daemon ready: say "{wake.phrase}"; {where}]',
        file=sys.stderr,
        flush=True,
    )
    from .heap import trim_periodically

    trimmer = asyncio.create_task(trim_periodically(settings.server.memory_trim_interval_s))
    try:
        if timers is not None:
            await timers.start()
            if timers.running(_DAEMON_TIMERS):
                await daemon.open_conversation()  # timers set before a restart still ring
        await daemon.run(open_source, restart=not args.input)  # READY=1, watchdog, STOPPING=1
    finally:
        trimmer.cancel()
        if timers is not None:
            await timers.close()
        if args.input:
            write_wav(args.output, output.audio(len(recording) / 32000), out_rate)
            times = ", ".join(f"{t:.1f} s" for t in daemon.wake_times) or "none"
            print(f"[wake words heard at: {times}; wrote {args.output}]", file=sys.stderr)
        elif hasattr(output, "close"):
            output.close()
    return 0


_CURRENT_DAEMON: list[Any] = []
_DAEMON_TIMERS = "daemon"
"""The daemon's timers belong to the speaker, not to one conversation."""


_NOT_CARRIED = frozenset(
    {"help", "install_service", "print_service", "daemon_args", "credential_file"}
)
_CREDENTIAL_FILE = "/etc/voicebot/token"
"""Where ``--install-service`` writes the daemon's token (root only), read by systemd."""


def _given_flags(args: argparse.Namespace, command: str) -> list[str]:
    """The options given to ``command`` on this command line, written as flags again."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: list[str] = []
    for action in subparsers.choices[command]._actions:
        if not action.option_strings or action.dest in _NOT_CARRIED:
            continue
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            flags.append(action.option_strings[0 if value else 1])
        elif action.nargs == 0:
            flags.append(action.option_strings[-1])
        else:
            for item in value if isinstance(value, list) else [value]:
                flags += [action.option_strings[-1], str(item)]
    return flags


def _without_token(flags: list[str]) -> tuple[list[str], str | None]:
    """``flags`` less ``--token SECRET`` (or ``--token=SECRET``), and the last secret given."""
    kept: list[str] = []
    token = None
    items = iter(flags)
    for flag in items:
        if flag == "--token":
            token = next(items, "")
        elif flag.startswith("--token="):
            token = flag.split("=", 1)[1]
        else:
            kept.append(flag)
    return kept, token


def _write_private(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` with ``mode``, never readable by others in between."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), mode)  # an existing file keeps its old mode otherwise
        out.write(text)


def _install_service(args: argparse.Namespace) -> int:
    import shlex
    import shutil

    template = Path(__file__).resolve().parent.parent / "clients" / "systemd" / "voicebot.service"
    if not template.is_file():
        template = Path(__file__).resolve().parent / "systemd" / "voicebot.service"
    executable = shutil.which("voicebot") or f"{sys.executable} -m voicebot"
    exe_path = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "voicebot" else None
    command = [str(exe_path)] if exe_path else shlex.split(executable)
    passthrough = list(args.daemon_args or [])
    if passthrough[:1] == ["--"]:
        passthrough = passthrough[1:]
    # Flags given before --install-service go into the unit too (after -- they come last
    # and win): dropping them silently would install a different daemon than asked for.
    flags, token = _without_token([*_given_flags(args, "daemon"), *passthrough])
    global_flags = ["-" + "v" * args.verbose] if args.verbose else []
    global_flags += ["--quiet"] if args.quiet else []
    exec_start = shlex.join([*command, *global_flags, "daemon", *flags])
    environment = []
    credential = Path(args.credential_file).resolve()
    if token is not None:
        # Read by systemd (root) and handed to the service in $CREDENTIALS_DIRECTORY/token:
        # never in ExecStart, which every local user reads in the process list.
        environment.append(f"LoadCredential=token:{credential}")
    models = os.environ.get("VOICEBOT_MODELS")
    if models:
        environment.append(f"Environment=VOICEBOT_MODELS={models}")
    if args.config:
        environment.append(f"Environment=VOICEBOT_CONFIG={Path(args.config).resolve()}")
    unit = template.read_text().replace("@EXEC_START@", exec_start)
    unit = unit.replace("@ENVIRONMENT@\n", "".join(e + "\n" for e in environment))
    if args.print_service:
        print(unit, end="")
        if token is not None:
            print(f"write the token to {credential} (mode 0600, owner root)", file=sys.stderr)
        return 0
    target = Path(args.install_service)
    target.parent.mkdir(parents=True, exist_ok=True)
    if token is not None:
        credential.parent.mkdir(parents=True, exist_ok=True)
        _write_private(credential, token + "\n", 0o600)
        print(f"wrote the token to {credential} (mode 0600)", file=sys.stderr)
    _write_private(target, unit, 0o644)
    print(
        f"wrote {target}\nnow run: systemctl daemon-reload && systemctl enable --now {target.stem}",
        file=sys.stderr,
    )
    return 0


# ----------------------------------------------------------------------------- bench


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, format_side_by_side, run_isa_paths

    settings = _settings(args)
    sessions = args.sessions or ("1" if args.quick else "1,2,4")
    try:
        concurrency = tuple(int(n) for n in sessions.split(",") if n.strip())
    except ValueError:
        raise VoicebotError(f"--sessions takes numbers like 1,2,4, not {sessions!r}") from None
    try:
        pauses = tuple(int(n) for n in args.pauses.split(",") if n.strip())
    except ValueError:
        wrong = f"--pauses takes milliseconds like 300,500, not {args.pauses!r}"
        raise VoicebotError(wrong) from None
    if not pauses:
        raise VoicebotError("--pauses needs at least one length")
    turn_sentences = args.turn_sentences
    if turn_sentences is None and args.quick:
        turn_sentences = 1
    options = BenchOptions(
        turns=args.turns if args.turns is not None else (1 if args.quick else 6),
        concurrency=concurrency,
        wavs=tuple(args.wav or ()),
        reference=not args.no_reference,
        llm_tokens=16 if args.quick else 64,
        turn_sentences=turn_sentences,
        inner_pauses_ms=pauses,
    )
    for wav in options.wavs:
        if not Path(wav).is_file():
            raise VoicebotError(f"cannot read {wav}: no such file")
    path_label = os.environ.get("VOICEBOT_BENCH_ISA", "")

    def log(line: str) -> None:
        prefix = f"[bench {path_label}]" if path_label else "[bench]"
        print(f"{prefix} {line}", file=sys.stderr, flush=True)

    if args.quality:
        return _quality(settings, args)
    if args.stt_accuracy:
        return _stt_accuracy(settings, args, log)
    if args.wake:
        return _wake_accuracy(settings, args, log)
    if args.soak is not None:
        return _soak(settings, args, log)
    if args.wyoming:
        from . import bench_wyoming

        document = bench_wyoming.run(settings, log)
        print(bench_wyoming.format_table(document))
        if args.json:
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        return 0
    # The AVX2 path re-runs this very command line in a subprocess (bench.run_isa_paths).
    argv = sys.argv[1:] if "bench" in sys.argv[1:] else ["bench"]
    document = run_isa_paths(settings, options, args.isa, argv, log)
    print(format_side_by_side(document))
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    return 0


def _soak(settings: Settings, args: argparse.Namespace, log: Callable[[str], None]) -> int:
    from .bench_soak import SoakOptions, format_load_table, format_soak, run_soak
    from .models import default_models_dir
    from .speech_samples import SpeechMaker

    if args.soak <= 0:
        raise VoicebotError("--soak takes the minutes to run, more than 0")
    try:
        counts = [int(n) for n in (args.sessions or "4").split(",") if n.strip()]
    except ValueError:
        raise VoicebotError(f"--sessions takes numbers like 1,2,4, not {args.sessions!r}") from None
    maker = SpeechMaker.load(default_models_dir(settings.models_dir))
    # Several counts: one soak each, then how latency grows with the load (sessions per
    # replica at a given slowdown, under real-time use rather than all talking at once).
    reports = []
    for sessions in counts:
        options = SoakOptions(
            minutes=args.soak, sessions=sessions, avx2=args.isa != "best", config=args.config
        )
        reports.append(run_soak(maker, options, log))
        print(format_soak(reports[-1]), flush=True)
    if len(reports) > 1:
        print(format_load_table(reports))
    if args.json:
        document = reports[0] if len(reports) == 1 else {"runs": reports}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _wake_accuracy(settings: Settings, args: argparse.Namespace, log: Callable[[str], None]) -> int:
    from .bench import wake_accuracy
    from .engines import load_tts

    try:
        result = wake_accuracy(
            load_tts(settings),
            settings.daemon.wake_word,
            log,
            threshold=settings.daemon.wake_threshold,
        )
    except RuntimeError as error:
        raise VoicebotError(str(error)) from None
    print(
        f"wake word {result['wake_word']} (threshold {result['threshold']}): "
        f"heard {result['heard']} of {result['said']}; "
        f"{result['false_wakes']} false wakes in {result['ordinary_speech_min']} min of speech"
    )
    for name in result["missed"]:
        print(f"  missed: {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _stt_accuracy(settings: Settings, args: argparse.Namespace, log: Callable[[str], None]) -> int:
    from .bench import stt_accuracy
    from .engines import Engines, load_stt, load_tts, make_vad_factory
    from .engines.fake import FakeChat

    engines = Engines(
        stt=load_stt(settings),
        llm=FakeChat(),
        tts=load_tts(settings),
        vad_factory=make_vad_factory(settings),
    )
    try:
        result = stt_accuracy(engines, log)
    except RuntimeError as error:
        raise VoicebotError(str(error)) from None
    for label in ("fitted_window", "full_window"):
        row = result[label]
        print(
            f"{label:<14} WER {row['wer']:.3f}  exact {row['exact']}/{result['recordings']}  "
            f"p50 {row['ms']['p50']:.0f} ms  p95 {row['ms']['p95']:.0f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _quality(settings: Settings, args: argparse.Namespace) -> int:
    from .engines import Engines, load_llm, make_vad_factory
    from .engines.fake import FakeStt, FakeTts
    from .quality import evaluate

    llm = load_llm(settings, reference=settings.get_profile().llm_reference)
    engines = Engines(stt=FakeStt(), llm=llm, tts=FakeTts(), vad_factory=make_vad_factory(settings))
    report = evaluate(engines, settings, log=print)
    print(report.summary())
    print(f"({report.seconds:.0f} s; tuned on dev, measured on test: docs/quality.md)")
    if args.json:
        data = {
            "summary": report.summary(),
            "seconds": round(report.seconds, 1),
            "sets": {name: result.as_dict() for name, result in report.sets.items()},
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- history


def _cmd_history(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _open_store(settings)
    try:
        if args.history_command == "list":
            rows = store.conversations(limit=args.limit)
            if not rows:
                print("no conversations yet", file=sys.stderr)
            for info in rows:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.updated_at))
                preview = info.preview[:50] + ("..." if len(info.preview) > 50 else "")
                print(
                    f"{info.id}  {when}  {info.profile:<10} {info.turn_count:>3} turns  {preview}"
                )
        elif args.history_command == "delete":
            if args.all == bool(args.id):
                raise VoicebotError("name a conversation ID to delete, or --all")
            if args.all:
                count = store.delete_all()
                print(f"deleted {count} conversations", file=sys.stderr)
            elif not store.delete_conversation(args.id):
                raise VoicebotError(f"no conversation {args.id!r}: see `voicebot history list`")
            else:
                print(f"deleted conversation {args.id}", file=sys.stderr)
        elif args.history_command == "show":
            info = store.conversation(args.id)
            print(f"conversation {info.id} (profile {info.profile})")
            for turn in store.turns(args.id):
                when = time.strftime("%H:%M:%S", time.localtime(turn.created_at))
                flag = " [interrupted]" if turn.interrupted else ""
                print(f"[{when}] {turn.role}: {turn.text}{flag}")
        else:
            data = json.dumps(store.export(args.id), indent=2, ensure_ascii=False)
            if args.output:
                Path(args.output).write_text(data + "\n", encoding="utf-8")
            else:
                print(data)
    finally:
        store.close()
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="voicebot", description="A local voice assistant: talk, and it answers out loud."
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config (default ~/.config/voicebot/config.toml)"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list, pull, verify or locate the embedded models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="the catalog and what is pulled")
    pull = msub.add_parser("pull", help="download and verify models (default: the defaults)")
    pull.add_argument("ids", nargs="*", metavar="ID")
    pull.add_argument("--all", action="store_true", help="every pullable model in the catalog")
    pull.add_argument("--force", action="store_true", help="pull again even if present")
    verify = msub.add_parser("verify", help="re-check the sha256 of pulled models")
    verify.add_argument("ids", nargs="*", metavar="ID")
    path = msub.add_parser("path", help="print where a model is")
    path.add_argument("id", metavar="ID")
    models.set_defaults(func=_cmd_models)

    transcribe = sub.add_parser("transcribe", help="print the transcript of an audio file")
    transcribe.add_argument("file", metavar="FILE", help="wav, flac, mp3, ogg...")
    _add_engine_flags(transcribe, stt=True, llm=False, tts=False)
    transcribe.set_defaults(func=_cmd_transcribe)

    say = sub.add_parser("say", help="speak text into a WAV file (or the speaker)")
    say.add_argument("text", metavar="TEXT")
    say.add_argument("-o", "--output", metavar="OUT.wav", help="write here instead of playing")
    say.add_argument("--output-device", metavar="DEVICE", help="speaker name or index")
    _add_engine_flags(say, stt=False, llm=False, tts=True)
    say.set_defaults(func=_cmd_say)

    text = sub.add_parser("text", help="chat with the keyboard (same dialogue and store)")
    text.add_argument("--conversation", metavar="ID", help="resume a stored conversation")
    _add_engine_flags(text, stt=False, llm=True, tts=False)
    text.set_defaults(func=_cmd_text)

    reply = sub.add_parser("reply", help="answer a recorded question with a spoken WAV")
    reply.add_argument("input", metavar="IN.wav")
    reply.add_argument("-o", "--output", metavar="OUT.wav", required=True)
    reply.add_argument("--conversation", metavar="ID", help="resume a stored conversation")
    _add_engine_flags(reply, stt=True, llm=True, tts=True)
    reply.set_defaults(func=_cmd_reply)

    devices = sub.add_parser("devices", help="list microphones and speakers")
    devices.set_defaults(func=_cmd_devices)

    chat = sub.add_parser("chat", help="talk with the microphone and speaker (or a recording)")
    chat.add_argument("--input-device", metavar="DEVICE", help="microphone name or index")
    chat.add_argument("--output-device", metavar="DEVICE", help="speaker name or index")
    chat.add_argument(
        "--barge-in",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let speech interrupt the reply (default: off with the microphone, "
        "where open speakers echo; on with --input)",
    )
    chat.add_argument("--input", metavar="IN.wav", help="file mode: answer a recording")
    chat.add_argument("--output", metavar="OUT.wav", help="file mode: the replies, time-aligned")
    chat.add_argument(
        "--fast",
        action="store_true",
        help="file mode: no real-time pacing (the input waits while it replies)",
    )
    chat.add_argument(
        "--greet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="speak the profile's greeting first (default: on with the microphone)",
    )
    chat.add_argument("--conversation", metavar="ID", help="resume a stored conversation")
    _add_engine_flags(chat, stt=True, llm=True, tts=True)
    chat.set_defaults(func=_cmd_chat)

    serve = sub.add_parser("serve", help="the websocket server and browser client")
    serve.add_argument("--host", dest="server.host", metavar="ADDR", help="default 127.0.0.1")
    serve.add_argument("--port", dest="server.port", type=int, metavar="N", help="default 8765")
    serve.add_argument(
        "--token",
        dest="server.token",
        metavar="SECRET",
        help="shared secret clients must send (required beyond loopback)",
    )
    serve.add_argument("--max-sessions", dest="server.max_sessions", type=int, metavar="N")
    serve.add_argument("--idle-timeout", dest="server.idle_timeout_s", type=float, metavar="S")
    serve.add_argument(
        "--max-message-bytes",
        dest="server.max_message_bytes",
        type=int,
        metavar="N",
        help="largest websocket message (default 1 MiB)",
    )
    serve.add_argument(
        "--allow-origin",
        dest="server.allowed_origins",
        action="append",
        metavar="ORIGIN",
        help="another browser origin allowed (repeatable)",
    )
    serve.add_argument("--certfile", dest="server.certfile", metavar="PEM")
    serve.add_argument("--keyfile", dest="server.keyfile", metavar="PEM")
    serve.add_argument(
        "--insecure",
        dest="server.insecure",
        action="store_true",
        default=None,
        help="allow plain ws:// beyond loopback (audio and token in clear text on the network)",
    )
    _add_engine_flags(serve, stt=True, llm=True, tts=True)
    serve.set_defaults(func=_cmd_serve)

    client = sub.add_parser(
        "client",
        help="talk to a voicebot server from a file or the mic",
        description="Talk to a voicebot server. Exit status: 0 when the session ends normally "
        "(130 after Ctrl-C); 2 when the server refuses it (unreachable, close 1008 wrong "
        "token or unknown profile, 1013 full); 1 when it ends it otherwise (1001 shutting "
        "down, 1009 message too big, 1011 server error, 1006 connection lost).",
    )
    client.add_argument("url", metavar="URL", help="ws://HOST:PORT/ws")
    client.add_argument(
        "more_urls",
        nargs="*",
        metavar="URL",
        help="other replicas, tried in turn when reconnecting",
    )
    client.add_argument(
        "--reconnect-for",
        type=float,
        default=60.0,
        metavar="S",
        help="after a dropped connection or 1001 (server going away), reconnect and resume "
        "the conversation for up to S seconds (0: do not; default 60)",
    )
    client.add_argument("--input", metavar="FILE", help="stream this recording (default: mic)")
    client.add_argument("--output", metavar="OUT.wav", help="save the reply (default: play it)")
    client.add_argument("--input-device", metavar="DEVICE")
    client.add_argument("--output-device", metavar="DEVICE")
    client.add_argument("--token", metavar="SECRET")
    client.add_argument("--profile", metavar="NAME")
    client.add_argument("--conversation", metavar="ID")
    client.add_argument(
        "--barge-in",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let speech interrupt the reply (default: off with the microphone, "
        "where open speakers echo; on with --input)",
    )
    client.set_defaults(func=_cmd_client)

    daemon = sub.add_parser("daemon", help="smart-speaker mode: wake word, then talk")
    daemon.add_argument(
        "--wake-word",
        dest="daemon.wake_word",
        metavar="NAME",
        help="okay_nabu (default), hey_jarvis, alexa, hey_mycroft, or a .json",
    )
    daemon.add_argument(
        "--wake-threshold",
        dest="daemon.wake_threshold",
        type=float,
        metavar="P",
        help="detection cutoff 0-1 (default: the model's)",
    )
    daemon.add_argument(
        "--follow-up",
        dest="daemon.follow_up_s",
        type=float,
        metavar="S",
        help="seconds to answer back without the wake word (default 8)",
    )
    daemon.add_argument(
        "--command-timeout",
        dest="daemon.command_timeout_s",
        type=float,
        metavar="S",
        help="give up if nobody speaks after the wake word",
    )
    daemon.add_argument(
        "--conversation-timeout",
        dest="daemon.conversation_timeout_s",
        type=float,
        metavar="S",
        help="start a new conversation after this",
    )
    daemon.add_argument("--status-file", dest="daemon.status_file", metavar="FILE")
    daemon.add_argument(
        "--status-port",
        dest="daemon.status_port",
        type=int,
        metavar="PORT",
        help="serve the state as JSON on http://127.0.0.1:PORT/",
    )
    daemon.add_argument(
        "--state-hook",
        dest="daemon.state_hook",
        metavar="CMD",
        help="run CMD STATE on every state change (LEDs)",
    )
    daemon.add_argument(
        "--cue",
        dest="daemon.cue",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="chime when woken (default on)",
    )
    daemon.add_argument(
        "--server",
        dest="daemon.server",
        metavar="URL",
        help="satellite mode: talk through a remote voicebot serve",
    )
    daemon.add_argument(
        "--token",
        dest="server.token",
        metavar="SECRET",
        help="the remote server's token (satellite mode)",
    )
    daemon.add_argument("--input-device", metavar="DEVICE")
    daemon.add_argument("--output-device", metavar="DEVICE")
    daemon.add_argument("--input", metavar="IN.wav", help="file mode: run over a recording")
    daemon.add_argument("--output", metavar="OUT.wav", help="file mode: what it said")
    daemon.add_argument(
        "--install-service",
        metavar="UNIT_PATH",
        nargs="?",
        const="/etc/systemd/system/voicebot.service",
        help="write a systemd unit running this daemon (default path "
        "/etc/systemd/system/voicebot.service)",
    )
    daemon.add_argument(
        "--print-service", action="store_true", help="print that systemd unit instead of writing it"
    )
    daemon.add_argument(
        "--credential-file",
        metavar="FILE",
        default=_CREDENTIAL_FILE,
        help="with --install-service and --token: where the token is written (mode 0600) for "
        f"systemd's LoadCredential, never on the unit's command line (default {_CREDENTIAL_FILE})",
    )
    daemon.add_argument(
        "daemon_args",
        nargs=argparse.REMAINDER,
        help="with --install-service: daemon flags for the unit, after --",
    )
    _add_engine_flags(daemon, stt=True, llm=True, tts=True)
    daemon.set_defaults(func=_cmd_daemon)

    bench = sub.add_parser("bench", help="measure latency and speed (docs/benchmarks.md)")
    bench.add_argument("--turns", type=int, help="utterances per session (default 6)")
    bench.add_argument(
        "--sessions", help="websocket sessions talking at the same moment (default 1,2,4)"
    )
    bench.add_argument(
        "--isa",
        choices=("both", "best", "avx2"),
        default="both",
        help="the machine's best instruction set, AVX2 only (a capped subprocess), or both",
    )
    bench.add_argument(
        "--turn-sentences",
        type=int,
        metavar="N",
        help="sentences from each end-of-turn set (default all; 0 skips the end-of-turn run)",
    )
    bench.add_argument(
        "--pauses",
        default="300,400,500,600,700,800",
        metavar="MS,...",
        help="pause lengths inside sentences in the end-of-turn run",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run that checks the benchmark works (numbers mean nothing)",
    )
    bench.add_argument("--wav", action="append", metavar="FILE", help="add your own recording")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument(
        "--quality",
        action="store_true",
        help="only answer quality, on the dev and the test set (docs/quality.md)",
    )
    bench.add_argument(
        "--stt-accuracy",
        action="store_true",
        help="only speech recognition accuracy, fitted vs full encoder window",
    )
    bench.add_argument(
        "--wake",
        action="store_true",
        help="only the wake word: hits across voices and speeds, false wakes on ordinary speech",
    )
    bench.add_argument(
        "--wyoming",
        action="store_true",
        help="only the Wyoming servers: voicebot against wyoming-faster-whisper and wyoming-piper",
    )
    bench.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="only the soak: a real server under SESSIONS (default 4) real-time sessions with "
        "barge-ins, reconnects and bad frames for MINUTES; resources and latency at start and end",
    )
    bench.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the plain faster-whisper and llama.cpp reference runs",
    )
    _add_engine_flags(bench, stt=True, llm=True, tts=True)
    bench.set_defaults(func=_cmd_bench)

    history = sub.add_parser("history", help="stored conversations")
    hsub = history.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    hlist = hsub.add_parser("list", help="recent conversations")
    hlist.add_argument("--limit", type=int, default=20)
    hshow = hsub.add_parser("show", help="one conversation's turns")
    hshow.add_argument("id", metavar="ID")
    hdelete = hsub.add_parser(
        "delete", help="delete a conversation (or --all) with its feedback and facts, for good"
    )
    hdelete.add_argument("id", metavar="ID", nargs="?", default="")
    hdelete.add_argument("--all", action="store_true", help="delete every conversation")
    hexport = hsub.add_parser("export", help="one conversation as JSON")
    hexport.add_argument("id", metavar="ID")
    hexport.add_argument("-o", "--output", metavar="FILE")
    history.set_defaults(func=_cmd_history)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _register_wyoming(sub: Any) -> None:
    from .wyoming_cli import register

    register(sub)


_EXTRA_COMMANDS.append(_register_wyoming)


def _register_learning(sub: Any) -> None:
    from .learning_cli import register

    register(sub)


_EXTRA_COMMANDS.append(_register_learning)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        for noisy in ("httpx", "urllib3", "faster_whisper", "websockets.server"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        status = int(args.func(args) or 0)
    except VoicebotError as error:
        print(f"voicebot: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`voicebot models list | head`): stop quietly, as cat does.
        # Python would otherwise complain again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if args.command in _FAST_EXIT_COMMANDS:
        # Everything is saved and closed by now. Interpreter teardown with torch and
        # onnxruntime loaded takes over a second here, which would delay a service's stop
        # (SIGTERM must end the daemon within a second) and systemd's restarts.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(status)
    return status


_FAST_EXIT_COMMANDS = ("daemon", "serve", "chat", "wyoming")
