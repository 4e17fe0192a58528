"""Every tunable threshold, grouped per stage, with one profile object per chain.

A profile is a configuration choice, not a fork of the code: a worker builds its
stages from the configs of the profile its settings name (`Settings.profile`).
Defaults are documented where they are declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from topics.messages import SAMPLE_RATE


@dataclass(frozen=True)
class VadConfig:
    # Silero's 16 kHz model takes 512-sample frames (32 ms).
    frame_samples: int = 512
    # Hysteresis: speech starts at `threshold` and lasts until the probability falls below `release`.
    threshold: float = 0.5
    release: float = 0.35
    # Pauses shorter than this stay inside the speech (as references count them): a talker's
    # breath between two sentences is still their talking time.
    min_silence_s: float = 0.2
    # Labels are emitted per step; a step's window reaches `context_s` either side of it.
    step_s: float = 0.5
    context_s: float = 0.5
    # Silence at least this long separates speech runs; windows never cross it, so a
    # speaker change after a pause does not leak the previous voice into the window.
    run_gap_s: float = 0.25
    # Voiced audio needed in a window before it is worth embedding.
    min_window_voiced_s: float = 0.4

    def samples(self, seconds: float) -> int:
        return int(round(seconds * SAMPLE_RATE))


@dataclass(frozen=True)
class EmbeddingConfig:
    # Resemblyzer normalises input loudness to this level before its mel front end.
    target_dbfs: float = -30.0
    # Windows from different sessions are batched into one forward pass, waiting at most this long.
    max_batch: int = 32
    max_wait_s: float = 0.05
    device: str | None = None  # None: CUDA when present, else CPU
    # On CPU, torch's intra-op threads cost far more than they save on batches this small
    # (measured: 85 ms vs 21 ms of CPU per window with 2 threads vs 1); scale with processes instead.
    cpu_threads: int = 1


@dataclass(frozen=True)
class ClusteringConfig:
    # Cosine similarity to the nearest centroid below which a new speaker opens (while under the limit).
    new_speaker_similarity: float = 0.70
    # Once the speaker limit is reached, voices less similar than this to every speaker are ignored.
    ignore_similarity: float = 0.45
    # Only confident assignments move a centroid, so one odd window cannot drag a speaker away.
    update_similarity: float = 0.75
    # A turn survives silences up to this long; a longer one closes it.
    max_turn_gap_s: float = 1.0
    # Past the speaker limit, a voice unlike every speaker is provisional (clients never see it); after
    # this many steps (2 s of speech) the session merges its cheapest pair, which may free an id for it.
    provisional_min_steps: int = 4
    # Provisional voices open at once; beyond them a new voice joins the most alike.
    max_provisional: int = 2
    # The report gives the session's speech to the final speakers in pieces of at most this many steps.
    report_piece_steps: int = 2


@dataclass(frozen=True)
class SegmentationConfig:
    """Accurate profile, segment stage: pyannote segmentation-3.0 on a rolling window."""

    window_s: float = 5.0
    step_s: float = 0.5
    # A local speaker slot counts as present in a window when its activity peaks above this.
    active_threshold: float = 0.5
    # The model may keep two similar voices in one slot across a pause; a dip of the slot's
    # activity below this cuts it into separate runs (local speakers), each embedded on its own.
    split_below: float = 0.9
    # Two consecutive windows' slots are the same voice (one track) when their activity on the
    # shared frames agrees at least this much (shared activity / larger activity).
    stitch_agreement: float = 0.5
    # A track is embedded once it has this much activity in a window, again each time its activity
    # in the window has grown by `embed_growth`x, and at least every `embed_refresh_s` while it talks.
    min_embed_activity_s: float = 0.3
    embed_growth: float = 1.8
    embed_refresh_s: float = 2.0
    # Windows segmented in one forward pass (of any sessions): on one CPU core the cost per window
    # is lowest at about 8 (17 ms alone, 10 ms in a batch of 8, 13 ms in one of 16).
    batch_windows: int = 8
    device: str | None = None  # None: CUDA when present, else CPU
    cpu_threads: int = 1

    def samples(self, seconds: float) -> int:
        return int(round(seconds * SAMPLE_RATE))


@dataclass(frozen=True)
class TrackEmbeddingConfig:
    """Accurate profile, embed stage: CAM++ with activity-weighted statistics pooling."""

    # Overlapped-speech penalty on pooling weights: w = p ** gamma * softmax(beta * p) over slots,
    # so frames where another voice is as loud count less.
    gamma: float = 3.0
    beta: float = 10.0
    # The encoder sees only the part of the window where the requested tracks talk, padded by this
    # much each side and never less than `min_crop_s`: CAM++'s context layers average over every
    # frame they see, so other voices in the crop blur a short track's embedding (and cost compute).
    crop_margin_s: float = 0.15
    min_crop_s: float = 1.0
    # Crop lengths are rounded up to a multiple of this. oneDNN builds and caches its kernels per
    # input length: crops of every length filled its cache without end (the embed worker grew 14.5 %
    # in a 30-minute soak) and rebuilt a kernel on most calls; 17 lengths at 0.25 s keep memory flat
    # and cost a fifth less CPU per crop (`docs/reliability.md`).
    crop_quantum_s: float = 0.25
    max_batch: int = 16
    max_wait_s: float = 0.05
    device: str | None = None
    cpu_threads: int = 1


@dataclass(frozen=True)
class OverlapClusteringConfig:
    """Accurate profile, cluster stage: tracks to global speakers, windows to labels."""

    # Cosine distance to the nearest speaker past which a track opens a new speaker.
    new_speaker_distance: float = 0.45
    # The same while fewer speakers than the session's floor (the count given, or min_speakers) are open:
    # more voices are coming, and a twin opened on the way is grouped or merged back (phone band with the
    # count given: 37 -> 30 % live DER; below 0.35 twins multiply faster than they merge on the dev set).
    floor_new_speaker_distance: float = 0.38
    # Two speakers are one when their centroids come closer than this times (1/n_a + 1/n_b), n the embeddings
    # behind each: one voice's centroids differ by noise that shrinks with the evidence, another voice's do not
    # (None: never merge). A one-embedding speaker merges within 0.35 of an established one, two of 8 within 0.09.
    merge_distance: float | None = 0.35
    # While fewer speakers than the session's limit are open (the count given, else max_speakers), every
    # `split_every_steps` steps the session's newest `split_embeddings` trusted embeddings (about 40 s of speech;
    # each try costs 10 ms of CPU) are clustered again (as the report clusters) into one speaker more. The new
    # cluster opens a speaker when it holds `split_min_embeddings` or more and lies farther from every other than
    # this times (1/n_a + 1/n_b), three times the twins' reach, so it is never merged back as one. It finds voices
    # an open speaker's centroid absorbed on audio where voices lie close (phone band: count given 28.9 -> 19.6 %
    # live DER, estimated 37.1 -> 22.2 %; dev set unchanged at 3x the reach, 4.8 % at 2x, count estimated 5.6 %
    # at 2.3x). None: never.
    split_distance: float | None = 1.05
    split_every_steps: int = 2
    split_min_embeddings: int = 3
    split_embeddings: int = 100
    # The most speakers a session keeps at once (its state stays bounded); past it the cheapest one to merge or
    # drop makes room for a new voice. The speakers clients see are at most the speaker limit of them, grouped.
    max_open_speakers: int = 20
    # Only tracks with this much activity in the window move a centroid.
    update_min_activity_s: float = 0.8
    # Two tracks of a window are two voices (never one speaker) when both are at least this active
    # together for this long. Looser, and the segmentation's second slot for one reverberant or
    # band-limited voice (a split voice, shared activity mostly under 0.6) would count as an overlap.
    co_active_threshold: float = 0.6
    co_active_min_s: float = 0.1
    # Labels trail the newest audio by this much; more latency, more windows agree on each frame.
    latency_s: float = 1.0
    # Hysteresis on the aggregated activity: speech starts at `onset`, ends below `offset`.
    # Tuned on the dev set to one threshold; the two stay separate for noisier audio.
    onset: float = 0.45
    offset: float = 0.45
    # A turn survives pauses up to this long; a longer one closes it.
    max_turn_gap_s: float = 1.0
    # Final report: agglomerative clustering of the tracks' embeddings (average linkage, cosine).
    report_distance: float = 0.5
    # A report cluster with less speech than this is no speaker of its own: it joins its nearest speaker,
    # and it never counts towards the number of speakers asked for.
    report_min_speaker_s: float = 1.0
    # With a count wanted (given, or a bound the estimate falls outside) and more speakers wanted than the
    # threshold gives, a cluster counts towards that count only with at least this share of a speaker's even
    # part of the session's speech (and at least `report_min_speaker_s`). Otherwise the merge step picked
    # could be one where blips of a second or two fill the count while two voices share one cluster (phone
    # dev08, 5 given: clusters of 40, 55, 1.2, 2.3 and 1.2 s). Dev set and hard conditions, report with the
    # count given: the same figures anywhere from 0.15 to 0.3; 0.1 is too little for phone.
    report_min_speaker_share: float = 0.2
    # The report clusters at most this many embeddings; a longer session's are pooled first, the most alike
    # together, a stretch of the session at a time. The clustering's cost grows with the cube of what it
    # clusters (400 embeddings: 0.24 s, 800: 1.7 s, 1,600: 19.5 s on the 2-core machine; a session has
    # about 150 a minute), and a worker computing a report serves no other session meanwhile.
    report_max_embeddings: int = 500
    # In the report, a speaker's pauses shorter than this are part of their turn (breaths,
    # commas): the final report reads as turns, not as a flicker of fragments.
    report_fill_gap_s: float = 0.0


@dataclass(frozen=True)
class SpeakerNamingConfig:
    """Both profiles, cluster stage: session speakers named after enrolled profiles (`pipeline.stages.speaker_naming`)."""

    # Cosine similarity between a speaker's centroid and a profile's embedding from which the speaker
    # carries the profile's name; below it the speaker stays unknown. CAM++ (the accurate chain's) on the
    # enrolment dev set: every speaker that can be named right is from 0.30 to 0.70 (fewer past it), its
    # unknown voices take names below 0.60; the dev set's 37 readers, none enrolled, take names up to 0.68
    # (report false accept 1.5 % at 0.65, none from 0.70). 0.70 keeps every right name and gives none
    # wrongly. The fast chain's Resemblyzer has its own (PROFILES). docs/speakers.md has the sweeps.
    min_similarity: float = 0.70
    # A name once given holds while the similarity stays within this much below `min_similarity`,
    # so a speaker's name does not flicker as its centroid moves.
    keep_margin: float = 0.05
    # Embeddings behind a speaker's centroid before it may be named: one short embedding is too noisy.
    min_evidence: int = 2


@dataclass(frozen=True)
class SpeakerLinkingConfig:
    """Both profiles: speakers of several sessions linked into one voice each (`pipeline.stages.speaker_linking`)."""

    # Average-linkage cosine distance between report voices up to which they are one voice. A report voice is
    # a mean of many embeddings, so voices sit closer than single embeddings do: CAM++ over the dev set and the
    # enrolment conversations (58 report speakers, 53 readers), the one reader of two sessions 0.08 apart,
    # different readers 0.30 apart at the 1st percentile; every link is right from 0.10 to 0.20, two readers
    # merge from 0.25.
    link_distance: float = 0.15


@dataclass(frozen=True)
class Profile:
    name: str
    vad: VadConfig = field(default_factory=VadConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    track_embedding: TrackEmbeddingConfig = field(default_factory=TrackEmbeddingConfig)
    overlap_clustering: OverlapClusteringConfig = field(default_factory=OverlapClusteringConfig)
    naming: SpeakerNamingConfig = field(default_factory=SpeakerNamingConfig)
    linking: SpeakerLinkingConfig = field(default_factory=SpeakerLinkingConfig)

    @property
    def overlap_aware(self) -> bool:
        """The accurate chain (segmentation-3.0 + CAM++), or the fast one (Silero VAD + Resemblyzer)."""
        return self.name == "accurate"

    @property
    def latency_s(self) -> float:
        """How far labels trail the newest audio: configurable in the accurate chain, one step plus the look-ahead in the fast one."""
        if self.overlap_aware:
            return self.overlap_clustering.latency_s
        return self.vad.step_s + self.vad.context_s

    def with_latency(self, latency_s: float) -> Profile:
        """This profile with labels `latency_s` behind the audio (accurate chain only: between one step and one window)."""
        if latency_s == self.latency_s:
            return self
        if not self.overlap_aware:
            raise ValueError(
                "the latency is configurable in the accurate profile only; the fast one labels each step 0.5 s after it ends"
            )
        step, window = self.segmentation.step_s, self.segmentation.window_s
        if not step <= latency_s <= window:
            raise ValueError(f"latency must lie between the step ({step} s) and the window ({window} s)")
        return replace(self, overlap_clustering=replace(self.overlap_clustering, latency_s=latency_s))


PROFILES: dict[str, Profile] = {
    # Resemblyzer's voices sit closer together than CAM++'s: the enrolment set's unknown voices take names below
    # 0.70, the dev set's below 0.75 (report false accept 5.5 % at 0.72, none at 0.75; live 2.6 %), and enrolled
    # readers keep theirs up to 0.75, losing a quarter of them by 0.80.
    # Resemblyzer's report voices sit closer still (different readers 0.17 apart at the 0.5th percentile): the
    # recurring reader is linked from 0.08, two readers merge from 0.15.
    "fast": Profile(
        name="fast",
        naming=SpeakerNamingConfig(min_similarity=0.75),
        linking=SpeakerLinkingConfig(link_distance=0.09),
    ),
    "accurate": Profile(name="accurate"),
}


def load_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
