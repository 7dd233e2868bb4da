"""Run profiles (polar_vbll.profiles): names, the default on every device, the renamed ones."""

import pytest
import torch

from polar_vbll import profiles
from polar_vbll.errors import ConfigError


def test_the_default_is_the_course_profile_on_every_device(monkeypatch):
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    for available in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert profiles.get_profile().name == "course"


@pytest.mark.parametrize("old, new", [("cpu", "'course'"), ("gpu", "'full'")])
def test_the_old_names_are_refused_with_their_successors(old, new, monkeypatch):
    with pytest.raises(ConfigError, match=f"profile '{old}' was renamed: use {new}"):
        profiles.get_profile(old)
    monkeypatch.setenv(profiles.PROFILE_ENV, old)
    with pytest.raises(ConfigError, match=f"'{old}' \\(from POLAR_VBLL_PROFILE\\) was renamed"):
        profiles.get_profile()


def test_the_full_profile_keeps_the_course_profiles_polar_choices():
    course, full = profiles.get_profile("course"), profiles.get_profile("full")
    assert full.polar_theta == course.polar_theta == "diagonal"
    assert full.polar_learning_rate / full.learning_rate == pytest.approx(
        course.polar_learning_rate / course.learning_rate)
    assert full.adapt_layers is None and full.test_examples is None  # every layer, whole splits


def test_start_notebook_says_what_happens_to_the_final_fine_tune(monkeypatch, capsys):
    monkeypatch.delenv("POLAR_VBLL_LIVE", raising=False)
    monkeypatch.delenv("POLAR_VBLL_RETRAIN", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profiles.start_notebook("smoke")
    printed = capsys.readouterr().out
    assert "device: the CPU" in printed and "float32" in printed
    assert "final fine-tune: loaded from the committed runs" in printed
    monkeypatch.setenv("POLAR_VBLL_LIVE", "1")
    profiles.start_notebook("smoke")
    assert "final fine-tune: trained live here at the smoke profile" in capsys.readouterr().out
