"""The suite's order (tests/conftest.py): tests marked slow first, the longest before them."""

import types

import conftest
import pytest


def _item(name, mark=None):
  return types.SimpleNamespace(name=name, get_closest_marker=lambda m: mark if m == 'slow' else None)


def test_slow_tests_start_first_the_longest_first_otherwise_in_collection_order():
  items = [_item('a'), _item('b', pytest.mark.slow.mark), _item('c'),
           _item('d', pytest.mark.slow(minutes=4).mark), _item('e', pytest.mark.slow.mark)]
  conftest.pytest_collection_modifyitems(None, items)
  assert [i.name for i in items] == ['d', 'b', 'e', 'a', 'c']
