"""Gradient-masking checks flag the classic failure modes, with the right reason, and the
adaptive attacks they recommend (BPDA, EOT) undo the masking."""

from __future__ import annotations

import pytest
import torch
from pathological import QuantizedInput, RandomizedInput, ScaledLogits, SoftmaxOutput, quantize

from advex import BPDA, EOT, ThreatModel
from advex.attacks import PGD
from advex.evaluate.checks import masking_checks, verdict

THREAT = ThreatModel("linf", eps=0.3)


@pytest.fixture(scope="module")
def probe(mnist_test):
    x, y = mnist_test
    return x[:40], y[:40]


def _failed(checks):
    return {c.name: c for c in checks if not c.passed}


def test_train_mode_model_is_warned_once_and_restored(mnist_model, probe):
    wrapped = ScaledLogits(mnist_model, 1.0).train()
    try:
        with pytest.warns(UserWarning, match="train mode") as record:
            masking_checks(wrapped, *probe, THREAT, steps=2, restarts=2)
        assert sum("train mode" in str(w.message) for w in record) == 1
        assert wrapped.training and wrapped.model.training
    finally:
        mnist_model.eval()  # the shared fixture


def test_standard_model_passes(mnist_model, probe):
    checks = masking_checks(mnist_model, *probe, THREAT, steps=5, restarts=2)
    assert verdict(checks) == "PASS", [c.evidence for c in checks if not c.passed]
    assert {c.name for c in checks} >= {
        "probability_output",
        "gradients",
        "randomness",
        "accuracy_decreases_with_eps",
        "unbounded_attack_reaches_zero",
        "iterative_beats_single_step",
        "restart_variance",
    }


def test_softmax_output_is_flagged(mnist_model, probe):
    failed = _failed(
        masking_checks(SoftmaxOutput(mnist_model).eval(), *probe, THREAT, steps=5, restarts=2)
    )
    assert "probability_output" in failed
    assert "margin" in failed["probability_output"].recommendation


def test_scaled_logits_flag_vanishing_gradients(mnist_model, probe):
    failed = _failed(
        masking_checks(ScaledLogits(mnist_model, 1e4).eval(), *probe, THREAT, steps=5, restarts=2)
    )
    assert "gradients" in failed
    assert "saturates" in failed["gradients"].evidence
    assert "dlr" in failed["gradients"].recommendation


def test_quantized_input_flags_shattered_gradients(mnist_model, probe):
    failed = _failed(
        masking_checks(QuantizedInput(mnist_model).eval(), *probe, THREAT, steps=5, restarts=2)
    )
    assert "gradients" in failed
    assert "non-differentiable" in failed["gradients"].evidence
    assert "BPDA" in failed["gradients"].recommendation


def test_randomized_model_is_flagged(mnist_model, probe):
    torch.manual_seed(0)
    failed = _failed(
        masking_checks(
            RandomizedInput(mnist_model, 0.3).eval(), *probe, THREAT, steps=5, restarts=2
        )
    )
    assert "randomness" in failed
    assert "EOT" in failed["randomness"].recommendation


def test_bpda_undoes_input_quantization(mnist_model, probe):
    """Measured: plain PGD leaves ~97% robust (zero gradients); BPDA ~0%, like undefended."""
    x, y = probe
    defended = QuantizedInput(mnist_model, levels=16).eval()
    plain = PGD(eps=0.3, steps=20)(defended, x, y).robust_accuracy
    adaptive_model = torch.nn.Sequential(BPDA(lambda z: quantize(z, 16)), mnist_model).eval()
    bpda = PGD(eps=0.3, steps=20)(adaptive_model, x, y)
    undefended = PGD(eps=0.3, steps=20)(mnist_model, x, y).robust_accuracy
    assert plain >= 0.8
    # BPDA's adversarials also fool the real (quantised) model
    with torch.no_grad():
        real = float((defended(bpda.x_adv).argmax(1) == y).float().mean())
    assert real <= undefended + 0.05


def test_eot_beats_plain_pgd_on_randomized_model(mnist_model, probe):
    x, y = probe
    model = RandomizedInput(mnist_model, 0.15).eval()

    def expected_accuracy(x_adv):
        torch.manual_seed(123)
        with torch.no_grad():
            return float((EOT(model, 64)(x_adv).argmax(1) == y).float().mean())

    attack = PGD(eps=0.12, steps=10, early_stop=False)
    torch.manual_seed(0)
    plain = expected_accuracy(attack(model, x, y).x_adv)
    attack.eot_samples = 8
    torch.manual_seed(0)
    eot = expected_accuracy(attack(model, x, y).x_adv)
    assert eot <= plain - 0.05, (plain, eot)
