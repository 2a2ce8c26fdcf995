"""A sample of the adversarial corpus (tests/adversarial) in the default run: every bad
input is one line with the right exit code, no traceback, no hang, no chip touched first.
The whole corpus (400 inputs): ``python -m tests.adversarial``."""

from __future__ import annotations

import pytest

from tests.adversarial.corpus import build
from tests.adversarial.harness import run_case

STRIDE = 9  # every 9th case, a different sample of each kind


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return d, build(d)


def test_the_corpus_covers_every_command_and_file_format(corpus):
    _, cases = corpus
    kinds = {c.kind for c in cases}
    assert len(cases) >= 300
    assert {"info", "characterize", "calibrate", "program", "train", "deploy", "demo", "runs", "live", "sim serve",
            "weights npz", "chip-state JSON", "calibration npz", "checkpoint", "dataset"} <= kinds


@pytest.mark.parametrize("k", range(0, 400, STRIDE))
def test_a_bad_input_is_refused_in_one_line_before_the_chip(corpus, k):
    d, cases = corpus
    if k >= len(cases):
        pytest.skip("past the end of the corpus")
    outcome = run_case(cases[k], timeout_s=60.0, cwd=str(d))
    assert outcome.verdict == "ok", (cases[k].name, outcome.code, outcome.stderr[-300:], outcome.touched)
