"""Piano rolls to and from Standard MIDI Files, and to sound.

The file format is the MIDI Manufacturers Association's "Standard MIDI Files 1.0" (1988): an
"MThd" header chunk (format, number of tracks, ticks per quarter note) and one "MTrk" chunk per
track, each a list of (delta time as a variable-length quantity, event). write_midi writes
format 1 at TICKS_PER_QUARTER ticks: a tempo track (tempo and a 4/4 time signature), then one
track per voice on MIDI channel = voice. read_midi reads any format 0 or 1 file with
ticks-per-quarter timing: running status, meta and sysex events, and a note-on of velocity 0 as
a note-off.

render_wav is a small additive synthesiser: each note is HARMONICS sine partials of its equal-
tempered frequency (440 Hz at MIDI 69) under an attack/decay envelope.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from nanodiffusion.data.chorales import LOW, STEPS_PER_QUARTER, Note, roll_to_notes
from nanodiffusion.data.files import check_file, write_atomically
from nanodiffusion.errors import NanodiffError

TICKS_PER_QUARTER = 480
TICKS_PER_STEP = TICKS_PER_QUARTER // STEPS_PER_QUARTER  # 120 ticks per sixteenth
VELOCITY = 80
HARMONICS = (1.0, 0.5, 0.25, 0.125)  # amplitudes of partials 1..4
ATTACK = 0.01  # seconds of linear rise
DECAY = 0.6  # seconds: the time constant of the exponential decay after the attack
RELEASE = 0.01  # seconds of linear fall at the note's end (no click)
PEAK = 0.9


def _vlq(n: int) -> bytes:
    """A variable-length quantity: 7 bits a byte, most significant first, high bit = more."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack(">I", len(data)) + data


def _track(events: list[tuple[int, bytes]]) -> bytes:
    """An MTrk chunk of (absolute tick, event bytes), in order, closed by End of Track."""
    data, now = bytearray(), 0
    for tick, event in events:
        data += _vlq(tick - now) + event
        now = tick
    data += b"\x00\xff\x2f\x00"
    return _chunk(b"MTrk", bytes(data))


def _check_roll(roll) -> np.ndarray:
    roll = np.asarray(roll)
    if roll.ndim != 3 or roll.shape[0] > 16 or LOW + roll.shape[1] > 128:
        raise NanodiffError(
            f"expected a roll [voices <= 16, pitches <= {128 - LOW}, steps], got {list(roll.shape)}"
        )
    return roll


def write_midi(roll, path: str | Path, bpm: float = 90) -> Path:
    """Write a roll [V, P, S] (uint8 or bool; row p is MIDI LOW + p, a step a sixteenth) as a
    format-1 MIDI file: a tempo track, then track v + 1 on channel v for voice v; each run of ones
    is one note of velocity VELOCITY."""
    roll = _check_roll(roll)
    if not bpm > 0:
        raise NanodiffError(f"bpm must be positive, got {bpm}")
    tempo = round(60_000_000 / bpm)  # microseconds per quarter note
    conductor = [(0, b"\xff\x51\x03" + tempo.to_bytes(3, "big")), (0, b"\xff\x58\x04\x04\x02\x18\x08")]
    tracks = [_track(conductor)]
    notes = roll_to_notes(roll)
    for voice in range(roll.shape[0]):
        events = []
        for v, pitch, start, length in notes:
            if v == voice:
                # sort key (tick, 0 = off before 1 = on): a note ending where another starts
                events.append(((start + length) * TICKS_PER_STEP, 0, bytes([0x80 | v, pitch, 0])))
                events.append((start * TICKS_PER_STEP, 1, bytes([0x90 | v, pitch, VELOCITY])))
        events.sort(key=lambda e: (e[0], e[1]))
        tracks.append(_track([(tick, event) for tick, _, event in events]))
    header = _chunk(b"MThd", struct.pack(">HHH", 1, len(tracks), TICKS_PER_QUARTER))
    data = header + b"".join(tracks)
    return write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


class _Reader:
    """Bytes of one track with a cursor; running out raises the file's 'truncated' line."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise NanodiffError(
                f"cannot read the MIDI file {self.path}: it is truncated (a track ends mid-event)"
            )
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise NanodiffError(
                f"cannot read the MIDI file {self.path}: it is truncated (a track ends mid-event)"
            )
        self.pos += n

    def vlq(self) -> int:
        n = 0
        for _ in range(4):
            b = self.byte()
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                return n
        raise NanodiffError(
            f"cannot read the MIDI file {self.path}: a variable-length number is over 4 bytes"
        )


def _track_notes(data: bytes, path: Path) -> list[tuple[int, int, int]]:
    """(pitch, start tick, end tick) of each note in one track's event bytes."""
    track, tick, running, notes = _Reader(data, path), 0, None, []
    sounding: dict[tuple[int, int], list[int]] = {}  # (channel, pitch) -> start ticks, oldest first
    while track.pos < len(data):
        tick += track.vlq()
        first = track.byte()
        if first >= 0x80:
            status, first = first, None
        elif running is None:
            raise NanodiffError(f"cannot read the MIDI file {path}: a data byte comes before any status byte")
        else:
            status = running  # running status: the last channel message's status byte is implied
        if status == 0xFF:  # meta event: type, length, data
            kind = track.byte()
            track.skip(track.vlq())
            if kind == 0x2F:  # end of track
                break
            continue
        if status in (0xF0, 0xF7):  # sysex: length, data
            track.skip(track.vlq())
            continue
        if status > 0xF0:
            raise NanodiffError(
                f"cannot read the MIDI file {path}: system message {status:#x} inside a track"
            )
        running = status  # kept across meta and sysex events, as lenient readers do
        a = track.byte() if first is None else first
        kind, channel = status & 0xF0, status & 0x0F
        if kind in (0xC0, 0xD0):  # program change, channel pressure: one data byte
            continue
        b = track.byte()
        if kind == 0x90 and b > 0:
            sounding.setdefault((channel, a), []).append(tick)
        elif kind in (0x80, 0x90) and sounding.get((channel, a)):
            notes.append((a, sounding[(channel, a)].pop(0), tick))
    # a note never switched off ends with its track
    notes += [(pitch, start, tick) for (_, pitch), starts in sounding.items() for start in starts]
    return notes


