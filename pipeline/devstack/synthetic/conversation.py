"""Scripted multi-speaker conversations spoken by espeak-ng.

The demo and the tests need audio with a known answer, and we do not want
recordings in the repository, so audio is synthesized at run time: every
speaker gets a distinct espeak-ng voice, turns are joined with short pauses (or,
where a turn says so, start before the previous one ends, so two voices overlap),
and the reference segments come from the synthesized samples.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

from pipeline.rttm import RttmTurn, format_rttm, speaker_label

ESPEAK_BINARY = "espeak-ng"

# Relative to the loudest 10 ms frame of an utterance. espeak's padding is
# digital silence, so the exact value only matters for resampler ringing and
# the quietest consonants; -40 dB keeps both on the right side.
_TRIM_THRESHOLD_DB = -40.0
_TRIM_FRAME_S = 0.010

# The mix is scaled to this peak so that every conversation has the same level
# and pcm16() never clips.
_PEAK = 0.9


@dataclass(frozen=True)
class Turn:
    speaker: int
    text: str
    # Seconds this turn starts before the previous one ends (an interruption); 0: after a pause.
    overlap_s: float = 0.0


@dataclass(frozen=True)
class Voice:
    """How one speaker is rendered: espeak-ng ``-v``, ``-p`` and ``-s``."""

    name: str
    pitch: int
    speed: int
    description: str


# Speakers differ in as many independent ways as espeak allows: base accent
# (vowel targets), variant (formants, gender, pitch range), pitch offset and
# speaking rate. Neighbouring indices are the most different pairs, because
# the 2-speaker case is the one everything is tested on. Median F0 measured
# with espeak-ng 1.51 is noted for each.
#
# British English is "en", not "en-gb": espeak-ng 1.51 silently ignores a
# "+variant" on "en-gb", which would give every British speaker one voice.
VOICES: tuple[Voice, ...] = (
    Voice("en-us+m3", pitch=25, speed=150, description="low male, US, slow (~90 Hz)"),
    Voice("en+f2", pitch=75, speed=180, description="high female, British, brisk (~255 Hz)"),
    Voice("en-gb-scotland+m7", pitch=60, speed=140, description="mid male, Scottish, slow (~120 Hz)"),
    Voice("en-029+f4", pitch=55, speed=190, description="female, Caribbean, fast (~195 Hz)"),
)


@dataclass(frozen=True)
class Segment:
    speaker: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Conversation:
    audio: np.ndarray
    sample_rate: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def talk_time_ms(self) -> dict[int, int]:
        totals: dict[int, float] = {}
        for seg in self.segments:
            totals[seg.speaker] = totals.get(seg.speaker, 0.0) + seg.duration_s
        return {spk: round(t * 1000) for spk, t in sorted(totals.items())}

    def reference_turns(self) -> list[RttmTurn]:
        """The answer key: each segment as an RTTM turn of speaker spk0, spk1, ..."""
        return [RttmTurn(speaker_label(seg.speaker), seg.start_s, seg.end_s) for seg in self.segments]

    def to_rttm(self, uri: str) -> str:
        return format_rttm(uri, self.reference_turns())

    def pcm16(self) -> bytes:
        """Signed 16-bit little-endian mono, as carried in audio.chunk record values."""
        return self._int16().tobytes()

    def write_wav(self, path: str | os.PathLike[str]) -> None:
        # Written from the same integers as pcm16() so the file and the stream
        # carry identical samples (libsndfile would scale by 32768 instead).
        sf.write(path, self._int16(), self.sample_rate, subtype="PCM_16")

    def _int16(self) -> np.ndarray:
        return np.round(np.clip(self.audio, -1.0, 1.0) * 32767.0).astype("<i2")


TWO_SPEAKER_SCRIPT: tuple[Turn, ...] = (
    Turn(0, "Good morning. Did you see the new schedule?"),
    Turn(1, "I did, and honestly it looks a lot tighter than the one we had last time."),
    Turn(0, "It is. We lost two weeks to the supplier delay."),
    Turn(1, "Could we move the testing phase to the end of the month, so nobody has to rush?"),
    Turn(0, "Maybe, but then the release slips too."),
    Turn(1, "I would rather ship a little late than ship something broken to our customers."),
    Turn(0, "Fair point. I will talk to the team today."),
    Turn(1, "Great. Send me the notes when you are done, and I will update the plan."),
    Turn(0, "Will do. Are you coming to the workshop on Friday?"),
    Turn(1, "Yes, I already booked the early train."),
    Turn(0, "Perfect, see you there."),
)

THREE_SPEAKER_SCRIPT: tuple[Turn, ...] = (
    Turn(0, "Thanks for joining, everyone. Let's keep this short."),
    Turn(1, "Sure. I have one update about the mobile app."),
    Turn(2, "And I have a question about the budget."),
    Turn(0, "Go ahead with the app first."),
    Turn(1, "The login bug is fixed, and the new build is in review."),
    Turn(2, "Nice. Does that mean we can start the beta next week?"),
    Turn(1, "If the review passes, yes."),
    Turn(0, "Good. Now, what about the budget?"),
    Turn(2, "We are over on cloud costs, mostly because of the test servers."),
    Turn(0, "Can we shut them down at night?"),
    Turn(2, "That would save about a third."),
    Turn(1, "I can write the script for that today."),
    Turn(0, "Great, then we are done. Thank you all."),
)

# One sentence per turn keeps turns inside the 1.5 to 6 second range for every
# voice in the table.
_SENTENCE_POOL: tuple[str, ...] = (
    "I think we should start with the easy part.",
    "That sounds reasonable to me.",
    "Could you explain that one more time, please?",
    "The weather has been strange all week.",
    "We still need an answer from the other team.",
    "Honestly, I was not expecting it to work so well.",
    "Let me check my calendar and get back to you.",
    "The train was late again this morning.",
    "Did anyone remember to book the meeting room?",
    "I would like to see the numbers before we decide.",
    "My sister just moved to a small town by the sea.",
    "We can try it, but I am not convinced.",
    "That is exactly what I was worried about.",
    "The new coffee machine makes a terrible noise.",
    "Please send me the document when it is ready.",
    "I read an interesting article about rivers last night.",
    "We should probably ask for a second opinion.",
    "The garden looks much better after the rain.",
    "I have no idea where I left my keys.",
    "Let us meet again on Thursday afternoon.",
    "The deadline is closer than it looks.",
    "She told me the concert was sold out in an hour.",
    "I prefer walking when the streets are quiet.",
    "We ran the test twice and got the same result.",
    "Nobody expected the price to go up so quickly.",
    "The children built a castle out of old boxes.",
    "I will write a short summary for the others.",
    "There is a small bakery around the corner.",
    "It took me three tries to fix the bicycle.",
    "The library closes early on Sundays.",
    "We could split the work between the two of us.",
    "I am not sure the printer is still working.",
)


def script_for(num_speakers: int, turns: int = 12, seed: int = 0) -> list[Turn]:
    """A deterministic script of ``turns`` turns, roughly 2.5 to 3.5 s of speech each.

    Consecutive turns always change speaker (when there is more than one) and
    every speaker talks at least once.
    """
    if not 1 <= num_speakers <= len(VOICES):
        raise ValueError(f"num_speakers must be in 1..{len(VOICES)}, got {num_speakers}")
    if turns < num_speakers:
        raise ValueError(f"{turns} turns cannot give each of {num_speakers} speakers a turn")
    rng = np.random.default_rng(seed)
    speakers = list(range(num_speakers))
    while len(speakers) < turns:
        others = [s for s in range(num_speakers) if s != speakers[-1]] or [speakers[-1]]
        speakers.append(int(rng.choice(others)))
    # Cycling through a shuffle avoids repeats until the pool is used up.
    order: list[int] = []
    while len(order) < turns:
        order.extend(int(i) for i in rng.permutation(len(_SENTENCE_POOL)))
    return [Turn(spk, _SENTENCE_POOL[i]) for spk, i in zip(speakers, order)]


def speak(text: str, voice: Voice, sample_rate: int = 16000) -> np.ndarray:
    """One utterance as float32 mono at ``sample_rate``, edge silence trimmed."""
    if not text.strip():
        raise ValueError("cannot speak empty text")
    binary = shutil.which(ESPEAK_BINARY)
    if binary is None:
        raise RuntimeError(
            f"{ESPEAK_BINARY} not found on PATH; install the Debian package 'espeak-ng' (apt-get install espeak-ng)"
        )
    # Text goes through stdin so that a line starting with '-' is never read as an option.
    proc = subprocess.run(
        [binary, "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", "--stdin"],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"espeak-ng failed for voice {voice.name!r} (rc={proc.returncode}): {stderr}")
    raw, native_rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=False)
    if raw.ndim > 1:
        raw = raw.mean(axis=1)
    if native_rate != sample_rate:
        raw = soxr.resample(raw, native_rate, sample_rate, quality="HQ")
    clip = _trim(np.asarray(raw, dtype=np.float32), sample_rate)
    if clip.size == 0:
        raise ValueError(f"espeak-ng produced no audible speech for {text!r}")
    return clip


def synthesize(
    script: Sequence[Turn],
    sample_rate: int = 16000,
    pause_s: tuple[float, float] = (0.3, 0.8),
    seed: int = 0,
    edge_s: float = 0.5,
    voices: Sequence[Voice] = VOICES,
) -> Conversation:
    """Speak ``script`` turn by turn with a random pause from ``pause_s`` between turns.

    A turn with ``overlap_s`` starts that long before the previous turn ends (at most as long
    as the previous turn) and no pause is drawn for it; the voices are mixed. ``edge_s`` of
    silence is put before the first and after the last turn. Segments are exact to the
    sample: each covers one trimmed utterance.
    """
    if not script:
        raise ValueError("script is empty")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    lo, hi = pause_s
    if not 0.0 <= lo <= hi:
        raise ValueError(f"pause_s must satisfy 0 <= low <= high, got {pause_s}")
    if edge_s < 0.0:
        raise ValueError(f"edge_s must be >= 0, got {edge_s}")
    for turn in script:
        if not 0 <= turn.speaker < len(voices):
            raise ValueError(f"speaker {turn.speaker} has no voice (have {len(voices)})")
        if turn.overlap_s < 0.0:
            raise ValueError(f"overlap_s must be >= 0, got {turn.overlap_s}")

    rng = np.random.default_rng(seed)
    edge = round(edge_s * sample_rate)
    clips: list[tuple[int, np.ndarray]] = []
    spans: list[tuple[int, int, int]] = []
    end = edge  # where the speech so far ends
    for i, turn in enumerate(script):
        clip = speak(turn.text, voices[turn.speaker], sample_rate)
        if i == 0:
            start = edge
        elif turn.overlap_s > 0.0:
            start = max(spans[-1][1], end - round(turn.overlap_s * sample_rate))
        else:
            start = end + round(rng.uniform(lo, hi) * sample_rate)
        clips.append((start, clip))
        spans.append((turn.speaker, start, start + clip.size))
        end = max(end, start + clip.size)

    audio = np.zeros(end + edge, dtype=np.float32)
    for start, clip in clips:
        audio[start : start + clip.size] += clip
    peak = float(np.max(np.abs(audio)))
    audio = (audio * (_PEAK / peak)).astype(np.float32)
    segments = [Segment(spk, start / sample_rate, end / sample_rate) for spk, start, end in spans]
    return Conversation(audio=audio, sample_rate=sample_rate, segments=segments)


def _trim(clip: np.ndarray, sample_rate: int) -> np.ndarray:
    frame = max(1, round(_TRIM_FRAME_S * sample_rate))
    n_frames = -(-clip.size // frame)
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[: clip.size] = clip
    rms = np.sqrt(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1))
    peak = float(rms.max()) if rms.size else 0.0
    if peak == 0.0:
        return clip[:0]
    loud = np.flatnonzero(rms >= peak * 10 ** (_TRIM_THRESHOLD_DB / 20))
    start = int(loud[0]) * frame
    end = min(clip.size, (int(loud[-1]) + 1) * frame)
    return clip[start:end]
