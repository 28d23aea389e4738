import pytest
import torch

# CPU-sized model settings shared by the model and CLI tests (n_dyad 4 divides every width here).
SMALL = dict(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128, image_size=16, patch_size=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def small():
    return dict(SMALL)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core box OpenMP spinning makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
