"""Input-transform defenses: exactness of the transforms, the marker convention, BPDA/EOT
adaptive attacks on the zoo MNIST model, and the feature-squeezing detector."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from advex.attacks.gradient import PGD
from advex.defenses.transforms import (
    AdaptedModel,
    BitDepthReduction,
    FeatureSqueezing,
    GaussianNoise,
    JPEGCompression,
    MedianSmoothing,
    RandomResizePad,
    adapt_for_attack,
    is_stochastic,
    non_differentiable,
    quantization_table,
)
from advex.models.wrappers import BPDA, EOT

# ------------------------------------------------------------------------------------------
# the transforms themselves
# ------------------------------------------------------------------------------------------


def test_markers():
    assert BitDepthReduction.differentiable is False and BitDepthReduction.stochastic is False
    assert JPEGCompression.differentiable is False and JPEGCompression.stochastic is False
    assert MedianSmoothing.differentiable is True and MedianSmoothing.stochastic is False
    assert RandomResizePad.differentiable is True and RandomResizePad.stochastic is True
    assert GaussianNoise.differentiable is True and GaussianNoise.stochastic is True


def test_bit_depth_reduction_values():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.9, 1.0]).reshape(1, 1, 1, 6)
    assert BitDepthReduction(1)(x).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    y = BitDepthReduction(3)(torch.linspace(0, 1, 1001).reshape(1, 1, 1, -1))
    assert torch.allclose(y.unique(), torch.arange(8) / 7)
    # bounds other than [0, 1]: binarise at the midpoint, keep the range
    z = BitDepthReduction(1, bounds=(-1, 1))(torch.tensor([-0.9, -0.1, 0.1, 0.8]))
    assert z.tolist() == [-1, -1, 1, 1]
    for bad in (0, 17, 2.5):
        with pytest.raises(ValueError, match="bits"):
            BitDepthReduction(bad)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_median_matches_scipy(k):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(3, 2, 9, 11, generator=torch.Generator().manual_seed(k))
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
    assert np.array_equal(MedianSmoothing(k)(x).numpy(), ref)


def test_median_gradient_selects_inputs():
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    MedianSmoothing(3)(x).sum().backward()
    # every output value is one input value: the gradient counts how often each is selected
    assert torch.equal(x.grad, x.grad.round()) and x.grad.sum() == 2 * 36
    with pytest.raises(ValueError, match="kernel"):
        MedianSmoothing(0)


def test_jpeg_quantization_tables():
    assert torch.equal(quantization_table(50), torch.tensor(_LUMA50, dtype=torch.float64))
    assert quantization_table(100).max() == 1  # quality 100: every step is 1
    assert quantization_table(75)[0, 0] == 8 and quantization_table(10)[0, 0] == 80
    with pytest.raises(ValueError, match="quality"):
        JPEGCompression(0)


def test_jpeg_constant_blocks_unchanged_up_to_rounding():
    g = torch.Generator().manual_seed(0)
    levels = torch.rand(4, 1, 3, 3, generator=g)
    x = levels.repeat_interleave(8, 2).repeat_interleave(8, 3)  # constant 8×8 blocks
    for q in (10, 50, 90):
        out = JPEGCompression(q)(x)
        # only the DC coefficient is non-zero; its quantisation error is at most Q00/2 / 8
        # grey levels (≤ 1 level for quality ≥ 50; 5 levels at quality 10)
        tol = (quantization_table(q)[0, 0] / 16 + 1) / 255
        assert (out - x).abs().max() <= tol + 1e-6
        blocks = out.unfold(2, 8, 8).unfold(3, 8, 8)
        assert torch.all(blocks.amax((-1, -2)) == blocks.amin((-1, -2)))  # still constant


def test_jpeg_quality_monotone_and_idempotent(mnist_test):
    x = mnist_test[0][:50]
    errors = []
    for q in (10, 30, 50, 75, 95):
        out = JPEGCompression(q)(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, torch.round(out * 255) / 255)  # an 8-bit image
        err = (out - x).abs().mean()
        errors.append(float(err))
        # a second pass changes far less than the first (JPEG is nearly idempotent)
        assert (JPEGCompression(q)(out) - out).abs().mean() < 0.5 * err
    assert errors == sorted(errors, reverse=True), errors
    assert errors[0] > 3 * errors[-1]


def test_jpeg_matches_libjpeg_grayscale(mnist_test):
    image = pytest.importorskip("PIL.Image")
    x = mnist_test[0][:30]
    for q in (50, 75):
        ours = JPEGCompression(q)(x)
        ref = []
        for im in x:
            buf = io.BytesIO()
            pixels = (im[0].numpy() * 255).round().astype(np.uint8)
            image.fromarray(pixels).save(buf, format="JPEG", quality=q)
            buf.seek(0)
            ref.append(np.asarray(image.open(buf), dtype=np.float32) / 255)
        diff = (ours - torch.tensor(np.stack(ref))[:, None]).abs() * 255
        # libjpeg's integer DCT rounds differently now and then; the images agree otherwise
        assert diff.mean() < 0.5, float(diff.mean())
        assert (diff > 2.5).float().mean() < 0.05


def test_jpeg_rgb_modes():
    x = torch.rand(2, 3, 13, 10, generator=torch.Generator().manual_seed(1))
    for color in ("ycbcr", "rgb"):
        out = JPEGCompression(100, color=color)(x)
        assert out.shape == x.shape
        assert (out - x).abs().max() < 3 / 255  # quality 100: rounding only
        assert (JPEGCompression(50, color=color)(x) - x).abs().mean() > 5 / 255
    with pytest.raises(ValueError, match="color"):
        JPEGCompression(75, color="hsv")


def test_random_resize_pad():
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = RandomResizePad(generator=torch.Generator().manual_seed(3))
    a, b = t(x), t(x)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, b)  # fresh draws on every call
    assert not torch.equal(a[0], t(x[:1].repeat(16, 1, 1, 1))[1])  # and per sample
    again = RandomResizePad(generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, again)  # reproducible from the generator
    # a constant image shrinks into the canvas: the zero padding shows at the border
    ones = RandomResizePad(generator=torch.Generator().manual_seed(0))(torch.ones(64, 1, 28, 28))
    assert ones[:, :, 14, 14].min() > 0.99 and ones.mean() < 0.99
    with pytest.raises(ValueError, match="ratio"):
        RandomResizePad(ratio=1.0)


def test_gaussian_noise():
    x = torch.full((20, 1, 28, 28), 0.5)
    out = GaussianNoise(0.1, clip=False, generator=torch.Generator().manual_seed(0))(x)
    assert abs(float((out - x).std()) - 0.1) < 0.005
    clipped = GaussianNoise(1.0)(x)
    assert clipped.min() >= 0 and clipped.max() <= 1
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-0.1)


# ------------------------------------------------------------------------------------------
# markers, adapt_for_attack
# ------------------------------------------------------------------------------------------


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_adapt_for_attack_wraps_without_mutating(tiny_model):
    jpeg = JPEGCompression(75)
    defended = nn.Sequential(jpeg, BitDepthReduction(4), tiny_model).eval()
    children = list(defended.children())
    before = _state(defended)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert non_differentiable(defended) == ["0", "1"] and not is_stochastic(defended)

    view = adapt_for_attack(defended)
    assert isinstance(view, AdaptedModel) and view.wrapped == ["0", "1"]
    assert view.eot_samples == 1 and not view.stochastic
    # the original is untouched: same children, same weights, still non-differentiable
    assert list(defended.children()) == children and defended[0] is jpeg
    assert all(torch.equal(before[k], v) for k, v in defended.state_dict().items())
    assert non_differentiable(defended) == ["0", "1"] and non_differentiable(view) == []
    # parameters are shared, not copied
    assert {id(p) for p in view.parameters()} == {id(p) for p in tiny_model.parameters()}
    assert isinstance(view.model[0], BPDA) and view.model[2] is tiny_model
    # same forward values; a useful gradient only through the view
    assert torch.equal(view(x), defended(x))
    xg = x.clone().requires_grad_(True)
    defended(xg).sum().backward()
    assert xg.grad is None or xg.grad.abs().sum() == 0
    xv = x.clone().requires_grad_(True)
    view(xv).sum().backward()
    assert xv.grad.abs().sum() > 0
    # no gradient was left on the model's parameters... by the view or by the caller's call
    assert adapt_for_attack(view).model is view.model  # already adapted: nothing to wrap


def test_adapt_for_attack_nested_and_stochastic(tiny_model):
    fs = FeatureSqueezing(tiny_model, [BitDepthReduction(1), MedianSmoothing(2)])
    defended = nn.Sequential(GaussianNoise(0.1), fs)
    view = adapt_for_attack(defended, eot_samples=8)
    assert view.wrapped == ["1.squeezers.0"] and view.stochastic and view.eot_samples == 8
    assert isinstance(fs.squeezers[0], BitDepthReduction)  # the caller's wrapper unchanged
    assert isinstance(view.model[1].squeezers[0], BPDA)
    assert view.model[1].model is tiny_model and view.model[1] is not fs
    with pytest.raises(ValueError, match="eot_samples"):
        adapt_for_attack(defended, eot_samples=0)


# ------------------------------------------------------------------------------------------
# adaptive attacks and the detector on the zoo MNIST model
# ------------------------------------------------------------------------------------------


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_bpda_breaks_bit_depth_squeezing(mnist_model, mnist_correct):
    """3-bit squeezing, L∞ ε = 0.3, PGD-20 on 100 digits: undefended 0 %; plain PGD on the
    squeezed model ~97 % (zero gradients); PGD through adapt_for_attack (BPDA) ~0 %."""
    from advex.evaluate import robust_accuracy

    x, y = mnist_correct[0][:100], mnist_correct[1][:100]
    fs = FeatureSqueezing(mnist_model, [BitDepthReduction(3)])
    assert _acc(fs, x, y) >= 0.98
    undefended = PGD(eps=0.3, steps=20)(mnist_model, x, y).robust_accuracy
    plain = PGD(eps=0.3, steps=20)(fs, x, y)
    adaptive = robust_accuracy(adapt_for_attack(fs), (x, y), [PGD(eps=0.3, steps=20)])
    assert undefended <= 0.05
    assert plain.robust_accuracy >= 0.9  # the plain attack is fooled by the zero gradient
    assert adaptive.robust_accuracy <= undefended + 0.05
    assert _acc(fs, plain.x_adv, y) >= 0.9


def test_bpda_on_paper_one_bit_squeezing(mnist_model, mnist_correct):
    """The paper's MNIST squeezer (1 bit), ε = 0.4, PGD-20, 100 digits: plain ~97 %, BPDA
    ~47 %. Binarisation is a genuine defense for small ε (a pixel must cross 0.5 to change)."""
    x, y = mnist_correct[0][:100], mnist_correct[1][:100]
    fs = FeatureSqueezing(mnist_model, [BitDepthReduction(1)])
    plain = PGD(eps=0.4, steps=20)(fs, x, y).robust_accuracy
    bpda = PGD(eps=0.4, steps=20)(adapt_for_attack(fs), x, y).robust_accuracy
    assert plain >= 0.9
    assert bpda <= plain - 0.3


def test_detector_flags_adversarial_examples(mnist_model, mnist_test, mnist_correct):
    """Joint detector (1-bit + 2×2 median), threshold at 5 % FPR on 500 clean test digits:
    ≥ 90 % of early-stopped margin-PGD examples are flagged (measured ~98-99 %), and on 100
    other clean digits the false-positive rate stays ≤ 10 % (measured 2 %)."""
    x_fit = mnist_test[0][500:1000]
    x, y = mnist_correct[0][:100], mnist_correct[1][:100]
    fs = FeatureSqueezing(mnist_model, predict_on="original")
    with pytest.raises(RuntimeError, match="threshold"):
        fs.detect(x)
    thr = fs.fit_threshold(x_fit, fpr=0.05)
    scores_fit, flags_fit = fs.detect(x_fit)
    assert int(flags_fit.sum()) <= 25 and 0 < thr < 2
    assert torch.equal(fs(x), mnist_model(x))  # detection-only deployment: same logits
    _, clean_flags = fs.detect(x)
    assert float(clean_flags.float().mean()) <= 0.1
    for attack in (
        PGD(eps=0.15, steps=20, loss="margin"),
        PGD(eps=2.0, norm="l2", steps=20, loss="margin"),
    ):
        r = attack(mnist_model, x, y)
        assert r.success_rate >= 0.9
        scores, flags = fs.detect(r.x_adv[r.success])
        assert float(flags.float().mean()) >= 0.9, (attack, float(flags.float().mean()))
        assert scores.median() > 2 * thr


def test_eot_beats_plain_pgd_on_random_resize_pad(mnist_model, mnist_correct):
    """Random resize + pad (Xie et al.) on 40 digits, L∞ ε = 0.15, PGD-10: robust accuracy
    (judged by 32-draw averaged logits) 45 % against plain PGD, 30 % with EOT over 4 draws."""
    x, y = mnist_correct[0][:40], mnist_correct[1][:40]
    defended = nn.Sequential(RandomResizePad(), mnist_model).eval()
    view = adapt_for_attack(defended, eot_samples=4)
    assert view.stochastic and view.wrapped == [] and view.eot_samples == 4
    torch.manual_seed(0)
    judge = EOT(defended, 32)
    assert _acc(judge, x, y) >= 0.95
    torch.manual_seed(1)
    plain = PGD(eps=0.15, steps=10)(defended, x, y)
    torch.manual_seed(1)
    eot = PGD(eps=0.15, steps=10)
    eot.eot_samples = view.eot_samples
    adaptive = eot(view, x, y)
    torch.manual_seed(2)
    acc_plain = _acc(judge, plain.x_adv, y)
    torch.manual_seed(2)
    acc_eot = _acc(judge, adaptive.x_adv, y)
    assert acc_eot <= acc_plain - 0.08, (acc_plain, acc_eot)


_LUMA50 = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
