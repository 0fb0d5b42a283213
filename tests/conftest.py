"""Test-session set-up: 8 fake CPU devices, quiet TensorFlow, no network."""

import os

# Must happen before jax is imported anywhere: every test process sees 8 CPU
# devices so mesh tests run in the same session as single-device ones.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TFDS_DATA_DIR', '/nonexistent-no-downloads')
# Persistent XLA compilation cache shared by the test process and the runs it
# starts: the same tiny programs are compiled by many subprocess tests.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join('/tmp', f'promot-t5x-jax-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# Test-only task modules (a user's own MIXTURE_OR_TASK_MODULE, toy tasks).
sys.path.insert(0, str(REPO / 'tests' / 'testdata'))
# Files written by other projects (provenance: tests/testdata/README.md).
FIXTURES = REPO / 'tests' / 'testdata'


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


@pytest.fixture(scope='session')
def repo_dir() -> pathlib.Path:
  return REPO


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` run first, the longest (`slow(minutes=N)`) before the others.

  `make test` spreads the tests over parallel workers that steal work from each other
  (pytest-xdist's worksteal); a long test started last would leave the other workers idle.
  The sort is stable: the order is otherwise the collection's.
  """
  del config

  def weight(item):
    mark = item.get_closest_marker('slow')
    return -mark.kwargs.get('minutes', 0.5) if mark else 0

  items.sort(key=weight)
