"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread_for_wide_fixtures():
    """One thread from the start, so that module- and session-scoped fixtures (which are set up before
    `_one_thread`) compute with the same thread count as the tests that compare against them: float
    sums in the convolutions change with the number of threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests use small tensors: one thread is faster on them and does not oversubscribe a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _devices() -> list:
    cuda = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="no CUDA device here")])
    return ["cpu", cuda]


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    """Each device the test should run on: the CPU always, CUDA where a GPU exists (marked `cuda`)."""
    return torch.device(request.param)
