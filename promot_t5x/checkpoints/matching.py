"""Matching an imported checkpoint against a model's parameter tree.

Every importer (legacy T5X, Hugging Face) turns its file into a flat dict
`{'encoder/layers_0/attention/query/kernel': np.ndarray, ...}` and hands it to
`match_params`, which checks it against the model's abstract parameters
(`t5.abstract_params`) and either returns the nested float32 tree or raises
one `CheckpointMismatchError` that lists every missing, unexpected and
wrong-shape parameter at once (a user fixing a gin file wants the whole list,
not the first problem).

Parameters the checkpoint cannot hold (the soft prompt when starting from a
pretrained model) are allowed to be missing by regex (`allow_missing`); they
are left out of the result, or taken from `fallback_params` when given, and
named in the `ImportReport`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from promot_t5x import param_sets
from promot_t5x.models import t5

# The soft prompt never exists in a pretrained checkpoint.
PROMPT_PATTERN = r'prompt/.*'
_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
  """The checkpoint's parameters do not match the model's."""


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What an import did: which parameters came from where."""

  source: str
  loaded: tuple[str, ...]
  # Allowed to be missing and absent from the checkpoint.
  left_out: tuple[str, ...] = ()
  # Of `left_out`: the ones taken from `fallback_params`.
  from_fallback: tuple[str, ...] = ()
  # In the checkpoint, not in the model, and allowed to be dropped.
  unused: tuple[str, ...] = ()

  def summary(self) -> str:
    lines = [f'Imported {len(self.loaded)} parameters from {self.source}.']
    if self.left_out:
      how = ('taken from the fallback parameters' if self.from_fallback
             else 'left out: initialize them yourself')
      lines.append(f'Not in the checkpoint ({how}): {", ".join(self.left_out)}.')
    if self.unused:
      lines.append(f'In the checkpoint but not in the model (dropped): {", ".join(self.unused)}.')
    return ' '.join(lines)


def transformer_of(model: Any) -> t5.Transformer:
  """The flax `Transformer` of a `Transformer` or an `EncoderDecoderModel`."""
  if isinstance(model, t5.Transformer):
    return model
  module = getattr(model, 'module', None)
  if isinstance(module, t5.Transformer):
    return module
  raise TypeError('Expected a t5.Transformer or an EncoderDecoderModel, got '
                  f'{type(model).__name__}.')


def expected_shapes(model: Any) -> dict[str, tuple[int, ...]]:
  """{'/'-joined path: shape} of every parameter of `model` (nothing allocated).

  In the checkpoint (unrolled) layout also for a model with `scan_layers`.
  """
  module = transformer_of(model)
  abstract = t5.unscan_params(nn.unbox(t5.abstract_params(module)), module.config,
                              take=t5.take_layer_abstract)
  flat = param_sets.flatten(abstract)
  return {path: tuple(int(d) for d in leaf.shape) for path, leaf in flat.items()}


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern]:
  if isinstance(patterns, str):
    patterns = (patterns,)  # a lone regex, not its characters
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f'{what}: bad regular expression {p!r}: {e}') from e
  return compiled


def _matches(path: str, patterns: Sequence[re.Pattern]) -> bool:
  return any(p.fullmatch(path) for p in patterns)


def _listing(items: Sequence[str]) -> str:
  shown = [f'  {x}' for x in items[:_MAX_LISTED]]
  if len(items) > _MAX_LISTED:
    shown.append(f'  ... and {len(items) - _MAX_LISTED} more')
  return '\n'.join(shown)


def match_params(
    flat: Mapping[str, Any],
    model: Any,
    *,
    source: str,
    allow_missing: Iterable[str] = (),
    allow_unused: Iterable[str] = (),
    fallback_params: Mapping[str, Any] | None = None,
    hint: str = '',
) -> tuple[dict[str, Any], ImportReport]:
  """Checks `flat` against `model`'s parameters; returns (nested float32 tree, report).

  Args:
    flat: checkpoint arrays by '/'-joined T5X path.
    model: a `t5.Transformer` or `EncoderDecoderModel`.
    source: where `flat` came from (for messages).
    allow_missing: regexes (full match) of model parameters the checkpoint may
      lack, e.g. `('prompt/.*',)`.
    allow_unused: regexes of checkpoint parameters the model may lack (dropped).
    fallback_params: a (nested, unboxed) parameter tree of the model, e.g.
      `model.init_params(rng)`; allowed-missing parameters are copied from it.
      Without it they are left out of the result.
    hint: extra advice appended to a mismatch error (how to fix the config).

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and
      wrong-shape parameter (with both shapes).
  """
  expected = expected_shapes(model)
  missing_ok = _compile(allow_missing, 'allow_missing')
  unused_ok = _compile(allow_unused, 'allow_unused')

  missing = sorted(p for p in expected if p not in flat and not _matches(p, missing_ok))
  left_out = sorted(p for p in expected if p not in flat and _matches(p, missing_ok))
  unexpected = sorted(p for p in flat if p not in expected and not _matches(p, unused_ok))
  unused = sorted(p for p in flat if p not in expected and _matches(p, unused_ok))
  wrong_shape = sorted(
      f'{p}: checkpoint {tuple(np.shape(flat[p]))} vs model {expected[p]}'
      for p in expected if p in flat and tuple(np.shape(flat[p])) != expected[p])

  if missing or unexpected or wrong_shape:
    parts = [f'The checkpoint {source} does not match the model '
             f'({len(expected)} parameters expected, {len(flat)} in the checkpoint).']
    if wrong_shape:
      parts.append(f'Wrong shape ({len(wrong_shape)}):\n{_listing(wrong_shape)}')
    if missing:
      parts.append(f'Missing from the checkpoint ({len(missing)}):\n{_listing(missing)}')
    if unexpected:
      parts.append(f'In the checkpoint but not in the model ({len(unexpected)}):\n'
                   f'{_listing(unexpected)}')
    advice = ('Make the model config (model gin / T5Config: emb_dim, num_heads, head_dim, '
              'mlp_dim, layer counts, vocab_size, mlp_activations, logits_via_embedding) '
              'match the checkpoint.')
    if missing:
      advice += (' If some parameters are meant to start from initialization, pass '
                 "allow_missing=[regex, ...] (e.g. 'prompt/.*').")
    if unexpected:
      advice += ' To drop checkpoint parameters the model does not use, pass allow_unused.'
    parts.append(advice + (' ' + hint if hint else ''))
    raise CheckpointMismatchError('\n'.join(parts))

  result = {p: np.asarray(flat[p], dtype=np.float32) for p in expected if p in flat}
  from_fallback = []
  if fallback_params is not None and left_out:
    fallback_flat = param_sets.flatten(nn.unbox(fallback_params))
    for p in left_out:
      if p not in fallback_flat:
        raise CheckpointMismatchError(
            f'{p} is missing from the checkpoint {source} and from fallback_params.')
      value = np.asarray(jax.device_get(fallback_flat[p]), dtype=np.float32)
      if value.shape != expected[p]:
        raise CheckpointMismatchError(
            f'fallback_params[{p!r}] has shape {value.shape}; the model needs {expected[p]}.')
      result[p] = value
      from_fallback.append(p)

  report = ImportReport(source=source, loaded=tuple(sorted(p for p in expected if p in flat)),
                        left_out=tuple(left_out), from_fallback=tuple(from_fallback),
                        unused=tuple(unused))
  logging.info('%s', report.summary())
  if left_out and not from_fallback:
    logging.warning('Parameters not in %s were left out of the imported tree: %s', source,
                    ', '.join(left_out))
  return param_sets.unflatten(result), report
