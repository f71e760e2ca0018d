"""Sample-level helpers: reading espeak-ng's streamed WAV, resampling, noise, mixing, and writing 16-bit files."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Tuple

import numpy as np
import soundfile

TARGET_RATE = 16000
NOISE_KINDS: Tuple[str, ...] = ("white", "pink", "brown", "hum", "crackle")
# Headroom like sox's `gain -1`: FFT resampling can overshoot a little on clipped espeak output.
OUTPUT_GAIN = 10 ** (-1 / 20)


def parse_wav_bytes(data: bytes) -> Tuple[np.ndarray, int]:
    """Decode 16-bit PCM mono WAV bytes into float64 samples in [-1, 1] and the sample rate.

    espeak-ng writes the header before it knows the length (sizes are placeholders when streaming), so the data chunk
    is taken to run to the end of the bytes rather than trusting its declared size.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    position, rate, channels, bits = 12, None, None, None
    while position + 8 <= len(data):
        chunk_id, chunk_size = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])[0]
        body = position + 8
        if chunk_id == b"fmt ":
            audio_format, channels, rate = struct.unpack("<HHI", data[body:body + 8])
            bits = struct.unpack("<H", data[body + 14:body + 16])[0]
            if audio_format != 1 or bits != 16 or channels != 1:
                raise ValueError(f"unsupported WAV format {audio_format}, {bits} bit, {channels} channel(s)")
        elif chunk_id == b"data":
            if rate is None:
                raise ValueError("WAV data chunk before its fmt chunk")
            payload = data[body:]
            payload = payload[: len(payload) - len(payload) % 2]
            return np.frombuffer(payload, dtype="<i2").astype(np.float64) / 32768.0, int(rate)
        position = body + chunk_size + (chunk_size % 2)
    raise ValueError("WAV stream has no data chunk")


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-extending) the spectrum; deterministic, numpy only.

    The signal is zero-padded to a whole number of rate periods so the output length is exact, which also keeps the
    FFT's circular wrap-around inside the padding (espeak output already starts and ends in silence).
    """
    if source_rate == target_rate:
        return samples.astype(np.float64, copy=True)
    step = math.gcd(source_rate, target_rate)
    source_block, target_block = source_rate // step, target_rate // step
    length = samples.size
    padded_length = -(-length // source_block) * source_block + source_block
    padded = np.zeros(padded_length)
    padded[:length] = samples
    output_length = padded_length // source_block * target_block
    spectrum = np.fft.rfft(padded)
    bins = output_length // 2 + 1
    kept = np.zeros(bins, dtype=complex)
    shared = min(bins, spectrum.size)
    kept[:shared] = spectrum[:shared]
    resampled = np.fft.irfft(kept, n=output_length) * (output_length / padded_length)
    return resampled[: int(round(length * target_rate / source_rate))]


def noise(kind: str, length: int, rng: np.random.Generator, rate: int = TARGET_RATE) -> np.ndarray:
    """``length`` samples of a named background noise (see ``NOISE_KINDS``), RMS 0.1 (less if the peak is high)."""
    if kind == "white":
        signal = rng.standard_normal(length)
    elif kind in ("pink", "brown"):
        # Shape white noise's spectrum: 1/sqrt(f) power slope for pink, 1/f amplitude slope for brown.
        spectrum = np.fft.rfft(rng.standard_normal(length))
        frequencies = np.maximum(np.fft.rfftfreq(length, 1 / rate), 20.0)
        spectrum /= np.sqrt(frequencies) if kind == "pink" else frequencies
        signal = np.fft.irfft(spectrum, n=length)
    elif kind == "hum":
        t = np.arange(length) / rate
        mains = rng.choice([50.0, 60.0])
        signal = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 6))
        signal = signal + 0.05 * rng.standard_normal(length)
    elif kind == "crackle":
        # Sparse decaying clicks over a faint hiss, like a fire or rain on a window.
        signal = 0.02 * rng.standard_normal(length)
        decay = np.exp(-np.arange(int(0.004 * rate)) / (0.0008 * rate))
        for start in rng.integers(0, max(1, length - decay.size), size=max(1, length // 400)):
            signal[start:start + decay.size] += rng.uniform(-1, 1) * decay * rng.standard_normal(decay.size)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")
    signal = np.asarray(signal, dtype=np.float64)
    rms = float(np.sqrt(np.mean(signal ** 2))) or 1.0
    peak = float(np.max(np.abs(signal))) or 1.0
    # Spiky kinds (crackle) would clip at RMS 0.1; their peak is held to 0.9 instead.
    return signal * min(0.1 / rms, 0.9 / peak)


def mix_at_snr(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` plus ``background`` (same length) scaled so the speech-to-noise power ratio is ``snr_db``."""
    speech_power = float(np.mean(speech ** 2)) or 1e-12
    noise_power = float(np.mean(background ** 2)) or 1e-12
    scale = math.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return speech + scale * background


def trim_silence(samples: np.ndarray, threshold: float = 0.01, margin: int = 800) -> np.ndarray:
    """Drop leading and trailing stretches below ``threshold`` (keeping ``margin`` samples either side)."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if loud.size == 0:
        return samples
    return samples[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def fit_to_length(samples: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Place ``samples`` at a random offset in ``length`` zeros; centre-crop with short fades if it is longer."""
    if samples.size > length:
        start = (samples.size - length) // 2
        clip = samples[start:start + length].copy()
        fade = min(160, length // 4)
        ramp = np.linspace(0.0, 1.0, fade)
        clip[:fade] *= ramp
        clip[-fade:] *= ramp[::-1]
        return clip
    out = np.zeros(length)
    offset = int(rng.integers(0, length - samples.size + 1))
    out[offset:offset + samples.size] = samples
    return out


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples to 16-bit integers, rounding; a signal peaking above full scale is scaled down, not clipped."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 0.99:
        samples = samples * (0.99 / peak)
    return np.clip(np.rint(samples * 32767.0), -32768, 32767).astype(np.int16)


def write_audio(path: Path, samples: np.ndarray, rate: int = TARGET_RATE) -> int:
    """Write 16-bit mono audio (FLAC if ``path`` ends in ``.flac``, else WAV); returns the number of samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples if samples.dtype == np.int16 else to_int16(samples)
    audio_format = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    soundfile.write(str(path), data, rate, format=audio_format, subtype="PCM_16")
    return int(data.size)
