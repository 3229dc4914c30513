// voicebot browser client: microphone -> websocket (docs/protocol.md) -> reply audio.
//
// Plain ES module, no build step and nothing fetched from elsewhere: it must work offline.
// The flow: a click creates the AudioContext (browsers only allow audio after a gesture),
// opens the microphone into an AudioWorklet (capture-worklet.js) that emits PCM16 frames,
// connects to /ws, sends `start`, waits for `ready`, then streams the frames. Reply audio is
// played gaplessly by scheduling one AudioBufferSourceNode per chunk back to back on the
// AudioContext clock; `interrupted` stops them all at once.

const STORAGE = {
  conversation: "voicebot.conversation_id",
  profile: "voicebot.profile",
  token: "voicebot.token",
};
const FRAME_MS = 20; // length of the audio frames sent
const MIN_RATE_HZ = 8000; // the server accepts 8000-48000 Hz input
const MAX_RATE_HZ = 48000;
const FALLBACK_RATE_HZ = 16000; // sent when the AudioContext's rate is outside that range
const PRE_READY_MAX_S = 3; // audio kept while the session opens, sent after `ready`
const MAX_BUFFERED_BYTES = 1 << 20; // a stalled socket drops audio rather than queueing it
const BACKOFF_S = [0.5, 1, 2, 4, 8, 15]; // reconnect delays (with jitter)
const PLAY_LEAD_S = 0.05; // margin when playback restarts after a gap
const TOKEN_NOTICE =
  "This server needs a token: enter it in the Token field, then press Start talking.";
const STAGES = [
  ["voice_to_voice", "voice to voice"],
  ["end_of_turn", "end of turn detected"],
  ["stt", "speech to text"],
  ["llm_first_token", "first token"],
  ["first_piece", "first sentence"],
  ["first_audio", "first audio"],
  ["llm_done", "reply written"],
];

/*
 * Test hook, read by tests/test_browser.py. Only a page opened with `?test` in its URL has it
 * (`window.voicebotTest`); without the flag it is not exposed and keeps no event log.
 *   events        the server's JSON events as received (the last 500)
 *   sent          the JSON messages sent (start, text, interrupt, stop), token redacted
 *   audioBytes    reply audio bytes received
 *   playedChunks  reply audio chunks scheduled for playback
 *   endedChunks   scheduled chunks that played to their end (not stopped)
 *   playing       audio buffers scheduled or playing now
 *   playEnd       AudioContext time at which the scheduled audio ends (0: none scheduled)
 *   currentTime   the AudioContext's time now
 *   replyStarts   {turn_id: AudioContext time at which that spoken turn's reply starts}
 *   heardMs       {turn_id: end of the user's speech to the reply heard, in ms}
 *   outputPeak    the loudest sample seen on the playback output (0..1), by an AnalyserNode
 *   timers        the timers shown: [{id, name, seconds, remaining_s, ringing}]
 *   ringing       true while the ring (a WebAudio beep loop) sounds
 *   beeps         beeps rung so far
 */
const TEST_MODE = new URLSearchParams(location.search).has("test");
const testHook = {
  events: [],
  sent: [],
  audioBytes: 0,
  playedChunks: 0,
  endedChunks: 0,
  replyStarts: {},
  heardMs: {},
  outputPeak: 0,
  get playing() {
    return app.play.sources.size;
  },
  get playEnd() {
    return app.play.sources.size ? app.play.next : 0;
  },
  get currentTime() {
    return app.ctx ? app.ctx.currentTime : 0;
  },
  get timers() {
    return [...app.timers.values()].map((t) => ({
      id: t.id,
      name: t.name,
      seconds: t.seconds,
      remaining_s: timerRemainingS(t),
      ringing: t.ringing,
      paused: t.paused,
    }));
  },
  get ringing() {
    return app.ring.timer !== 0;
  },
  beeps: 0,
};
if (TEST_MODE) window.voicebotTest = testHook;

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  interrupt: $("interrupt"),
  hangup: $("hangup"),
  newConversation: $("new-conversation"),
  profile: $("profile"),
  tokenRow: $("token-row"),
  token: $("token"),
  rememberToken: $("remember-token"),
  notice: $("notice"),
  status: $("status"),
  statusText: $("status-text"),
  botName: $("bot-name"),
  log: $("log"),
  empty: $("empty"),
  composer: $("composer"),
  text: $("text"),
  conversationLabel: $("conversation-label"),
  latencyLabel: $("latency-label"),
  timers: $("timers"),
  timerList: $("timer-list"),
  stopRinging: $("stop-ringing"),
  memory: $("memory"),
  factList: $("fact-list"),
};

