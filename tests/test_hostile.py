"""Never a traceback, nothing lost: every hostile input of tests/hostile.py through every command
that reads its kind of file either works, or exits 2 with one `nanodiff: error:` line, and every
file that existed before is unchanged (tests/hostile.py has the corpus, the commands and the rule)."""

import pytest

import hostile


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny digits run and a tiny upscaling run, trained once; cases copy them before damaging."""
    return hostile.make_runs(tmp_path_factory.mktemp("hostile-runs"))


@pytest.fixture(autouse=True)
def _inside_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that falls back to a default folder writes here


def _params(kind: str) -> list:
    return [
        pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.slow else [])
        for case in hostile.CASES
        if case.kind == kind
    ]


@pytest.mark.parametrize("case", _params("image"))
def test_hostile_images(case, runs, tmp_path):
    hostile.assert_rule(hostile.run_case(case, runs, tmp_path))


@pytest.mark.parametrize("case", _params("array"))
def test_hostile_arrays(case, runs, tmp_path):
    hostile.assert_rule(hostile.run_case(case, runs, tmp_path))


@pytest.mark.parametrize("case", _params("run"))
def test_damaged_run_folders(case, runs, tmp_path):
    hostile.assert_rule(hostile.run_case(case, runs, tmp_path))


@pytest.mark.parametrize("case", _params("toml"))
def test_hostile_train_configs(case, runs, tmp_path):
    hostile.assert_rule(hostile.run_case(case, runs, tmp_path))


def test_the_corpus_is_what_it_claims(tmp_path, monkeypatch):
    """The bomb's header is read (40000x40000) and its CRCs are right; the .npz pickle would write
    the marker if loaded with allow_pickle=True (so its absence in the cases means something)."""
    import numpy as np
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL checks the CRCs as it reads
    with Image.open(hostile.IMAGES["bomb 40000x40000 png"](tmp_path)) as image:  # the header only
        assert image.size == (40000, 40000)
    path = hostile.ARRAYS["npz pickled object"](tmp_path)
    with np.load(path, allow_pickle=True) as archive:
        archive["images"]
    assert (tmp_path / hostile.MARKER).exists()


def test_the_rule_catches_a_changed_file_and_a_traceback(tmp_path):
    (tmp_path / "kept.txt").write_text("before")
    outcome = hostile.Outcome(["x"], 2, "Traceback (most recent call last):\nboom\n", "")
    assert any("traceback" in p for p in outcome.problems())
    before = hostile.tree_digest([tmp_path])
    (tmp_path / "kept.txt").write_text("after")
    assert before != hostile.tree_digest([tmp_path])