def read_midi(path: str | Path) -> list[Note]:
    """The notes (voice, MIDI pitch, start step, length in steps) of a MIDI file, in sixteenths
    (rounded, at least one step), sorted as roll_to_notes sorts them. A track's voice is its index,
    not counting a first track without notes (format 1's tempo track): what write_midi writes
    reads back as voices 0..V-1. Anything that is not a whole MIDI file is one line naming it."""
    path = check_file(path, "MIDI file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NanodiffError(f"cannot read the MIDI file {path}: {' '.join(str(e).split())}") from None
    if data[:4] != b"MThd":
        raise NanodiffError(f"cannot read the MIDI file {path}: not a MIDI file (no MThd header)")
    if len(data) < 14:
        raise NanodiffError(f"cannot read the MIDI file {path}: it is truncated (the header is cut short)")
    header_length, _, declared, division = struct.unpack(">IHHH", data[4:14])
    if header_length < 6:
        raise NanodiffError(f"cannot read the MIDI file {path}: its header is {header_length} bytes, under 6")
    if division & 0x8000 or division == 0:
        raise NanodiffError(f"cannot read the MIDI file {path}: SMPTE or zero timing is not supported")
    pos, tracks = 8 + header_length, []
    while pos < len(data) and len(tracks) < declared:
        if pos + 8 > len(data):
            raise NanodiffError(
                f"cannot read the MIDI file {path}: it is truncated (a chunk header is cut short)"
            )
        kind, length = data[pos : pos + 4], struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + length > len(data):
            raise NanodiffError(
                f"cannot read the MIDI file {path}: it is truncated (a chunk runs past the end)"
            )
        if kind == b"MTrk":
            tracks.append(_track_notes(data[pos + 8 : pos + 8 + length], path))
        pos += 8 + length  # chunks of other kinds are skipped, as the standard asks
    if not tracks:
        raise NanodiffError(f"cannot read the MIDI file {path}: it holds no tracks")
    if len(tracks) < declared:
        raise NanodiffError(
            f"cannot read the MIDI file {path}: it is truncated ({len(tracks)} of {declared} tracks)"
        )
    if len(tracks) > 1 and not tracks[0]:
        tracks = tracks[1:]  # the tempo track is no voice
    notes = []
    for voice, track in enumerate(tracks):
        for pitch, start, end in track:
            first = round(start * STEPS_PER_QUARTER / division)
            last = max(round(end * STEPS_PER_QUARTER / division), first + 1)
            notes.append((voice, pitch, first, last - first))
    return sorted(notes, key=lambda n: (n[0], n[2], n[1], n[3]))


def render_wav(roll, sample_rate: int = 16000, bpm: float = 90) -> np.ndarray:
    """A roll [V, P, S] as float32 mono sound: round(S * 15 / bpm * sample_rate) samples (a step
    lasts a sixteenth, 15 / bpm seconds; nothing rings past the last step). Each note (a run of
    ones) is HARMONICS partials of f = 440 * 2 ** ((pitch - 69) / 12) under an envelope that rises
    for ATTACK s, decays as exp(-t / DECAY) and falls to 0 over the last RELEASE s; the sum is
    scaled to a peak of PEAK (silence stays 0)."""
    roll = _check_roll(roll)
    if sample_rate < 1 or not bpm > 0:
        raise NanodiffError(f"sample_rate and bpm must be positive, got {sample_rate} and {bpm}")
    step = 60 / bpm / STEPS_PER_QUARTER  # seconds per sixteenth
    wave = np.zeros(round(roll.shape[2] * step * sample_rate), np.float64)
    for _, pitch, start, length in roll_to_notes(roll):
        first = round(start * step * sample_rate)
        last = min(round((start + length) * step * sample_rate), len(wave))
        t = np.arange(last - first) / sample_rate
        envelope = np.minimum(t / ATTACK, 1) * np.exp(-t / DECAY)
        envelope *= np.clip((t[-1] - t) / RELEASE, 0, 1) if len(t) else 1
        frequency = 440 * 2 ** ((pitch - 69) / 12)
        partials = sum(a * np.sin(2 * np.pi * k * frequency * t) for k, a in enumerate(HARMONICS, 1))
        wave[first:last] += envelope * partials
    peak = np.abs(wave).max(initial=0)
    return (wave * (PEAK / peak) if peak > 0 else wave).astype(np.float32)
