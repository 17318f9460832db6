"""The batch grader: photos graded together get the probabilities each would get alone."""

import threading

import numpy as np
import pytest
import torch

from compositional_ai.repair_service.serving import BatchGrader
from compositional_ai.vision.model import DamageCNN, DamageEnsemble
from compositional_ai.vision.training import predict_proba

SIZE = 32


def _cnn(seed: int) -> DamageCNN:
    torch.manual_seed(seed)
    model = DamageCNN(4, width=8, image_size=SIZE)
    # Running statistics away from (0, 1), so eval-mode BatchNorm differs from batch statistics.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _ensemble() -> DamageEnsemble:
    # What the service may serve: seeds averaged over flips, with prior correction.
    weights = torch.tensor([[1.0, 2.0, 3.0, 0.5], [0.7, 1.0, 4.0, 1.5]])
    return DamageEnsemble([_cnn(1), _cnn(2)], flips=True, class_weights=weights).eval()


def _photos(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE), dtype=np.uint8)


def _grade_concurrently(grader: BatchGrader, jobs: list[tuple[object, np.ndarray]]) -> list:
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(index: int) -> None:
        model, pixels = jobs[index]
        start.wait()
        try:
            results[index] = grader.grade(model, pixels[None])
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.fixture
def grader():
    grader = BatchGrader(max_batch=8)
    grader.start()
    yield grader
    grader.stop()


class _Gated(torch.nn.Module):
    """The wrapped model, whose first forward pass waits for `gate`; records batch sizes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.sizes:
            self.entered.set()
            self.gate.wait(timeout=30)
        self.sizes.append(len(images))
        return self.model(images)


@pytest.mark.parametrize("model_factory", [lambda: _cnn(0), _ensemble], ids=["cnn", "ensemble"])
def test_waiting_photos_are_graded_together_as_each_would_be_alone(grader, model_factory):
    model = _Gated(model_factory())
    photos = _photos(20)
    alone = np.stack([predict_proba(model.model, photo[None])[0] for photo in photos])
    results: list = [None] * len(photos)

    def run(index: int) -> None:
        results[index] = grader.grade(model, photos[index][None])

    # The first photo holds the grader in its forward pass until the other 19 are waiting.
    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(photos))]
    threads[0].start()
    assert model.entered.wait(timeout=30)
    for thread in threads[1:]:
        thread.start()
    while grader._jobs.qsize() < len(photos) - 1:
        threading.Event().wait(0.01)
    model.gate.set()
    for thread in threads:
        thread.join(timeout=60)

    assert model.sizes == [1, 8, 8, 3]
    assert np.allclose(np.stack(results), alone, rtol=0, atol=1e-6)
    assert (np.stack(results).argmax(axis=1) == alone.argmax(axis=1)).all()


def test_each_photo_is_graded_by_the_model_it_was_sent_with(grader):
    # A hot swap leaves requests on two versions at once; each gets its own version's answer.
    old, new = _cnn(0), _cnn(5)
    photos = _photos(12, seed=1)
    jobs = [(old if index % 2 else new, photo) for index, photo in enumerate(photos)]
    expected = [predict_proba(model, photo[None])[0] for model, photo in jobs]

    graded = _grade_concurrently(grader, jobs)

    assert all(
        np.allclose(got, want, rtol=0, atol=1e-6)
        for got, want in zip(graded, expected, strict=True)
    )
    assert not np.allclose(expected[0], predict_proba(old, photos[:1])[0], atol=1e-3)


def test_a_failing_model_fails_its_requests_only(grader):
    class Broken(torch.nn.Module):
        num_classes = 4

        def forward(self, images):
            raise RuntimeError("broken weights")

    good, broken = _cnn(0), Broken()
    photos = _photos(6, seed=2)

    graded = _grade_concurrently(
        grader, [(broken if i < 3 else good, p) for i, p in enumerate(photos)]
    )

    assert all(isinstance(result, RuntimeError) for result in graded[:3])
    assert all(isinstance(result, np.ndarray) and result.shape == (4,) for result in graded[3:])


def test_a_stopped_grader_refuses_work():
    grader = BatchGrader()
    grader.start()
    grader.stop()

    with pytest.raises(RuntimeError, match="not running"):
        grader.grade(_cnn(0), _photos(1))


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        BatchGrader(max_batch=0)
