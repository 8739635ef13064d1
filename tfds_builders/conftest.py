"""The builders' TFDS conformance tests (`*_dataset_builder_test.py`) belong
to the full test tier (`make test-all`)."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid.startswith('tfds_builders/'):
            item.add_marker(pytest.mark.slow)