const app = {
  config: null, // GET /config.json
  wanted: false, // the user started a session and has not hung up
  fatal: "", // why reconnecting is pointless (a wrong token), shown to the user
  ws: null,
  ready: null, // the `ready` message of the open session
  sessionSeq: 0, // turn ids restart with each session: bubbles are keyed by both
  attempt: 0, // reconnect attempts since the last `ready`
  retryTimer: 0,
  freshConversation: false, // start a new conversation, not the remembered one
  lostConversation: false, // the remembered conversation was not found on the server
  pendingText: [], // typed before the session was ready
  serverState: "",
  hearing: false,
  ctx: null,
  sendRate: FALLBACK_RATE_HZ,
  mic: null, // {stream, source, node}
  workletLoaded: false,
  preReady: [],
  preReadyBytes: 0,
  level: 0,
  levelFrame: 0,
  play: { sources: new Set(), next: 0, out: null },
  // "Heard after": the user's end of speech to the first reply sample played, for spoken turns.
  voice: {
    stopped: new Map(), // turn_id -> performance.now() when `speech_stopped` arrived
    awaiting: null, // the turn whose first reply audio is due (its transcript has arrived)
    span: new Map(), // turn_id -> ms from `speech_stopped` to its first reply sample heard
  },
  shownConversation: null, // the conversation whose turns the log shows
  bubbles: new Map(), // "session:turn:role" -> <li>
  cut: new Set(), // keys of interrupted bot bubbles
  timers: new Map(), // id -> {id, name, seconds, endsAt (performance.now() ms), ringing, item}
  timerTick: 0, // interval updating the countdowns
  ring: { timer: 0, stopAt: 0 }, // the beep loop while a finished timer rings
};
const RING_MAX_MS = 5 * 60 * 1000; // a ring nobody stops ends by itself
const RING_PERIOD_MS = 1200;

// ------------------------------------------------------------------------------ status

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.statusText.textContent = text;
}

function renderStatus() {
  if (!app.ready) return; // the connection code owns the status until `ready`
  if (app.hearing && app.serverState === "listening") {
    setStatus("hearing", "Hearing you…");
  } else if (app.serverState === "thinking") {
    setStatus("thinking", "Thinking…");
  } else if (app.serverState === "speaking") {
    setStatus("speaking", "Speaking");
  } else if (app.mic) {
    setStatus("listening", "Listening");
  } else {
    setStatus("listening", "Ready: type a message (microphone off)");
  }
  updateButtons();
}

function updateButtons() {
  ui.start.disabled = app.wanted && app.mic !== null;
  ui.start.textContent = app.wanted && app.mic ? "Microphone on" : "Start talking";
  ui.hangup.disabled = !app.wanted;
  ui.interrupt.disabled =
    !app.ready ||
    (app.serverState !== "thinking" &&
      app.serverState !== "speaking" &&
      app.play.sources.size === 0);
}

// Notices are keyed by concern ("mic", "server", "token"), one line each, so a microphone
// problem and a connection problem can be shown together.
function showNotice(key, text, kind = "error") {
  let line = ui.notice.querySelector(`[data-key="${key}"]`);
  if (!line) {
    line = document.createElement("p");
    line.dataset.key = key;
    ui.notice.append(line);
  }
  line.dataset.kind = kind;
  line.textContent = text;
  ui.notice.hidden = false;
}

function clearNotice(key) {
  ui.notice.querySelector(`[data-key="${key}"]`)?.remove();
  ui.notice.hidden = ui.notice.childElementCount === 0;
}

// ------------------------------------------------------------------------------ bubbles

function bubbleKey(turnId, role) {
  return `${app.sessionSeq}:${turnId}:${role}`;
}

function scrollToEnd() {
  const last = ui.log.lastElementChild;
  if (last) last.scrollIntoView({ block: "end", behavior: "auto" });
}

function addBubble(role, text, { key = "", history = false } = {}) {
  ui.empty.hidden = true;
  const item = document.createElement("li");
  item.className = `msg ${role}${history ? " history" : ""}`;
  const who = document.createElement("span");
  who.className = "visually-hidden";
  const name = app.ready ? app.ready.display_name : "Assistant";
  who.textContent = role === "user" ? "You: " : role === "bot" ? `${name}: ` : "";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  bubble.append(who, body);
  item.append(bubble);
  ui.log.append(item);
  if (key) app.bubbles.set(key, item);
  scrollToEnd();
  return item;
}

function addSystemLine(text, kind = "info") {
  const item = addBubble("system", text);
  item.dataset.kind = kind;
  return item;
}

function clearLog() {
  ui.log.replaceChildren();
  app.bubbles.clear();
  app.cut.clear();
  ui.empty.hidden = false;
  ui.latencyLabel.textContent = "";
}

function showHistory(history) {
  for (const turn of history || []) {
    if (!turn || !turn.text) continue;
    addBubble(turn.role === "user" ? "user" : "bot", turn.text, { history: true });
  }
}

function botBubble(turnId) {
  const key = bubbleKey(turnId, "bot");
  return app.bubbles.get(key) || addBubble("bot", "", { key });
}

function appendReplyPiece(turnId, text) {
  if (app.cut.has(bubbleKey(turnId, "bot"))) return; // late piece of a cut reply
  const item = botBubble(turnId);
  const body = item.querySelector(".text");
  const piece = document.createElement("span");
  piece.className = "piece";
  piece.textContent = (body.textContent ? " " : "") + text;
  body.append(piece);
  scrollToEnd();
}

function normalise(text) {
  return (text || "").replace(/\s+/g, " ").trim();
}

