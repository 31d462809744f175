"""CMMD (cover_hpc.metrics.cmmd) on known values, and the CLIP image embeddings it is computed from, through
the real loading path of the tiny random CLIP models."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from cover_hpc.metrics.cmmd import cmmd

GAMMA = 1 / (2 * 10.0**2)  # sigma 10, the paper's bandwidth


def unit_set(count: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def test_identical_sets_are_exactly_zero() -> None:
    x = unit_set(12, 64, seed=0)
    assert cmmd(x, x) == 0.0
    assert cmmd(x, x.clone()) == 0.0
    assert cmmd(x.float(), x.float()) == 0.0


def test_symmetric() -> None:
    x, y = unit_set(10, 32, seed=1), unit_set(7, 32, seed=2)
    forward = cmmd(x, y)
    assert forward > 0
    assert cmmd(y, x) == pytest.approx(forward, rel=1e-12)


def test_grows_strictly_with_the_shift_of_one_set() -> None:
    """y: x moved towards a fixed direction by more and more (then normalised again)."""
    x = unit_set(16, 32, seed=3)
    direction = unit_set(1, 32, seed=4)
    values = [cmmd(x, x + shift * direction) for shift in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)]
    assert values[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(values)), values


def test_grows_strictly_with_the_rotation_of_one_set() -> None:
    """2-D unit vectors at angles 0-0.3 rad against the same set rotated by delta, 0 to 2.5 rad."""
    angles = [0.0, 0.1, 0.2, 0.3]
    x = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    values = []
    for delta in (0.0, 0.05, 0.15, 0.3, 0.6, 1.0, 1.5, 2.0, 2.5):
        y = torch.tensor([[math.cos(a + delta), math.sin(a + delta)] for a in angles], dtype=torch.float64)
        values.append(cmmd(x, y))
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert all(b > a for a, b in itertools.pairwise(values)), values


def test_hand_computed_two_dimensional_example() -> None:
    """x = {(1, 0), (0, 1)}, y = {(3, 4)}: normalised, y is (0.6, 0.8); sets of different sizes.

    Squared distances: within x 0 (twice) and 2 (twice); within y 0; x to y 0.4^2 + 0.8^2 = 0.8 and
    0.6^2 + 0.2^2 = 0.4. CMMD = 1000 (mean k_xx + mean k_yy - 2 mean k_xy), k = exp(-d^2 / 200).
    """
    k_xx = (2 * math.exp(0.0) + 2 * math.exp(-GAMMA * 2)) / 4
    k_yy = 1.0
    k_xy = (math.exp(-GAMMA * 0.8) + math.exp(-GAMMA * 0.4)) / 2
    expected = 1000 * (k_xx + k_yy - 2 * k_xy)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[3.0, 4.0]])
    # worked by hand: k_xx = (1 + 0.990050) / 2, k_xy = (0.996008 + 0.998002) / 2, 1000 (0.995025 + 1 - 1.994010)
    assert expected == pytest.approx(1.01493, abs=5e-5)
    assert cmmd(x, y) == pytest.approx(expected, rel=1e-12)
    # the same pair with one vector each: 1000 (2 - 2 exp(-2 gamma)) for orthogonal unit vectors
    assert cmmd(x[:1], x[1:]) == pytest.approx(1000 * (2 - 2 * math.exp(-2 * GAMMA)), rel=1e-12)
    # sigma and scale as given: sigma 1 gives gamma 1/2
    assert cmmd(x[:1], x[1:], sigma=1.0, scale=1.0) == pytest.approx(2 - 2 * math.exp(-1.0), rel=1e-12)


def test_matches_the_reference_formula() -> None:
    """google-research cmmd/distance.py's mmd, transcribed (diag of the Gram matrix, full means), in
    float64, on embeddings normalised as its CLIP model returns them; sets of different sizes."""
    x, y = unit_set(20, 512, seed=7), unit_set(30, 512, seed=8)
    x_sq, y_sq = torch.diag(x @ x.T), torch.diag(y @ y.T)
    k_xx = torch.exp(-GAMMA * (-2 * x @ x.T + x_sq[:, None] + x_sq[None, :])).mean()
    k_xy = torch.exp(-GAMMA * (-2 * x @ y.T + x_sq[:, None] + y_sq[None, :])).mean()
    k_yy = torch.exp(-GAMMA * (-2 * y @ y.T + y_sq[:, None] + y_sq[None, :])).mean()
    assert cmmd(x, y) == pytest.approx(float(1000 * (k_xx + k_yy - 2 * k_xy)), rel=1e-9)


def test_invariant_to_the_scale_of_each_embedding() -> None:
    x, y = unit_set(9, 16, seed=5), unit_set(11, 16, seed=6)
    reference = cmmd(x, y)
    row_scales = torch.linspace(0.01, 50.0, 9, dtype=torch.float64).unsqueeze(1)
    assert cmmd(x * row_scales, y * 1e-3) == pytest.approx(reference, rel=1e-9)
    assert cmmd(x.float() * 7, y.float()) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.zeros(0, 8), torch.ones(3, 8), "x is an empty set"),
        (torch.ones(3, 8), torch.zeros(0, 8), "y is an empty set"),
        (torch.ones(3, 8), torch.ones(3, 4), "dimensions differ: 8 and 4"),
        (torch.ones(8), torch.ones(3, 8), "must be 2-D"),
        (torch.ones(3, 8), torch.tensor([[1.0] * 8, [0.0] * 8]), "all-zero embedding"),
        (torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), "NaN or infinite"),
    ],
)
def test_errors(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cmmd(x, y)


def test_sigma_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sigma must be positive"):
        cmmd(torch.ones(2, 3), torch.ones(2, 3), sigma=0.0)


def solid_and_noise(count: int) -> tuple[list[Image.Image], list[Image.Image]]:
    generator = torch.Generator().manual_seed(0)
    solids = []
    for index in range(count):
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
        solids.append(Image.new("RGB", (48, 64), colour if index else (255, 255, 255)))
    noise = [
        Image.fromarray(torch.randint(0, 256, (64, 48, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(count)
    ]
    return solids, noise


@pytest.mark.tiny
@pytest.mark.parametrize("backend", ["transformers", "open_clip"])
def test_image_embeddings_through_the_real_loaders(tmp_path: Path, backend: str) -> None:
    """The tiny random CLIP, saved and loaded as a real one: (n, d) float32 CPU embeddings in
    batches that match one image at a time; CMMD 0 of a set with itself, > 0 against noise."""
    from cover_hpc.demo.tiny_clip import build_tiny_open_clip, build_tiny_transformers_clip
    from cover_hpc.metrics.clip_score import EMBED_BATCH, load_scorer

    build = build_tiny_transformers_clip if backend == "transformers" else build_tiny_open_clip
    scorer = load_scorer(backend, str(build(tmp_path / backend)), torch.device("cpu"))
    solids, noise = solid_and_noise(EMBED_BATCH + 4)  # two batches
    embeddings = scorer.image_embeddings(solids)
    assert embeddings.shape == (len(solids), 16)  # the tiny models' projection size
    assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    assert not embeddings.requires_grad and torch.isfinite(embeddings).all()
    one_by_one = torch.cat([scorer.image_embeddings([image]) for image in solids[:3]])
    torch.testing.assert_close(embeddings[:3], one_by_one, rtol=1e-4, atol=1e-5)
    assert torch.equal(scorer.image_embeddings(solids), embeddings)  # deterministic
    noise_embeddings = scorer.image_embeddings(noise)
    assert cmmd(embeddings, embeddings) == 0.0
    assert cmmd(embeddings, noise_embeddings) > 0.0
    with pytest.raises(ValueError, match="at least one image"):
        scorer.image_embeddings([])
    # the CLIP score is untouched by the new method
    assert len(scorer.scores(solids[:2], ["a red cover", "a blue cover"])) == 2
