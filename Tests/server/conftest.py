"""Fixtures of the server tests: a served `acm-serve serve` per test module, and the golden fixtures."""
import pytest

from harness import Server, golden


@pytest.fixture(scope='module')
def server():
    """acm-serve with vit-mixed and vit-bias and the default batcher, for one test module."""
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope='session')
def mixed():
    """vit_mixed's golden tensors."""
    return golden('vit_mixed')


@pytest.fixture(scope='session')
def bias():
    """vit_bias's golden tensors."""
    return golden('vit_bias')