function markInterrupted(turnId, heardText) {
  const key = bubbleKey(turnId, "bot");
  const item = app.bubbles.get(key);
  if (!item || item.classList.contains("cut")) {
    app.cut.add(key);
    return;
  }
  const body = item.querySelector(".text");
  const full = normalise(body.textContent);
  const heard = normalise(heardText);
  // A Stop pressed just after the reply ended: all of it was heard, nothing was cut.
  if (item.classList.contains("done") && heard === full) return;
  app.cut.add(key);
  item.classList.add("cut");
  body.replaceChildren();
  if (heard) {
    const said = document.createElement("span");
    said.className = "heard";
    said.textContent = heard;
    body.append(said);
  }
  // Grey out what was written but never played; if the texts disagree, keep only the heard.
  const rest = !heard ? full : full.startsWith(heard) ? full.slice(heard.length).trim() : "";
  if (rest) {
    const unheard = document.createElement("del");
    unheard.className = "unheard";
    unheard.title = "Not played: the reply was interrupted";
    unheard.textContent = (heard ? " " : "") + rest;
    body.append(unheard);
  }
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = "interrupted";
  item.querySelector(".bubble").append(badge);
}

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function showMetrics(turnId, ms) {
  if (!ms || typeof ms !== "object") return;
  const item =
    app.bubbles.get(bubbleKey(turnId, "bot")) || app.bubbles.get(bubbleKey(turnId, "user"));
  if (!item) return;
  item.querySelector(".latency")?.remove();
  const main = typeof ms.voice_to_voice === "number" ? ms.voice_to_voice : ms.first_piece;
  const details = document.createElement("details");
  details.className = "latency";
  const summary = document.createElement("summary");
  summary.textContent =
    typeof main === "number" ? `${formatMs(main)} to first audio` : "latency details";
  const list = document.createElement("dl");
  const lines = [];
  for (const [stage, label] of STAGES) {
    if (typeof ms[stage] !== "number") continue;
    const term = document.createElement("dt");
    term.textContent = label;
    const value = document.createElement("dd");
    value.textContent = formatMs(ms[stage]);
    list.append(term, value);
    lines.push(`${label}: ${formatMs(ms[stage])}`);
  }
  summary.title = lines.join("\n");
  details.append(summary, list);
  item.append(details);
  // The server sent `speech_stopped` `end_of_turn` ms after the speech ended in the stream
  // (the silence that ends a turn); the rest was measured here, on this page's clock.
  const span = app.voice.span.get(turnId);
  app.voice.span.delete(turnId);
  const heard =
    typeof span === "number" && typeof ms.end_of_turn === "number"
      ? ms.end_of_turn + span
      : undefined;
  if (typeof heard === "number") {
    testHook.heardMs[turnId] = heard;
    const term = document.createElement("dt");
    term.textContent = "heard after (this browser)";
    const value = document.createElement("dd");
    value.textContent = formatMs(heard);
    list.append(term, value);
    summary.title += `\nheard after (this browser): ${formatMs(heard)}`;
  }
  if (typeof main === "number") {
    // "server": end of speech to the first reply audio sent. "heard after": to the first
    // reply sample played here, network and audio output included (typed turns have none).
    ui.latencyLabel.textContent =
      `Last reply: server ${formatMs(main)}` +
      (typeof heard === "number" ? ` · heard after ${formatMs(heard)}` : "");
    ui.latencyLabel.title =
      "server: from the end of your speech to the first reply audio sent\n" +
      "heard after: from the end of your speech to the reply starting to play in this page";
  }
  scrollToEnd();
}

// ------------------------------------------------------------------------------ playback

// The performance.now() time at which AudioContext time `contextTime` is heard.
function audibleAt(ctx, contextTime) {
  const stamp = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (stamp && stamp.performanceTime > 0) {
    return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
  }
  const latency = ctx.outputLatency || ctx.baseLatency || 0;
  return performance.now() + (contextTime - ctx.currentTime + latency) * 1000;
}

function playbackOutput(ctx) {
  if (app.play.out) return app.play.out;
  const out = ctx.createGain();
  out.connect(ctx.destination);
  if (TEST_MODE) {
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048; // ~43 ms at 48 kHz: sampled every 20 ms, no sample is missed
    out.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    setInterval(() => {
      if (!app.play.sources.size) return;
      analyser.getFloatTimeDomainData(samples);
      for (const sample of samples) {
        testHook.outputPeak = Math.max(testHook.outputPeak, Math.abs(sample));
      }
    }, 20);
  }
  app.play.out = out;
  return out;
}

function playChunk(buffer) {
  const ctx = app.ctx;
  const count = buffer.byteLength >> 1;
  if (!ctx || !app.ready || count === 0) return;
  const audio = ctx.createBuffer(1, count, app.ready.sample_rate);
  const channel = audio.getChannelData(0);
  const view = new DataView(buffer);
  for (let i = 0; i < count; i++) channel[i] = view.getInt16(2 * i, true) / 32768;
  const source = ctx.createBufferSource();
  source.buffer = audio;
  source.connect(playbackOutput(ctx));
  // Back to back on the context's clock: each chunk starts exactly where the last one ends.
  if (app.play.next < ctx.currentTime + 0.01) app.play.next = ctx.currentTime + PLAY_LEAD_S;
  source.start(app.play.next);
  noteReplyStart(ctx, app.play.next);
  app.play.next += audio.duration;
  app.play.sources.add(source);
  source.onended = () => {
    testHook.endedChunks += 1;
    app.play.sources.delete(source);
    if (app.play.sources.size === 0) updateButtons();
  };
  testHook.playedChunks += 1;
  updateButtons();
}

