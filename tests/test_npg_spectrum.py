"""NPG's spectral options: relative damping cg_damping="rel_<c>" and the opt-in log_spectrum diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

import agents.npg.npg as npg_module
from agents import NPG
from ngrl.spectral import angle_degrees
from tests.test_npg import SMALL, RecordingLogger

TINY = {**SMALL, "policy_kwargs": dict(net_arch=[8])}  # 58 actor parameters on CartPole
SPECTRUM_KEYS = ("train/fisher_lambda_max", "train/fisher_condition", "train/cg_gradient_angle")


class StepSpy:
    """Wrap natural_step: keep what each update solved with (the dense damped operator, the gradient, the direction)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = npg_module.natural_step

        def spy(gradient, operator, **kwargs):
            dense = operator.dense()  # before the step moves the parameters
            step = real(gradient, operator, **kwargs)
            self.calls.append(dict(damping=operator.damping, dense=dense, gradient=gradient.clone(), direction=step.direction))
            return step

        monkeypatch.setattr(npg_module, "natural_step", spy)


def test_the_spectrum_is_logged_when_asked(monkeypatch):
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, log_spectrum=True, cg_damping=0.05, cg_max_steps=60, **TINY)
    recorder, spy = RecordingLogger(model), StepSpy(monkeypatch)
    model.learn(128)
    assert len(spy.calls) == 2 and all(len(recorder.values[key]) == 2 for key in SPECTRUM_KEYS)
    assert "train/cg_damping" not in recorder.values  # an absolute damping is not logged (it is the argument)
    for call, top, condition, angle in zip(spy.calls, *(recorder.values[key] for key in SPECTRUM_KEYS)):
        assert call["damping"] == 0.05
        exact = torch.linalg.eigvalsh(call["dense"].double())  # of F + λI
        assert top + 0.05 == pytest.approx(float(exact[-1]), rel=1e-4)  # λ_max of the undamped F
        assert 1.0 < condition <= float(exact[-1] / exact[0]) * (1 + 1e-6)  # a lower bound of κ(F + λI)
        assert angle == pytest.approx(angle_degrees(call["direction"], call["gradient"]), abs=1e-9)
        assert 0.0 < angle < 90.0  # gᵀ(F + λI)⁻¹g > 0


def test_nothing_spectral_runs_by_default(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the default path must not estimate the spectrum")

    monkeypatch.setattr(npg_module, "largest_eigenvalue", refuse)
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **TINY)
    recorder = RecordingLogger(model)
    model.learn(128)
    assert "train/kl" in recorder.values
    assert not any(key in recorder.values for key in (*SPECTRUM_KEYS, "train/cg_damping"))


RELATIVE_OPTIONS = [{}, {"natural_direction": "cfa"}, {"preconditioner": "kfac"}, {"fisher_estimator": "diagonal"}]


@pytest.mark.parametrize("options", RELATIVE_OPTIONS)
def test_relative_damping_is_resolved_once_per_update_and_used_throughout(monkeypatch, tmp_path, options):
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, cg_damping="rel_1e-2", **TINY, **options)
    recorder, spy = RecordingLogger(model), StepSpy(monkeypatch)
    model.learn(128)
    dampings = recorder.values["train/cg_damping"]
    assert len(dampings) == 2 and len(set(dampings)) == 2  # re-estimated at every update
    assert not any(key in recorder.values for key in SPECTRUM_KEYS)  # log_spectrum is off
    for call, damping in zip(spy.calls, dampings):
        assert call["damping"] == damping  # the operator CG and the step size saw carries the logged λ
        exact = torch.linalg.eigvalsh(call["dense"].double())
        assert damping == pytest.approx(1e-2 * (float(exact[-1]) - damping), rel=1e-4)  # λ = c·λ_max(F)
    model.save(tmp_path / "relative")
    assert NPG.load(tmp_path / "relative").cg_damping == "rel_1e-2"  # the user's value, not a resolved number


def test_relative_damping_in_the_compatible_fit_is_the_ridge(monkeypatch):
    """With "cfa" the ridge of the fit is the resolved λ: the direction solves (Ψᵀ Ψ/n + λI) w = Ψᵀ Â/n with it."""
    seen = {}
    real = npg_module.fit_compatible_advantage

    def spy(linearization, score, advantages, *, ridge, **kwargs):
        seen["ridge"] = ridge
        return real(linearization, score, advantages, ridge=ridge, **kwargs)

    monkeypatch.setattr(npg_module, "fit_compatible_advantage", spy)
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, cg_damping="rel_1e-2", natural_direction="cfa", **TINY)
    recorder = RecordingLogger(model)
    model.learn(128)
    assert seen["ridge"] == recorder.values["train/cg_damping"][-1] and math.isfinite(seen["ridge"]) and seen["ridge"] > 0
