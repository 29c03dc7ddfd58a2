"""Sound end to end: the espeak-ng words, spectrograms and Griffin-Lim, WAV files and folders, the
trainer on [B, 1, T] waveforms and on spectrogram images, inpainting and continuation that keep
the given samples exactly, the command line and its one-line refusals; (slow) the word judge on
held-out voices and a short class-conditional training heard by it."""

import json
import wave

import numpy as np
import pytest
import torch

from nanodiffusion.cli import main
from nanodiffusion.data import audio, speech
from nanodiffusion.data.datasets import load_data
from nanodiffusion.inference.audio import draw_sound, known_frames
from nanodiffusion.inference.pipelines import load_parts
from nanodiffusion.io.config import apply_overrides, preset
from nanodiffusion.training.diffusion import Trainer, prepare_config
from one_line import error_of
from torchrun_helper import assert_same_steps, needs_torchrun, run_one_and_two

pytestmark = pytest.mark.usefixtures("one_thread_module")
RATE = 16000
TINY = [
    "model.width=32",
    "model.head_dim=16",
    "model.depth=1",
    "optim.batch_size=4",
    "optim.warmup_steps=1",
    "run.steps=2",
    "run.log_every=1",
    "run.sample_every=0",
    "run.checkpoint_every=0",
    "run.sample_n=2",
    "run.sample_steps=2",
    "run.device=cpu",
]


def tone(freq: float, seconds: float = 1.0, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def wav_folder(tmp_path_factory):
    """A folder of WAV files in two class sub-folders (low and high tones), each with a caption."""
    root = tmp_path_factory.mktemp("wavs")
    for name, freqs in (("high", (1500, 1700, 1900)), ("low", (200, 250, 300))):
        (root / name).mkdir()
        for f in freqs:
            audio.write_wav(root / name / f"{f}.wav", tone(f, 0.8), RATE)
            (root / name / f"{f}.txt").write_text(f"a {name} tone")
    return root


@pytest.fixture(scope="module")
def runs(wav_folder, tmp_path_factory):
    """A waveform run and a spectrogram run on the WAV folder, class-conditional, 2 steps each."""
    out = {}
    for kind, overrides in (
        ("wave", ["model.patch_size=500"]),
        ("spectrogram", ["data.spectrogram=true", "model.patch_size=8"]),
    ):
        run = tmp_path_factory.mktemp("runs") / kind
        name = "speech-wave" if kind == "wave" else "speech"
        cfg = apply_overrides(preset(name), [*TINY, *overrides, f"data.name={wav_folder}"])
        assert Trainer(cfg, run, progress=False).fit()
        out[kind] = run
    return out


# --- data ----------------------------------------------------------------------------------------
@pytest.mark.slow  # fresh espeak-ng processes, ~10 s
def test_the_synthesiser_is_deterministic_and_split_by_voice():
    clips = speech.clips("test")
    some = clips[:3] + clips[200:202]
    a, b = speech.synthesise(some, workers=2), speech.synthesise(some, workers=1)
    assert a.shape == (5, speech.CLIP) and np.array_equal(a, b)  # the same list, the same samples
    assert (np.abs(a).max(1) > 0.4).all()  # a word, not silence (peaks 0.5-0.9)
    assert not np.array_equal(a[0], a[1])
    train_voices = {c.variant for c in speech.clips("train")}
    assert train_voices.isdisjoint(c.variant for c in clips)  # test voices are never heard in training
    assert len(clips) == len(speech.TEST_VARIANTS) * len(speech.ACCENTS) * 30 and len(speech.WORDS) == 30


def test_spectrogram_and_griffin_lim_round_trip():
    x = torch.from_numpy(np.stack([tone(440), tone(2000) * np.hanning(RATE).astype(np.float32)]))
    spec = audio.mel_spectrogram(x, RATE)
    assert spec.shape == (2, 64, 64) and spec.min() >= -1 and spec.max() <= 1
    peak = audio.mel_filters(RATE)[:, round(440 / (RATE / audio.N_FFT))].argmax()
    assert spec[0, :, 30].argmax() == peak  # the tone's band is the loudest
    y = audio.griffin_lim(spec, RATE, RATE)
    assert y.shape == (2, RATE)
    assert (audio.mel_spectrogram(y, RATE) - spec).abs().mean() < 0.05  # the inversion's own spectrogram


def test_wav_round_trip_and_bad_wavs(tmp_path):
    x = tone(300) * 1.5  # clipped to [-1, 1] when written
    path = audio.write_wav(tmp_path / "a.wav", x, RATE)
    y, rate = audio.read_wav(path)
    assert rate == RATE and np.abs(y - np.clip(x, -1, 1)).max() <= 1 / 32768
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.array([[1000, 3000]] * 80, "<i2").tobytes())
    y, rate = audio.read_wav(stereo)
    assert rate == 8000 and np.allclose(y, 2000 / 32768)  # channels averaged
    (tmp_path / "text.wav").write_text("not audio at all")
    (tmp_path / "cut.wav").write_bytes(path.read_bytes()[:30])
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
    for name, message in (
        ("text.wav", "is not a WAV file"),
        ("cut.wav", "cannot read WAV"),
        ("empty.wav", "zero-length clip"),
        ("none.wav", "no such file"),
    ):
        assert message in error_of(audio.read_wav, tmp_path / name), name