// The first audio after a spoken turn's transcript is that turn's reply: the server stops any
// earlier reply (`interrupted`) before it sends `speech_stopped`, and drops its stale audio.
function noteReplyStart(ctx, contextTime) {
  const turn = app.voice.awaiting;
  if (turn === null) return;
  app.voice.awaiting = null;
  const stoppedAt = app.voice.stopped.get(turn);
  app.voice.stopped.delete(turn);
  if (stoppedAt === undefined) return;
  app.voice.span.set(turn, audibleAt(ctx, contextTime) - stoppedAt);
  testHook.replyStarts[turn] = contextTime;
}

function stopPlayback() {
  for (const source of app.play.sources) {
    source.onended = null;
    try {
      source.stop();
      source.disconnect();
    } catch {
      // already stopped
    }
  }
  app.play.sources.clear();
  app.play.next = 0;
  updateButtons();
}

// ------------------------------------------------------------------------------ timers

function timerRemainingS(timer) {
  if (timer.ringing) return 0;
  if (timer.paused) return timer.pausedS;
  return Math.max(0, (timer.endsAt - performance.now()) / 1000);
}

function formatCountdown(seconds) {
  const total = Math.ceil(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function timerLabel(timer) {
  if (timer.name) return timer.name;
  return `${formatCountdown(timer.seconds)} timer`;
}

function renderTimers() {
  for (const timer of app.timers.values()) {
    const left = timer.item.querySelector(".timer-left");
    const shown = formatCountdown(timerRemainingS(timer));
    left.textContent = timer.ringing ? "Done!" : timer.paused ? `${shown} paused` : shown;
    timer.item.classList.toggle("ringing", timer.ringing);
    timer.item.classList.toggle("paused", timer.paused);
  }
  ui.timers.hidden = app.timers.size === 0;
  ui.stopRinging.hidden = app.ring.timer === 0;
  const counting = [...app.timers.values()].some((t) => !t.ringing && !t.paused);
  if (counting && !app.timerTick) app.timerTick = setInterval(renderTimers, 250);
  if (!counting && app.timerTick) {
    clearInterval(app.timerTick);
    app.timerTick = 0;
  }
}

function onTimerStarted(message) {
  let timer = app.timers.get(message.id);
  if (!timer) {
    const item = document.createElement("li");
    item.className = "timer";
    item.dataset.timerId = message.id;
    const name = document.createElement("span");
    name.className = "timer-name";
    const left = document.createElement("span");
    left.className = "timer-left";
    item.append(name, left);
    ui.timerList.append(item);
    timer = { id: message.id, item, ringing: false };
    app.timers.set(message.id, timer);
  }
  timer.name = message.name || "";
  timer.seconds = message.seconds;
  timer.endsAt = performance.now() + message.remaining_s * 1000;
  timer.paused = Boolean(message.paused);
  timer.pausedS = message.remaining_s;
  timer.item.querySelector(".timer-name").textContent = timerLabel(timer);
  renderTimers();
}

function onTimerFinished(message) {
  if (!app.timers.has(message.id)) onTimerStarted({ ...message, remaining_s: 0 });
  app.timers.get(message.id).ringing = true;
  // The announcement that follows is a turn-0 reply of its own, not part of the greeting's
  // (nor dropped as the rest of a greeting that was cut).
  app.bubbles.delete(bubbleKey(0, "bot"));
  app.cut.delete(bubbleKey(0, "bot"));
  startRinging();
  renderTimers();
}

function removeTimer(id) {
  const timer = app.timers.get(id);
  if (timer) {
    timer.item.remove();
    app.timers.delete(id);
  }
  if (![...app.timers.values()].some((t) => t.ringing)) stopRinging();
  renderTimers();
}

function beep(ctx, at, hz) {
  const osc = ctx.createOscillator();
  const gain = ctx.createGain();
  osc.frequency.value = hz;
  gain.gain.setValueAtTime(0, at);
  gain.gain.linearRampToValueAtTime(0.3, at + 0.01);
  gain.gain.setValueAtTime(0.3, at + 0.13);
  gain.gain.linearRampToValueAtTime(0, at + 0.15);
  osc.connect(gain).connect(playbackOutput(ctx));
  osc.start(at);
  osc.stop(at + 0.16);
  testHook.beeps += 1;
}

function ringOnce() {
  if (performance.now() > app.ring.stopAt) {
    stopRinging();
    renderTimers();
    return;
  }
  const ctx = ensureAudioContext();
  if (!ctx) return;
  if (ctx.state === "suspended") ctx.resume().catch(() => {});
  const at = ctx.currentTime + 0.02;
  beep(ctx, at, 880);
  beep(ctx, at + 0.2, 1175);
  beep(ctx, at + 0.4, 1568);
}

function startRinging() {
  app.ring.stopAt = performance.now() + RING_MAX_MS;
  if (app.ring.timer) return;
  ringOnce();
  app.ring.timer = setInterval(ringOnce, RING_PERIOD_MS);
}

function stopRinging() {
  if (app.ring.timer) clearInterval(app.ring.timer);
  app.ring.timer = 0;
}

function clearTimers({ keepRinging = false } = {}) {
  for (const timer of [...app.timers.values()]) {
    if (keepRinging && timer.ringing) continue;
    timer.item.remove();
    app.timers.delete(timer.id);
  }
  if (!keepRinging) stopRinging();
  renderTimers();
}

// ------------------------------------------------------------------------------ microphone

function micErrorMessage(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return (
        "Microphone access is blocked or was denied. Allow the microphone for this site " +
        "(the icon in the address bar), then press Start talking again. You can still type."
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Plug one in, then press Start talking again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone could not be opened: another application may be using it.";
    default:
      return `The microphone could not be started (${error && error.message}).`;
  }
}

function ensureAudioContext() {
  if (app.ctx) return app.ctx;
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) {
    showNotice("mic", "This browser has no Web Audio: voicebot cannot play or record audio.");
    return null;
  }
  app.ctx = new Context({ latencyHint: "interactive" });
  const rate = Math.round(app.ctx.sampleRate);
  app.sendRate = rate >= MIN_RATE_HZ && rate <= MAX_RATE_HZ ? rate : FALLBACK_RATE_HZ;
  return app.ctx;
}

async function startMic() {
  if (app.mic) return true;
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    showNotice(
      "mic",
      "The microphone only works on a secure page. Open this page as http://localhost:" +
        `${location.port || 80}/ on the machine running voicebot, or serve it over HTTPS ` +
        "(voicebot serve --certfile … --keyfile …). You can still type messages."
    );
    return false;
  }
  try {
    // Loaded before the microphone opens, so no audio is lost while the module loads.
    if (!app.workletLoaded) {
      await app.ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
      app.workletLoaded = true;
    }
  } catch (error) {
    showNotice("mic", `Audio capture is not available in this browser (${error.message}).`);
    return false;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
        channelCount: 1,
      },
      video: false,
    });
  } catch (error) {
    showNotice("mic", micErrorMessage(error));
    return false;
  }
  if (!app.wanted) {
    // Hung up while the permission prompt was open.
    for (const track of stream.getTracks()) track.stop();
    return false;
  }
  try {
    const node = new AudioWorkletNode(app.ctx, "voicebot-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
      processorOptions: { targetRate: app.sendRate, frameMs: FRAME_MS },
    });
    node.port.onmessage = (event) => onCaptured(event.data);
    const source = app.ctx.createMediaStreamSource(stream);
    source.connect(node);
    node.connect(app.ctx.destination); // keeps the node running; it outputs silence
    app.mic = { stream, source, node };
    for (const track of stream.getAudioTracks()) {
      track.addEventListener("ended", () => {
        stopMic();
        showNotice("mic", "The microphone stopped (unplugged?). Press Start talking to try again.");
        renderStatus();
      });
    }
    return true;
  } catch (error) {
    for (const track of stream.getTracks()) track.stop();
    showNotice("mic", `Audio capture could not start (${error.message}).`);
    return false;
  }
}

