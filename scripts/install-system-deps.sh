#!/usr/bin/env bash
# Installs the Debian packages voicebot needs, only those missing.
#   libportaudio2  PortAudio, loaded by sounddevice for microphone and speaker
#   espeak-ng      a second, independent voice used to make test speech
#   pulseaudio     virtual sound devices (null sink, pipe source) for the real PortAudio test
#   libasound2-plugins  lets PortAudio's ALSA backend reach PulseAudio
#   chromium       the headless browser for the browser-client test
#   systemd        systemd-analyze, to verify the shipped unit file
#   cmake g++      compile llama-cpp-python, the OpenAI-compatible server the tests run
#                  (tests only: `make run` compiles nothing)
#   haproxy        the load balancer in front of two replicas in the tests (deploy/)
#   postgresql     the shared store ([store] url) in the tests: each run makes a throwaway
#                  cluster with initdb (tests/pg.py); Debian's own service is not used
# Usage: scripts/install-system-deps.sh [--test]
#   --test adds the test-only packages. voicebot compiles nothing: every engine comes as a wheel.
set -euo pipefail

packages=(libportaudio2)
for option in "$@"; do
  case "$option" in
    --test) packages+=(espeak-ng pulseaudio pulseaudio-utils libasound2-plugins alsa-utils
                       chromium systemd cmake g++ haproxy postgresql) ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "voicebot setup: please install these packages with your system's package manager: ${missing[*]}" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "voicebot setup: run as root or install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "voicebot setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