def test_a_wav_folder_is_labelled_captioned_resampled_sound(wav_folder, tmp_path):
    data = load_data(str(wav_folder))
    assert data.images.shape == (6, 1, RATE) and data.modality == "audio" and data.sample_rate == RATE
    assert data.class_names == ["high", "low"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.captions[0] == "a high tone"
    assert torch.equal(
        data.images[3, 0, : round(0.8 * RATE)],
        torch.from_numpy(audio.read_wav(wav_folder / "low/200.wav")[0]),
    )
    assert data.images[3, 0, round(0.8 * RATE) :].abs().max() == 0  # padded with silence to 1 s
    mel = load_data(str(wav_folder), spectrogram=True)
    assert mel.images.shape == (6, 1, 64, 64) and mel.modality == "spectrogram"
    other = tmp_path / "other"
    other.mkdir()
    audio.write_wav(other / "a.wav", tone(440, 0.5, 8000), 8000)
    y = load_data(str(other)).images[0, 0]
    assert (
        y.shape == (RATE,) and abs(np.abs(np.fft.rfft(y.numpy())).argmax() - 440) <= 2
    )  # resampled to 16 kHz
    (tmp_path / "empty").mkdir()
    assert "no images found" in error_of(load_data, str(tmp_path / "empty"))
    assert "no test split" in error_of(load_data, str(wav_folder), "test")
    assert "do not apply" in error_of(load_data, str(wav_folder), "train", 32)
    from PIL import Image

    Image.new("L", (8, 8)).save(other / "stray.png")
    assert "holds both images and WAV files" in error_of(load_data, str(other))
    (other / "stray.png").unlink()
    (other / "b.wav").write_text("garbage")
    assert "b.wav is not a WAV file" in error_of(load_data, str(other))


def test_prepare_config_on_waveforms(wav_folder):
    data = load_data(str(wav_folder))
    cfg = prepare_config(apply_overrides(preset("speech-wave"), ["model.patch_size=500"]), data)
    assert cfg.model.image_size == [RATE] and cfg.model.num_classes == 2
    assert (cfg.data.modality, cfg.data.sample_rate) == ("audio", RATE)
    unet = apply_overrides(preset("digits"), [f"data.name={wav_folder}"])
    assert "sound [T] = [16000]: train a DiT" in error_of(prepare_config, unet, data)


# --- drawing and editing ---------------------------------------------------------------------------
@pytest.mark.slow  # two trained runs, ~10 s
def test_inpainting_and_continuation_keep_the_given_samples(runs):
    given = torch.from_numpy(tone(400))[None]
    for kind, run in runs.items():
        cfg, denoiser, _, _ = load_parts(run, "ema", "cpu")
        for gap in ((0.4, 0.6), (0.5, 1.0)):  # inpainting a gap; continuing the first half
            known = torch.ones(RATE, dtype=torch.bool)
            known[round(gap[0] * RATE) : round(gap[1] * RATE)] = False
            out = draw_sound(cfg, denoiser, 2, cond=torch.tensor([0, 1]), given=given, known=known, steps=2)
            assert out.shape == (2, RATE)
            assert torch.equal(out[:, known], given.expand(2, -1)[:, known]), (kind, gap)
            assert (out[:, ~known] - given[:, ~known]).abs().max() > 0.01  # the gap is drawn anew
        plain = draw_sound(cfg, denoiser, 3, steps=2)
        assert plain.shape == (3, RATE) and plain.abs().max() <= 1


@pytest.mark.slow  # two trained runs
def test_every_sampler_draws_sound(runs):
    from nanodiffusion.core.samplers import SAMPLERS

    cfg, denoiser, _, _ = load_parts(runs["wave"], "ema", "cpu")
    for name in SAMPLERS:
        x = draw_sound(cfg, denoiser, 2, cond=torch.tensor([0, 1]), guidance=2.0, sampler=name, steps=3)
        assert x.shape == (2, RATE) and torch.isfinite(x).all(), name


@pytest.mark.slow  # MiniLM and a trained run
def test_a_text_conditional_sound_run_follows_its_captions(wav_folder, tmp_path):
    run = tmp_path / "text"
    cfg = apply_overrides(
        preset("speech-wave"),
        [*TINY, "model.patch_size=500", f"data.name={wav_folder}", "data.class_conditional=false",
         "model.num_classes=0", "data.text_encoder=minilm"],
    )  # fmt: skip
    assert Trainer(cfg, run, progress=False).fit()
    assert load_parts(run, "ema", "cpu")[0].model.context_dim > 0
    out = tmp_path / "g"
    assert main(["generate", str(run), "a low tone", "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "clip_0001.wav").is_file()


def test_known_frames_are_those_whose_window_is_known():
    known = torch.ones(RATE, dtype=torch.bool)
    known[8000:9000] = False
    frames = known_frames(known)
    for f in range(64):
        lo, hi = f * audio.HOP - audio.N_FFT // 2, f * audio.HOP + audio.N_FFT // 2
        assert bool(frames[f]) == (hi <= 8000 or lo >= 9000)


# --- the command line ----------------------------------------------------------------------------
@pytest.mark.slow  # two trained runs
def test_generate_and_sample_write_wavs_and_refuse_bad_input(runs, wav_folder, tmp_path, capsys):
    run = runs["wave"]
    out = tmp_path / "gen"
    assert main(["generate", str(run), "", "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "clip_0001.wav").is_file() and (out / "spectrograms.png").is_file()
    assert audio.read_wav(out / "clip_0000.wav")[1] == RATE
    audio.write_wav(tmp_path / "given.wav", tone(300), RATE)
    edit = tmp_path / "edit"
    assert main(["generate", str(run), "", "--n", "1", "--steps", "2", "--given", str(tmp_path / "given.wav"),
                 "--gap", "0.5:1", "--out", str(edit)]) == 0  # fmt: skip
    kept = audio.read_wav(edit / "clip_0000.wav")[0][:8000]
    assert np.abs(kept - audio.read_wav(tmp_path / "given.wav")[0][:8000]).max() == 0
    assert (
        main(["sample", str(runs["spectrogram"]), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s")])
        == 0
    )
    assert (tmp_path / "s" / "clip_0001.wav").is_file()
    capsys.readouterr()
    audio.write_wav(tmp_path / "44k.wav", tone(300, 1, 44100), 44100)
    audio.write_wav(tmp_path / "long.wav", tone(300, 1.5), RATE)
    (tmp_path / "junk.wav").write_text("junk")
    before = sorted(p.name for p in out.iterdir())
    gen = ["generate", str(run), ""]
    bad = [
        ([*gen, "--given", str(tmp_path / "44k.wav"), "--gap", "0:0.5"], "is 44100 Hz; this run was trained"),
        ([*gen, "--given", str(tmp_path / "junk.wav"), "--gap", "0:0.5"], "is not a WAV file"),
        ([*gen, "--given", str(tmp_path / "given.wav"), "--gap", "0.5:3"], "must lie within"),
        ([*gen, "--given", str(tmp_path / "given.wav"), "--gap", "half"], "must look like A:B"),
        (["generate", str(run), "", "--gap", "0:1"], "--gap needs --given"),
        ([*gen, "--given", str(tmp_path / "given.wav"), "--gap", "0.00001:0.00002"], "holds no whole sample"),
        ([*gen, "--given", str(tmp_path / "long.wav"), "--gap", "0:0.5"], "this run's clips are 1 s"),
        (["generate", str(run), "seven"], "'seven' is not a word this run knows: one of high, low"),
        (["app", str(run)], "makes sound: the app draws images"),
        (["generate", str(run), "", "--init", str(tmp_path / "given.wav")], "sound takes --given"),
        (["eval", str(run)], "makes sound, not images"),
        (["inpaint", str(run), "--demo"], "makes sound"),
        (["eval-video", str(run)], "not videos"),
        (["eval-audio", str(run), "--n", "2"], "not a word-conditional speech run"),
        (["train", "--data", str(tmp_path / "junk.wav")], "unknown dataset"),
    ]  # fmt: skip
    for argv, message in bad:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0], (argv, err)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written is lost


@pytest.mark.slow  # parses the chorales once, trains a run
def test_a_chorales_run_writes_midi_and_is_judged(tmp_path, capsys, monkeypatch):
    """A chorales run (tiny, 2 steps on the windows of the first 24 chorale files) samples MIDI +
    WAV, and eval-audio compares it with the held-out chorales (of those files)."""
    pytest.importorskip("music21")
    import functools

    from nanodiffusion.data import chorales

    monkeypatch.setenv("NANODIFF_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(chorales, "load_chorales", functools.partial(chorales.load_chorales, limit=24))
    run = tmp_path / "chorales"
    cfg = apply_overrides(preset("chorales"), [*TINY, "model.patch_size=16"])
    assert Trainer(cfg, run, progress=False).fit()
    out = tmp_path / "s"
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    from nanodiffusion.io.midi import read_midi

    assert (out / "clip_0000.mid").is_file() and (out / "rolls.png").is_file()
    read_midi(out / "clip_0000.mid")  # a MIDI file the reader takes
    assert audio.read_wav(out / "clip_0001.wav")[1] == RATE
    report = tmp_path / "ev.json"
    assert main(["eval-audio", str(run), "--n", "3", "--steps", "2", "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["train"]["generated"]["in_key"] > 0.9 and result["shuffled"]["generated"]["in_key"] < 0.8
    assert "held-out chorales" in capsys.readouterr().out


@needs_torchrun
@pytest.mark.slow
def test_two_process_waveform_training_takes_the_same_steps(wav_folder, tmp_path):
    """A 1-D DiT on a WAV folder under torchrun with two processes takes the steps of one."""
    run_one_and_two(
        ["train", "--preset", "speech-wave", "--data", str(wav_folder), "--steps", "3", "--batch-size", "4",
         "--set", "model.width=32", "--set", "model.head_dim=16", "--set", "model.depth=1",
         "--set", "model.patch_size=500", "--set", "model.num_classes=2", "--set", "optim.warmup_steps=1",
         "--set", "run.sample_every=0", "--set", "run.sample_n=2", "--set", "run.sample_steps=2",
         "--set", "run.checkpoint_every=3", "--quiet"],
        tmp_path / "one",
        tmp_path / "two",
    )  # fmt: skip
    from nanodiffusion.inference.pipelines import build_denoiser
    from nanodiffusion.io.checkpoint import load_config

    cfg = load_config(tmp_path / "one")
    assert cfg.model.image_size == [RATE] and cfg.data.modality == "audio"
    torch.manual_seed(cfg.run.seed)
    init = build_denoiser(cfg).net.state_dict()
    assert_same_steps(
        tmp_path / "one", tmp_path / "two", ["run/model.safetensors", "run/ema.safetensors"], init, atol=2e-4
    )


@pytest.mark.slow  # synthesises the 900 test-voice clips once (~20 s)
def test_the_word_judge_hears_held_out_voices_and_griffin_lim():
    """The shipped judge names the word of >= 95% of the clips of voices never heard in training,
    hears noise as no word, and recognises Griffin-Lim's inversion of real clips' spectrograms."""
    from nanodiffusion.training.audio_judge import SHIPPED, word_classifier

    assert SHIPPED.is_file()  # else word_classifier would train it here (~15 CPU-minutes)
    judge = word_classifier()
    waves, labels, _ = speech.load_speech("test")
    heard, features = judge.hear(torch.from_numpy(waves))
    assert (heard == torch.from_numpy(labels)).float().mean() >= 0.95
    noise = torch.randn(100, RATE, generator=torch.Generator().manual_seed(0)) * 0.05
    assert (judge.hear(noise)[0] == -1).float().mean() >= 0.95
    some = torch.from_numpy(waves[::10])  # 90 clips, 3 of each word
    inverted = audio.griffin_lim(audio.mel_spectrogram(some, RATE), RATE, RATE)
    assert (judge.hear(inverted)[0] == torch.from_numpy(labels[::10])).float().mean() >= 0.85


@pytest.mark.slow  # synthesises 4 words by the 190 train voices (~20 s), trains ~2.5 CPU-minutes
def test_a_short_training_speaks_its_words(tmp_path):
    """A spectrogram DiT trained briefly on four words (600 steps) draws clips the judge hears as
    words it was trained on far more often than chance, and as the requested word more often than
    chance (1/30): the whole path (data, training, sampling, Griffin-Lim) makes speech."""
    from nanodiffusion.training.audio_judge import word_classifier

    words = ["zero", "seven", "stop", "yes"]
    specs = [c for c in speech.clips("train") if speech.WORDS[c.word] in words]
    waves = speech.synthesise(specs)
    for c, w in zip(specs, waves, strict=True):
        (tmp_path / "words" / speech.WORDS[c.word]).mkdir(parents=True, exist_ok=True)
        audio.write_wav(tmp_path / "words" / speech.WORDS[c.word] / f"{c.seed}.wav", w, RATE)
    cfg = apply_overrides(
        preset("speech"),
        [f"data.name={tmp_path / 'words'}", "model.num_classes=4", "model.width=64", "model.depth=2",
         "model.head_dim=32", "run.steps=600", "run.sample_every=0", "run.checkpoint_every=0",
         "optim.lr=2e-3", "optim.warmup_steps=20", "run.device=cpu"],
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite's longest training: both cores of the CI machine
    try:
        assert Trainer(cfg, tmp_path / "run", progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    cfg, denoiser, _, _ = load_parts(tmp_path / "run", "ema", "cpu")
    labels = torch.arange(40) % 4
    clips = draw_sound(cfg, denoiser, 40, cond=labels, steps=20, seed=0)
    heard, _ = word_classifier().hear(clips)
    wanted = torch.tensor([speech.WORDS.index(w) for w in words])
    assert torch.isin(heard, wanted).float().mean() >= 0.3  # its words: 4 of 30 (+ none) by chance
    assert (heard == wanted[labels]).float().mean() >= 2 / 30  # the requested word: 1 in 30 by chance