function stopMic() {
  const mic = app.mic;
  app.mic = null;
  if (!mic) return;
  mic.node.port.onmessage = null;
  mic.source.disconnect();
  mic.node.disconnect();
  for (const track of mic.stream.getTracks()) track.stop();
  ui.status.style.setProperty("--level", "0");
  updateButtons();
}

function onCaptured({ pcm, peak }) {
  const ws = app.ws;
  app.level = Math.max(app.level * 0.8, peak);
  if (!app.levelFrame) {
    app.levelFrame = requestAnimationFrame(() => {
      app.levelFrame = 0;
      ui.status.style.setProperty("--level", Math.min(1, app.level * 3).toFixed(2));
    });
  }
  if (!ws) return; // waiting to reconnect: this audio is dropped
  if (app.ready && ws.readyState === WebSocket.OPEN) {
    if (ws.bufferedAmount < MAX_BUFFERED_BYTES) ws.send(pcm);
    return;
  }
  // The session is opening: keep the latest few seconds so the first words are not lost.
  app.preReady.push(pcm);
  app.preReadyBytes += pcm.byteLength;
  while (app.preReadyBytes > PRE_READY_MAX_S * app.sendRate * 2) {
    app.preReadyBytes -= app.preReady.shift().byteLength;
  }
}

// ------------------------------------------------------------------------------ connection

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function send(message) {
  const ws = app.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(message));
  if (TEST_MODE) testHook.sent.push(message.token ? { ...message, token: "***" } : message);
  return true;
}

function startMessage() {
  const message = { type: "start", sample_rate: app.sendRate, barge_in: true };
  const conversation = app.freshConversation ? null : localStorage.getItem(STORAGE.conversation);
  if (conversation) message.conversation_id = conversation;
  else message.greet = true;
  if (ui.profile.value) message.profile = ui.profile.value;
  const token = ui.token.value.trim();
  if (token) message.token = token;
  return message;
}

function connect() {
  clearTimeout(app.retryTimer);
  app.retryTimer = 0;
  if (!app.wanted || app.ws) return;
  if (!app.attempt) setStatus("connecting", "Connecting…");
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (error) {
    showNotice("server", `Cannot open a connection to the server (${error.message}).`);
    return;
  }
  ws.binaryType = "arraybuffer";
  app.ws = ws;
  app.ready = null;
  app.serverState = "";
  app.hearing = false;
  app.preReady = [];
  app.preReadyBytes = 0;
  ws.onopen = () => {
    if (ws === app.ws) send(startMessage());
  };
  ws.onmessage = (event) => {
    if (ws !== app.ws) return;
    if (typeof event.data === "string") {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not for us
      }
      onEvent(message);
    } else {
      testHook.audioBytes += event.data.byteLength;
      playChunk(event.data);
    }
  };
  ws.onerror = () => {}; // the close event that follows says what happened
  ws.onclose = (event) => onClose(ws, event);
}

