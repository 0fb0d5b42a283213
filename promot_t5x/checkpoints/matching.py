"""Checking a checkpoint against a model: the one check that restore and import share.

A checkpoint's parameters are a flat `{'encoder/layers_0/attention/query/kernel':
shape or array, ...}`; a model's are `expected_shapes(model)` (or a trainer's
abstract parameters). `fit` compares the two: which checkpoint path each model
parameter comes from (an optional T5X assignment map renames or skips paths),
which model parameters the checkpoint lacks and may lack (`allow_missing`:
the soft prompt when starting from a pretrained model), which are missing or
of the wrong shape, and which checkpoint parameters the model does not take.
Both users of the check turn its answer into one `CheckpointError` that lists
every problem at once (a user fixing a gin file wants the whole list, not the
first problem) and, when it fits, one `CheckpointReport`:

- the importers (legacy T5X, Mesh-TensorFlow, Hugging Face) through
  `match_params`, which returns the nested float32 tree and copies allowed-missing
  parameters from `fallback_params` when given;
- the trainer's and evaluator's restore (`manager.restore_params`), which reads
  shard by shard and initializes the allowed-missing parameters.
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


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete, or does not fit the model (restore and import alike)."""


# The importers' name for the same error (kept for callers that catch it by that name).
CheckpointMismatchError = CheckpointError


@dataclasses.dataclass(frozen=True)
class CheckpointReport:
  """What a restore or an import took from a checkpoint, and what it did not.

  Attributes:
    source: where the checkpoint is (its path, or what the caller calls it).
    loaded: model parameters read from the checkpoint.
    left_out: model parameters the checkpoint lacks (or an assignment map sent
      to None) and was allowed to lack.
    from_fallback: of `left_out`, those that got a value elsewhere (the
      initialization, or an import's `fallback_params`).
    unused: checkpoint parameters the model does not take (dropped).
  """

  source: str
  loaded: tuple[str, ...]
  left_out: tuple[str, ...] = ()
  from_fallback: tuple[str, ...] = ()
  unused: tuple[str, ...] = ()

  def summary(self) -> str:
    lines = [f'restored {len(self.loaded)} parameters from {self.source}']
    if self.from_fallback:
      lines.append('initialized (not in checkpoint or mapped to None): '
                   f'{list(self.from_fallback)}')
    absent = [p for p in self.left_out if p not in self.from_fallback]
    if absent:
      lines.append(f'left out (not in checkpoint; initialize them yourself): {absent}')
    if self.unused:
      lines.append(f'checkpoint parameters not used: {list(self.unused)}')
    return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Fit:
  """`fit`'s answer. Model-side lists follow the model's order, checkpoint-side the checkpoint's.

  Attributes:
    plan: {model path: checkpoint path} of the parameters to read.
    left_out: model parameters not read and allowed not to be (mapped to None,
      or missing and matching `allow_missing`).
    missing: model parameters the checkpoint lacks and may not lack
      ('path (mapped to other/path)' when an assignment map renamed it).
    wrong_shape: 'path: checkpoint (a, b) vs model (c, d)'.
    unexpected: checkpoint parameters no model parameter takes, not allowed.
    unused: the same, allowed by `allow_unused`.
  """

  plan: dict[str, str]
  left_out: list[str]
  missing: list[str]
  wrong_shape: list[str]
  unexpected: list[str]
  unused: list[str]


def fit(expected: Mapping[str, Sequence[int]], available: Mapping[str, Sequence[int]], *,
        assignment_map: Sequence[tuple[str, str | None]] = (),
        allow_missing: Iterable[str] = (),
        allow_unused: Iterable[str] = ()) -> Fit:
  """Checks a checkpoint's parameter shapes against a model's.

  Args:
    expected: {model path: shape}, the model's parameters.
    available: {checkpoint path: shape}, the checkpoint's.
    assignment_map: T5X's ((regex over model paths, replacement or None), ...):
      the first pattern that fully matches a model path gives its checkpoint
      path (`re.sub(pattern, replacement, path)`), or None: not read (left out).
      Unmatched paths are looked up under their own name.
    allow_missing: regexes (full match) of model parameters the checkpoint may lack.
    allow_unused: regexes of checkpoint parameters the model may not take.

  Returns:
    A `Fit`; nothing is raised here, each caller words its own error.
  """
  rules = list(zip(_compile([pattern for pattern, _ in assignment_map], 'assignment_map'),
                   [replacement for _, replacement in assignment_map]))
  missing_ok = _compile(allow_missing, 'allow_missing')
  unused_ok = _compile(allow_unused, 'allow_unused')
  plan, left_out, missing, wrong_shape, wanted = {}, [], [], [], set()
  for path, shape in expected.items():
    src = path
    for pattern, replacement in rules:
      if pattern.fullmatch(path):
        src = None if replacement is None else pattern.sub(replacement, path)
        break
    if src is None:
      left_out.append(path)
      continue
    wanted.add(src)
    if src not in available:
      if _matches(path, missing_ok):
        left_out.append(path)
      else:
        missing.append(path if src == path else f'{path} (mapped to {src})')
      continue
    have = tuple(int(d) for d in available[src])
    if have != tuple(int(d) for d in shape):
      wrong_shape.append(f'{path}: checkpoint {have} vs model {tuple(int(d) for d in shape)}')
      continue
    plan[path] = src
  not_taken = [p for p in available if p not in wanted]
  return Fit(plan=plan, left_out=left_out, missing=missing, wrong_shape=wrong_shape,
             unexpected=[p for p in not_taken if not _matches(p, unused_ok)],
             unused=[p for p in not_taken if _matches(p, unused_ok)])


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
) -> tuple[dict[str, Any], CheckpointReport]:
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
    CheckpointError: listing every missing, unexpected and
      wrong-shape parameter (with both shapes).
  """
  expected = expected_shapes(model)
  check = fit(expected, {p: np.shape(v) for p, v in flat.items()},
              allow_missing=allow_missing, allow_unused=allow_unused)
  missing, left_out = sorted(check.missing), sorted(check.left_out)
  unexpected, unused = sorted(check.unexpected), sorted(check.unused)
  wrong_shape = sorted(check.wrong_shape)

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
    raise CheckpointError('\n'.join(parts))

  result = {p: np.asarray(flat[p], dtype=np.float32) for p in check.plan}
  from_fallback = []
  if fallback_params is not None and left_out:
    fallback_flat = param_sets.flatten(nn.unbox(fallback_params))
    for p in left_out:
      if p not in fallback_flat:
        raise CheckpointError(
            f'{p} is missing from the checkpoint {source} and from fallback_params.')
      value = np.asarray(jax.device_get(fallback_flat[p]), dtype=np.float32)
      if value.shape != expected[p]:
        raise CheckpointError(
            f'fallback_params[{p!r}] has shape {value.shape}; the model needs {expected[p]}.')
      result[p] = value
      from_fallback.append(p)

  report = CheckpointReport(source=source, loaded=tuple(sorted(check.plan)),
                            left_out=tuple(left_out), from_fallback=tuple(from_fallback),
                            unused=tuple(unused))
  logging.info('%s', report.summary())
  if left_out and not from_fallback:
    logging.warning('Parameters not in %s were left out of the imported tree: %s', source,
                    ', '.join(left_out))
  return param_sets.unflatten(result), report
