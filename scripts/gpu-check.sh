#!/usr/bin/env bash
# The CUDA path's figures, on a machine with an NVIDIA GPU, in under 10 minutes:
#   scripts/gpu-check.sh            (IMAGE=reflector-gpu:latest, built with `make image`)
#
# Everything runs from the GPU image (no Python needed on the host): it makes a 1-hour
# two-speaker meeting from pyannote's sample (30 s looped, so the models see real speech),
# starts the service with the GPU (REFLECTOR_GPU_DEVICE=cuda: it fails instead of falling back
# to the CPU), transcribes the meeting (upload) and diarizes it (from a loopback URL), and
# prints: model load times, wall time and real-time factor (RTF = processing seconds per audio
# second) of each job, the service's own /metrics figures, and the GPU memory used (peak,
# sampled every 0.5 s with nvidia-smi).
#
# Needs: nvidia-smi; podman with nvidia-container-toolkit's CDI spec (`--device
# nvidia.com/gpu=all`) or docker with `--gpus all`. Environment: IMAGE, ENGINE (the podman or
# docker command line), GPU_FLAGS (override the GPU option), RUN_FLAGS (more `run` options), MINUTES (meeting length, default 60),
# WHISPER_MODEL / DIARIZATION_MODEL / MODELS_DIR (your own weights, mounted at /models),
# DEVICE (default cuda; `DEVICE=cpu GPU_FLAGS=" " MINUTES=2` rehearses the script without a GPU).
set -euo pipefail

IMAGE=${IMAGE:-reflector-gpu:latest}
ENGINE=${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
MINUTES=${MINUTES:-60}
DEVICE=${DEVICE:-cuda}
read -r -a engine <<<"$ENGINE"
if [ -z "${GPU_FLAGS:-}" ]; then
  case "$(basename "${engine[0]}")" in podman) GPU_FLAGS="--device nvidia.com/gpu=all" ;; *) GPU_FLAGS="--gpus all" ;; esac
fi
read -r -a gpu_flags <<<"$GPU_FLAGS"
read -r -a run_flags <<<"${RUN_FLAGS:-}"
name=rg-gpu-check-$$
work=$(mktemp -d /var/tmp/rg-gpu-check.XXXXXX)
chmod 0777 "$work"  # the image's user (uid 10001) writes the state here
started=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$*" $(($(date +%s) - started)); }
cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
  "${engine[@]}" rm --force "$name" >/dev/null 2>&1 || true
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

step "GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
elif [ "$DEVICE" = cuda ]; then
  echo "nvidia-smi not found: this check needs an NVIDIA GPU and its driver" >&2
  exit 1
fi

env_args=(--env REFLECTOR_GPU_APIKEY=gpu-check --env "REFLECTOR_GPU_DEVICE=$DEVICE" --env REFLECTOR_GPU_METRICS=open)
[ -n "${WHISPER_MODEL:-}" ] && env_args+=(--env "REFLECTOR_GPU_WHISPER_MODEL=$WHISPER_MODEL")
[ -n "${DIARIZATION_MODEL:-}" ] && env_args+=(--env "REFLECTOR_GPU_DIARIZATION_MODEL=$DIARIZATION_MODEL")
[ -n "${MODELS_DIR:-}" ] && env_args+=(--volume "$MODELS_DIR:/models:ro")

step "start $IMAGE (device $DEVICE)"
"${engine[@]}" run --detach --name "$name" "${gpu_flags[@]}" "${run_flags[@]}" "${env_args[@]}" \
  --volume "$work:/state" "$IMAGE" >/dev/null
for _ in $(seq 1 300); do
  if "${engine[@]}" exec "$name" python -c "
import httpx, ssl, sys
ca = ssl.create_default_context(cafile='/state/tls/ca.crt')
sys.exit(httpx.get('https://localhost:8443/ready', verify=ca).status_code != 200)" >/dev/null 2>&1; then
    break
  fi
  if [ "$("${engine[@]}" inspect --format '{{.State.Running}}' "$name")" != true ]; then
    "${engine[@]}" logs "$name" | tail -n 40 >&2
    echo "the service exited before it was ready" >&2
    exit 1
  fi
  sleep 2
done
"${engine[@]}" logs "$name" 2>&1 | grep -E "loaded|ready|device|cuda" | tail -n 12 || true

# GPU memory, sampled while the jobs run.
if [ -n "${baseline:-}" ]; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$work/gpu-memory.csv" 2>/dev/null &
  sampler=$!
fi

step "transcribe and diarize a ${MINUTES}-minute meeting"
"${engine[@]}" exec --interactive --env MINUTES="$MINUTES" "$name" python - <<'EOF'
import functools, http.server, importlib.util, os, re, ssl, threading, time, wave
from pathlib import Path

import httpx
import numpy as np

minutes = float(os.environ["MINUTES"])
sample_dir = Path(next(iter(importlib.util.find_spec("pyannote.audio").submodule_search_locations))) / "sample"
with wave.open(str(sample_dir / "sample.wav")) as w:
    rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
repeats = int(np.ceil(minutes * 60 * rate / len(pcm)))
meeting = np.tile(pcm, repeats)[: int(minutes * 60 * rate)]
served = Path("/state/gpu-check")  # only this directory is served, on the container's loopback
served.mkdir(exist_ok=True)
path = served / "meeting.wav"
with wave.open(str(path), "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(meeting.tobytes())
seconds = len(meeting) / rate
print(f"meeting: {seconds:.0f} s of audio ({seconds / 60:.0f} min, pyannote's sample looped), {path.stat().st_size / 1e6:.0f} MB")

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

handler = functools.partial(Quiet, directory=str(served))
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()

client = httpx.Client(base_url="https://localhost:8443", verify=ssl.create_default_context(cafile="/state/tls/ca.crt"),
                      headers={"Authorization": "Bearer gpu-check"}, timeout=3600)
started = time.perf_counter()
with path.open("rb") as audio:
    response = client.post("/v1/audio/transcriptions", files={"file": ("meeting.wav", audio, "audio/wav")}, data={"language": "en"})
response.raise_for_status()
took = time.perf_counter() - started
words = len(response.json()["text"].split())
print(f"transcription: {took:.1f} s for {seconds:.0f} s of audio: RTF {took / seconds:.4f} ({seconds / took:.0f}x real time), {words} words")

started = time.perf_counter()
response = client.post("/diarize", params={"audio_file_url": f"http://127.0.0.1:{server.server_address[1]}/{path.name}"})
response.raise_for_status()
took = time.perf_counter() - started
turns = response.json()["diarization"]
print(f"diarization: {took:.1f} s: RTF {took / seconds:.4f} ({seconds / took:.0f}x real time), "
      f"{len(turns)} turns, {len({t['speaker'] for t in turns})} speakers")

metrics = client.get("/metrics").text
print("service metrics:")
for line in metrics.splitlines():
    if re.match(r"reflector_gpu_(model_load_seconds|realtime_factor|worker_up|worker_restarts_total)", line):
        print("  " + line)
path.unlink()
EOF

if [ -n "${sampler:-}" ]; then
  kill "$sampler" 2>/dev/null || true
  sampler=
  step "GPU memory"
  peak=$(sort -n "$work/gpu-memory.csv" | tail -n 1)
  echo "used before the service: ${baseline} MiB; peak while it worked: ${peak} MiB (+$((peak - baseline)) MiB)"
fi
"${engine[@]}" exec "$name" python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
step "done"