function reconnectReason(event, wasReady) {
  if (event.code === 1013) return "Server is busy";
  if (event.code === 1001) return "Server is restarting";
  return wasReady ? "Connection lost" : "Server unavailable";
}

function onClose(ws, event) {
  if (ws !== app.ws) return; // a socket we replaced on purpose
  const wasReady = app.ready !== null;
  app.ws = null;
  app.ready = null;
  app.serverState = "";
  app.hearing = false;
  app.preReady = [];
  app.preReadyBytes = 0;
  if (!app.wanted) {
    setStatus("offline", "Not connected");
    updateButtons();
    return;
  }
  if (app.fatal) {
    hangUp();
    setStatus("error", app.fatal);
    return;
  }
  if (app.lostConversation && !wasReady) {
    setStatus("connecting", "Starting a new conversation…");
    connect(); // at once: the server is up, it only did not know the conversation
    return;
  }
  if (event.code === 1000 && event.reason === "idle timeout") {
    hangUp();
    setStatus("offline", "Session ended after a long silence: press Start talking to resume");
    return;
  }
  const delay = BACKOFF_S[Math.min(app.attempt, BACKOFF_S.length - 1)];
  const seconds = delay * (0.8 + 0.4 * Math.random());
  app.attempt += 1;
  const reason = reconnectReason(event, wasReady);
  setStatus("reconnecting", `${reason}: reconnecting in ${Math.max(1, Math.round(seconds))} s…`);
  updateButtons();
  app.retryTimer = setTimeout(() => {
    app.retryTimer = 0;
    setStatus("reconnecting", `${reason}: reconnecting…`);
    connect();
  }, seconds * 1000);
}

function reconnectSoon() {
  // Replace the session now (a new conversation, another profile).
  const old = app.ws;
  app.ws = null;
  app.ready = null;
  stopPlayback();
  if (old) old.close(1000, "new session");
  app.attempt = 0;
  if (app.wanted) connect();
}

function hangUp() {
  app.wanted = false;
  clearTimeout(app.retryTimer);
  app.retryTimer = 0;
  app.pendingText = [];
  stopMic();
  stopPlayback();
  // A plain close, not `stop`: the server saves what was heard of a reply and ends at once.
  const ws = app.ws;
  app.ws = null;
  if (ws) ws.close(1000, "hang up");
  app.ready = null;
  app.serverState = "";
  setStatus("offline", "Not connected");
  updateButtons();
}

// ------------------------------------------------------------------------------ events

function onEvent(message) {
  if (TEST_MODE) {
    testHook.events.push(message);
    if (testHook.events.length > 500) testHook.events.shift();
  }
  switch (message.type) {
    case "ready":
      onReady(message);
      break;
    case "state":
      app.serverState = message.state;
      if (message.state !== "listening") app.hearing = false;
      renderStatus();
      break;
    case "speech_started":
      app.hearing = true;
      renderStatus();
      break;
    case "speech_stopped":
      app.voice.stopped.set(message.turn_id, performance.now());
      app.hearing = false;
      renderStatus();
      break;
    case "transcript":
      if (normalise(message.text)) {
        addBubble("user", message.text, { key: bubbleKey(message.turn_id, "user") });
        app.voice.awaiting = app.voice.stopped.has(message.turn_id) ? message.turn_id : null;
      } else {
        app.voice.stopped.delete(message.turn_id);
        addSystemLine("Sorry, I didn't catch that.");
      }
      break;
    case "reply_text":
      appendReplyPiece(message.turn_id, message.text);
      break;
    case "reply_done": {
      // Normally every piece came as reply_text; the full text fills a bubble that missed them.
      const item = app.bubbles.get(bubbleKey(message.turn_id, "bot"));
      if (item) item.classList.add("done");
      else if (normalise(message.text)) {
        botBubble(message.turn_id).classList.add("done");
        appendReplyPiece(message.turn_id, message.text);
      }
      addFeedbackControls(message.turn_id, message.text);
      break;
    }
    case "interrupted":
      stopPlayback();
      app.voice.awaiting = null; // cut before its first audio: nothing of it will be heard
      markInterrupted(message.turn_id, message.heard_text);
      break;
    case "metrics":
      showMetrics(message.turn_id, message.ms);
      break;
    case "error":
      onServerError(message);
      break;
    case "wake":
      addSystemLine(`Wake word: ${message.name}`);
      break;
    case "timer_started":
      onTimerStarted(message);
      break;
    case "timer_finished":
      onTimerFinished(message);
      break;
    case "timer_cancelled":
    case "timer_dismissed":
      removeTimer(message.id);
      break;
    case "facts":
      renderFacts(message.facts);
      break;
    case "feedback":
      onFeedback(message);
      break;
    default:
      break; // a newer server's event: ignore it
  }
}

