// Microphone capture for the voicebot browser client (an AudioWorklet module).
//
// Takes the mono microphone signal on the audio thread, converts it to PCM16 little-endian
// (the wire format of docs/protocol.md) and posts frames of `frameMs` milliseconds to the
// main thread as {pcm: ArrayBuffer, peak: number}. The buffer is transferred, not copied.
//
// Audio is sent at the AudioContext's own rate when the server accepts it (8000-48000 Hz);
// otherwise the page asks for `targetRate` (16000) and this resamples: an averaging
// decimator when going down (a crude low-pass, enough for speech recognition), linear
// interpolation when going up.

class VoicebotCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    // `sampleRate` is the AudioContext's rate, a global of the AudioWorkletGlobalScope.
    this.targetRate = opts.targetRate || sampleRate;
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.frameSamples = Math.max(1, Math.round((this.targetRate * (opts.frameMs || 20)) / 1000));
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.peak = 0;
    // Resampler state.
    this.sum = 0; // downsampling: sum of the inputs in the current output window
    this.count = 0;
    this.phase = 0; // position within the current output window (in input samples)
    this.previous = 0; // upsampling: the last input sample
  }

  push(value) {
    const clamped = value > 1 ? 1 : value < -1 ? -1 : value;
    const magnitude = clamped < 0 ? -clamped : clamped;
    if (magnitude > this.peak) this.peak = magnitude;
    // Int16Array stores the platform's byte order; every platform with Web Audio is
    // little-endian, which is what the protocol asks for.
    this.frame[this.fill++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.fill === this.frameSamples) {
      const pcm = this.frame.buffer;
      this.port.postMessage({ pcm, peak: this.peak }, [pcm]);
      this.frame = new Int16Array(this.frameSamples);
      this.fill = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    const samples = input && input[0];
    if (!samples) return true; // no microphone data yet (or the source was disconnected)
    if (this.step === 1) {
      for (let i = 0; i < samples.length; i++) this.push(samples[i]);
    } else if (this.step > 1) {
      for (let i = 0; i < samples.length; i++) {
        this.sum += samples[i];
        this.count += 1;
        this.phase += 1;
        if (this.phase >= this.step) {
          this.phase -= this.step;
          this.push(this.sum / this.count);
          this.sum = 0;
          this.count = 0;
        }
      }
    } else {
      for (let i = 0; i < samples.length; i++) {
        const current = samples[i];
        while (this.phase < 1) {
          this.push(this.previous + (current - this.previous) * this.phase);
          this.phase += this.step;
        }
        this.phase -= 1;
        this.previous = current;
      }
    }
    return true; // keep processing while the node is connected
  }
}

registerProcessor("voicebot-capture", VoicebotCapture);