function onReady(message) {
  app.ready = message;
  app.attempt = 0;
  app.sessionSeq += 1;
  app.freshConversation = false;
  app.play.next = 0;
  app.voice.stopped.clear(); // turn ids restart with each session
  app.voice.span.clear();
  app.voice.awaiting = null;
  clearNotice("server");
  clearNotice("token");
  const conversation = message.conversation_id;
  // The server sends the running timers again after `ready`; a ringing one keeps ringing.
  clearTimers({ keepRinging: conversation === app.shownConversation });
  localStorage.setItem(STORAGE.conversation, conversation);
  if (app.shownConversation !== conversation) {
    clearLog();
    showHistory(message.history);
    app.shownConversation = conversation;
  }
  if (app.lostConversation) {
    app.lostConversation = false;
    addSystemLine("The previous conversation was not found on the server: this is a new one.");
  }
  ui.conversationLabel.textContent = `Conversation ${conversation}`;
  ui.conversationLabel.dataset.conversationId = conversation;
  ui.botName.textContent = message.display_name ? `· ${message.display_name}` : "";
  if (!ui.profile.options.length && Array.isArray(message.profiles)) {
    fillProfiles(
      message.profiles.map((name) => ({ name, display_name: name })),
      message.profile
    );
  }
  for (const pcm of app.preReady) app.ws.send(pcm);
  app.preReady = [];
  app.preReadyBytes = 0;
  for (const text of app.pendingText.splice(0)) send({ type: "text", text });
  send({ type: "facts" }); // what this conversation remembers about the user
  renderStatus();
}

// ------------------------------------------------------------------------------ memory

function renderFacts(facts) {
  // One line per remembered fact ("you live in Lyon"), each with its own forget button.
  const items = (Array.isArray(facts) ? facts : []).map((fact) => {
    const item = document.createElement("li");
    item.className = "fact";
    item.dataset.key = fact.key;
    const text = document.createElement("span");
    text.className = "fact-text";
    const said = String(fact.text || `${fact.key}: ${fact.value}`);
    text.textContent = `${said.charAt(0).toUpperCase()}${said.slice(1)}.`;
    const forget = document.createElement("button");
    forget.type = "button";
    forget.className = "forget-fact";
    forget.textContent = "Forget";
    forget.setAttribute("aria-label", `Forget that ${said}`);
    forget.addEventListener("click", () => {
      forget.disabled = true;
      send({ type: "forget_fact", key: fact.key });
    });
    item.append(text, forget);
    return item;
  });
  ui.factList.replaceChildren(...items);
  ui.memory.hidden = items.length === 0;
}

function onServerError(message) {
  const code = message.code || "error";
  if (code === "unauthorized") {
    ui.tokenRow.hidden = false;
    const sentToken = ui.token.value.trim() !== "";
    app.fatal = sentToken ? "Wrong token" : "The server needs a token";
    const wrong = "The server did not accept the token: check it, then press Start talking.";
    showNotice("token", sentToken ? wrong : TOKEN_NOTICE);
    ui.token.focus();
    return;
  }
  if (code === "rate_limited") {
    app.fatal = "Too many failed attempts";
    showNotice("token", "Too many wrong tokens from this address: wait a minute, then retry.");
    return;
  }
  if (code === "store" && !app.ready && !app.freshConversation) {
    // The remembered conversation no longer exists on this server: start a new one.
    localStorage.removeItem(STORAGE.conversation);
    app.freshConversation = true;
    app.lostConversation = true;
    return;
  }
  if (code === "config" && !app.ready) {
    localStorage.removeItem(STORAGE.profile);
    const fallback = app.config?.default_profile;
    if (fallback && ui.profile.value !== fallback) {
      ui.profile.value = fallback;
      addSystemLine(`Unknown profile: using ${fallback} instead.`, "error");
      return;
    }
    app.fatal = `Server configuration error: ${message.message}`;
  }
  addSystemLine(`Error (${code}): ${message.message}`, "error");
}

// ------------------------------------------------------------------------------ config

function fillProfiles(profiles, selected) {
  ui.profile.replaceChildren();
  for (const profile of profiles) {
    const option = document.createElement("option");
    option.value = profile.name;
    option.textContent =
      profile.display_name && profile.display_name !== profile.name
        ? `${profile.display_name} (${profile.name})`
        : profile.name;
    ui.profile.append(option);
  }
  if (profiles.some((p) => p.name === selected)) ui.profile.value = selected;
}

async function loadConfig() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    app.config = await response.json();
    clearNotice("server");
  } catch {
    setStatus("offline", "Server unavailable");
    showNotice(
      "server",
      "Cannot reach the voicebot server. Is `voicebot serve` running? " +
        "Press Start talking to try again.",
      "connection"
    );
    return;
  }
  const saved = localStorage.getItem(STORAGE.profile);
  const profiles = Array.isArray(app.config.profiles) ? app.config.profiles : [];
  const known = profiles.some((p) => p.name === saved);
  fillProfiles(profiles, known ? saved : app.config.default_profile);
  ui.tokenRow.hidden = !app.config.token_required;
}

// ------------------------------------------------------------------------------ actions

async function startSession({ mic }) {
  // Runs in the click handler: the AudioContext must be created and resumed here.
  if (!ensureAudioContext()) return;
  const resumed = app.ctx.resume();
  clearNotice("mic");
  clearNotice("token");
  app.fatal = "";
  if (app.config?.token_required && !ui.token.value.trim()) {
    // Connecting would only be refused: ask for the token first.
    ui.tokenRow.hidden = false;
    showNotice("token", TOKEN_NOTICE);
    ui.token.focus();
    return;
  }
  const connecting = !app.wanted;
  app.wanted = true;
  updateButtons();
  if (!app.config) loadConfig(); // it failed at page load; try again, without waiting
  if (connecting) {
    app.attempt = 0;
    connect(); // while the microphone opens; its first audio waits for `ready`
  }
  if (mic) await startMic();
  await resumed.catch(() => {});
  renderStatus();
}

ui.start.addEventListener("click", () => startSession({ mic: true }));

ui.hangup.addEventListener("click", () => hangUp());

ui.interrupt.addEventListener("click", () => {
  stopPlayback();
  send({ type: "interrupt" });
});

ui.stopRinging.addEventListener("click", () => {
  stopRinging();
  for (const timer of [...app.timers.values()]) if (timer.ringing) removeTimer(timer.id);
  // Every other tab and device of the conversation stops too (and the announcement is cut).
  if (app.ready) send({ type: "text", text: "stop" });
});

ui.newConversation.addEventListener("click", () => {
  clearTimers();
  localStorage.removeItem(STORAGE.conversation);
  app.shownConversation = null;
  app.freshConversation = true;
  clearLog();
  ui.conversationLabel.textContent = "";
  if (app.wanted) reconnectSoon();
});

ui.profile.addEventListener("change", () => {
  localStorage.setItem(STORAGE.profile, ui.profile.value);
  // A conversation keeps its persona: another profile starts a new conversation.
  if (app.shownConversation) ui.newConversation.click();
});

// The token is kept for this tab only (sessionStorage) unless "Remember on this device" is
// ticked (localStorage, which outlives the browser); unticking forgets it there.
function saveToken() {
  const token = ui.token.value.trim();
  const remember = ui.rememberToken.checked && token !== "";
  if (remember) localStorage.setItem(STORAGE.token, token);
  else localStorage.removeItem(STORAGE.token);
  if (token && !remember) sessionStorage.setItem(STORAGE.token, token);
  else sessionStorage.removeItem(STORAGE.token);
}

ui.token.addEventListener("change", saveToken);
ui.rememberToken.addEventListener("change", saveToken);

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  ui.text.value = "";
  if (app.ready) {
    send({ type: "text", text });
    return;
  }
  app.pendingText.push(text);
  if (!app.wanted) startSession({ mic: false });
});

window.addEventListener("online", () => {
  if (app.wanted && !app.ws) {
    app.attempt = 0;
    connect();
  }
});

window.addEventListener("pagehide", () => {
  // Close cleanly so the server saves what was heard of a reply in progress.
  if (app.ws) app.ws.close(1000, "page closed");
});

ui.rememberToken.checked = localStorage.getItem(STORAGE.token) !== null;
ui.token.value =
  localStorage.getItem(STORAGE.token) || sessionStorage.getItem(STORAGE.token) || "";
updateButtons();
loadConfig();

// ------------------------------------------------------------------------------ feedback
// A thumbs up or down on every reply of the model, a bad one with an optional correction:
// stored with the reply's turn, for `voicebot data export` and `voicebot tune`
// (docs/learning.md).

function addFeedbackControls(turnId, text) {
  if (!turnId || !normalise(text)) return; // the greeting and timers are not rated
  const item = app.bubbles.get(bubbleKey(turnId, "bot"));
  if (!item || item.querySelector(".feedback")) return;
  const box = document.createElement("div");
  box.className = "feedback";
  const good = document.createElement("button");
  good.type = "button";
  good.className = "feedback-good";
  good.textContent = "\u{1F44D}";
  good.title = "Good answer";
  good.setAttribute("aria-label", "Good answer");
  const bad = document.createElement("button");
  bad.type = "button";
  bad.className = "feedback-bad";
  bad.textContent = "\u{1F44E}";
  bad.title = "Wrong answer";
  bad.setAttribute("aria-label", "Wrong answer");
  const form = document.createElement("form");
  form.className = "feedback-correction";
  form.hidden = true;
  const input = document.createElement("input");
  input.type = "text";
  input.maxLength = 2000;
  input.placeholder = "The answer should have been... (optional)";
  input.setAttribute("aria-label", "The right answer");
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.textContent = "Send";
  const status = document.createElement("span");
  status.className = "feedback-status";
  status.setAttribute("role", "status");
  form.append(input, submit);
  box.append(good, bad, form, status);
  item.querySelector(".bubble").append(box);
  good.addEventListener("click", () => {
    form.hidden = true;
    send({ type: "feedback", turn_id: turnId, rating: "good" });
  });
  bad.addEventListener("click", () => {
    form.hidden = false;
    input.focus();
    send({ type: "feedback", turn_id: turnId, rating: "bad" });
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const correction = input.value.trim();
    if (!correction) return;
    if (send({ type: "feedback", turn_id: turnId, rating: "bad", correction })) {
      form.dataset.sent = "true"; // hidden once the server has it
    }
  });
}

function onFeedback(message) {
  const item = app.bubbles.get(bubbleKey(message.turn_id, "bot"));
  const box = item?.querySelector(".feedback");
  if (!box) return;
  box.dataset.rating = message.rating;
  box.dataset.stored = String(Boolean(message.stored));
  const status = box.querySelector(".feedback-status");
  status.textContent = message.stored ? "Thanks, noted." : "Could not save this rating.";
  if (message.stored && message.rating === "bad") {
    const form = box.querySelector(".feedback-correction");
    if (form && form.dataset.sent === "true") form.hidden = true;
  }
}

