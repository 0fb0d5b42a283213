"""Training checkpoints (orbax) and T5X-style restore from another checkpoint.

Layout of a run folder (MODEL_DIR):

  MODEL_DIR/checkpoints/<step>/params     full parameter tree (frozen sets included)
  MODEL_DIR/checkpoints/<step>/opt_state  optimizer state (trainable sets only)
  MODEL_DIR/checkpoints/<step>/meta       JSON: step, batches consumed, stage, metrics

Orbax writes each step into a temporary folder and renames it when complete,
so a crash (even SIGKILL) during a save leaves the previous checkpoint intact;
incomplete folders are ignored and cleaned up on the next start.

Starting from another checkpoint (`RestoreConfig`) follows T5X's semantics: an
assignment map of `(regex, replacement or None)` over flattened parameter
paths of the *new* model (first full match wins; the replacement gives the
path in the checkpoint, `None` means "do not restore, initialize"), and
fallback to initialization for parameters the checkpoint lacks where allowed
(the prompt, when stage 1 starts from a pretrained model).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from promot_t5x import fs, param_sets, selection
from promot_t5x.checkpoints import matching, orbax_io, sources

# The one error of a checkpoint check (restore and import alike), run-folder layout and
# source resolution live below this module; the names stay here for callers.
from promot_t5x.checkpoints.matching import CheckpointError
from promot_t5x.checkpoints.orbax_io import best_step, checkpoint_dir  # noqa: F401
from promot_t5x.checkpoints.sources import params_item
from promot_t5x.models import t5

ITEMS = ('params', 'opt_state', 'meta')


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
  """Where a new run takes its initial parameters from (INITIAL_CHECKPOINT_PATH).

  path: an orbax run folder (latest step), a step folder, a params folder, a
    legacy T5X checkpoint folder, or a Hugging Face T5/MT5 folder.
  assignment_map: ((regex over new paths, replacement path or None), ...).
  fallback_to_init: regexes of parameters that may be missing from the
    checkpoint and are then initialized (e.g. ('prompt/.*',)).
  step: 'latest' or 'best' (the best checkpoint on the run's metric) or an int.
  """

  path: str
  assignment_map: tuple[tuple[str, str | None], ...] = ()
  fallback_to_init: tuple[str, ...] = ()
  step: int | str = 'latest'

  def __post_init__(self):
    object.__setattr__(self, 'assignment_map',
                       tuple((str(a), None if b is None else str(b)) for a, b in self.assignment_map))
    object.__setattr__(self, 'fallback_to_init', tuple(self.fallback_to_init))
    for pattern, _ in self.assignment_map:
      re.compile(pattern)
    for pattern in self.fallback_to_init:
      re.compile(pattern)


def restore_config(path: str | None = None,
                   assignment_map: Sequence[tuple[str, str | None]] = (),
                   fallback_to_init: Sequence[str] = (),
                   step: int | str = 'latest') -> RestoreConfig | None:
  """gin-friendly: None when INITIAL_CHECKPOINT_PATH is None (start from initialization)."""
  if path is None:
    return None
  return RestoreConfig(path, tuple(tuple(x) for x in assignment_map), tuple(fallback_to_init),
                       step)


def restore_params(cfg: RestoreConfig, abstract_params: Mapping[str, Any],
                   init_fn: Callable[[list[str], dict[str, Any]], Mapping[str, Any]] | None = None,
                   module=None, shardings: Mapping[str, Any] | None = None,
                   ) -> tuple[dict[str, Any], matching.CheckpointReport]:
  """Parameters for a new run: checkpoint values where mapped, init elsewhere.

  abstract_params: the new model's (unboxed) parameter shapes (nested).
  init_fn: `init_fn(paths, restored)` returns {path: array} for the parameters
    that fall back to initialization (`restored`: the flat restored ones, e.g.
    for a prompt initialized from the embedding); called only if there are any.
  shardings: the new model's parameter shardings (nested, like
    abstract_params): each parameter comes back a jax.Array with its sharding,
    this process reading only its devices' slices. None: whole numpy arrays.
  Returns (nested parameters, `matching.CheckpointReport`). Raises
  `CheckpointError` naming every parameter that is missing (and not allowed
  to fall back) or has the wrong shape (both shapes given): the shared check
  `matching.fit`, as the importers use it.
  """
  source = sources.open_source(cfg.path, cfg.step)
  target = param_sets.flatten(abstract_params)
  flat_shardings = param_sets.flatten(shardings) if shardings is not None else {}
  # Checkpoint parameters the new model does not take are dropped (listed in the report).
  check = matching.fit({path: spec.shape for path, spec in target.items()},
                       {path: info.shape for path, info in source.shapes.items()},
                       assignment_map=cfg.assignment_map, allow_missing=cfg.fallback_to_init,
                       allow_unused=('.*',))
  plan, initialized, missing, wrong = check.plan, check.left_out, check.missing, check.wrong_shape
  if missing or wrong:
    parts = [f'Checkpoint {cfg.path} does not fit the model.']
    if missing:
      parts.append(f'Missing in the checkpoint: {missing}. Add them to fallback_to_init '
                   '(e.g. the prompt when starting from a pretrained model) or map them '
                   'with assignment_map.')
    if wrong:
      parts.append(f'Wrong shape: {wrong}. Check the model gin (sizes, vocabulary, '
                   'PROMPT_LENGTH) against the checkpoint.')
    raise CheckpointError(' '.join(parts))
  if initialized and init_fn is None:
    raise CheckpointError(f'{initialized} need initialization but no init_fn was given.')
  # One read per checkpoint parameter; a parameter restored into several places
  # (an assignment map may do that) is laid out again for each.
  by_src: dict[str, Any] = {}
  for path, src in plan.items():
    by_src.setdefault(src, flat_shardings.get(path))
  values = source.read(by_src)
  restored = {}
  for path, src in plan.items():
    value, sharding = values[src], flat_shardings.get(path)
    if sharding is not None and value.sharding != sharding:
      value = jax.device_put(value, sharding)
    restored[path] = value
  if initialized:
    fresh = init_fn(list(initialized), dict(restored))
    for path in initialized:
      restored[path] = fresh[path]
  where = cfg.path  # a run folder's step other than its latest is named
  if cfg.step == 'best':
    where = f'{cfg.path} (best step {orbax_io.best_step(cfg.path)})'
  elif cfg.step != 'latest':
    where = f'{cfg.path} (step {cfg.step})'
  report = matching.CheckpointReport(
      source=where, loaded=tuple(sorted(plan)), left_out=tuple(sorted(initialized)),
      from_fallback=tuple(sorted(initialized)), unused=tuple(sorted(check.unused)))
  return param_sets.unflatten(restored), report


# -----------------------------------------------------------------------------
# Run folders.
# -----------------------------------------------------------------------------
def load_run_params(path: str, step: int | str = 'latest') -> dict[str, Any]:
  """Nested numpy params of a run folder (latest, best or a given step), a step folder,
  or a params folder."""
  return orbax_io.load_params(params_item(path, step))


_EMPTY = {'_empty': np.zeros((), np.int32)}


def _is_empty(tree: Any) -> bool:
  return not jax.tree_util.tree_leaves(tree)


def _non_empty(tree: Any) -> Any:
  """orbax refuses empty items (an optimizer with no state): store a marker."""
  if not _is_empty(tree):
    return tree
  return _EMPTY


class _KeepBest:
  """orbax preservation policy: keep the manager's recorded best checkpoint (`selection`)."""

  def __init__(self, manager: TrainCheckpointManager):
    self._manager = manager

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
    del context
    keep = self._manager.kept_best_steps()
    return [c.step in keep for c in checkpoints]


class TrainCheckpointManager:
  """orbax CheckpointManager for a run: periodic saves, keep-N, keep-best (`promot_t5x.selection`)."""

  def __init__(self, model_dir: str, keep: int | None = 3,
               best_metric: str | None = None, best_mode: str = 'max',
               model_config: Any = None):
    """model_config: the run's `t5.T5Config`; with `scan_layers` the parameters are
    written in the unrolled layout and stacked again on restore (the optimizer
    state stays in the run's own layout: resume with the same `scan_layers`)."""
    self._scanned = model_config if getattr(model_config, 'scan_layers', False) else None
    selection.check_config(None, best_mode, False, None)
    self.directory = checkpoint_dir(fs.absolute(model_dir))
    self.best_metric = best_metric
    self.best_mode = best_mode
    # Held in memory on every process (all see the same metrics), so every
    # process takes the same save decisions; best.json is written by process 0.
    self.best = selection.read_best(self.directory) if best_metric else None
    # The step a save in progress is about to record as the new best.
    self._candidate: int | None = None
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:
      # Keeps the recorded best (best.json, read back on resume). Not orbax's BestN: it
      # ranks by metrics that a restarted manager does not read back, so the first save
      # after a resume pruned the best checkpoint while best.json still named it.
      policies.append(_KeepBest(self))
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    self._manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def is_new_best(self, metrics: Mapping[str, float] | None) -> bool:
    """Whether these evaluation metrics beat the run's best (False without a best metric)."""
    if not self.best_metric or not metrics:
      return False
    return selection.improves(self.best, selection.metric_value(metrics, self.best_metric),
                              self.best_mode)

  def save(self, step: int, params: Any, opt_state: Any, meta: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Saves a step; with `metrics` that beat the best, records and keeps it as the best."""
    record = None
    if self.is_new_best(metrics):
      record = selection.BestRecord(
          step=step, metric=self.best_metric,
          value=selection.metric_value(metrics, self.best_metric),
          order=1 if self.best is None else self.best.order + 1)
    if self._scanned is not None:
      params = t5.unscan_params(params, self._scanned)
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(_non_empty(opt_state)),
        meta=ocp.args.JsonSave(dict(meta)))
    self._candidate = record.step if record is not None else None
    try:
      self._manager.save(step, args=args, force=True)
      self._manager.wait_until_finished()
    finally:
      self._candidate = None
    if record is not None:
      self.best = record
      if jax.process_index() == 0:
        selection.write_best(self.directory, record)

  def kept_best_steps(self) -> set[int]:
    """The steps the keep-best policy preserves: the recorded best and a best being saved."""
    steps = {self.best.step} if self.best is not None else set()
    return steps | ({self._candidate} if self._candidate is not None else set())

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any
              ) -> tuple[Any, Any, dict[str, Any]]:
    """Restores onto the shardings carried by the abstract trees' ShapeDtypeStructs."""
    scanned_target = abstract_params
    if self._scanned is not None:  # on disk: unrolled
      abstract_params = t5.unscan_params(abstract_params, self._scanned,
                                         take=t5.take_layer_abstract)
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(_non_empty(abstract_opt_state)),
        meta=ocp.args.JsonRestore())
    try:
      # From the metadata first: a restore that orbax starts and abandons leaves reads in flight.
      _check_params_fit(fs.join(self.directory, str(step), 'params'), abstract_params)
      out = self._manager.restore(step, args=args)
    except Exception as e:  # orbax raises several types for tree/shape mismatches
      raise CheckpointError(
          f'Could not resume from {self.directory}/{step} ({_first_line(e)}). Either this '
          'checkpoint is damaged (then the newest intact one is used) or the run folder holds a '
          'checkpoint of another model or stage (then use the gin of the run that made it, '
          'or a fresh MODEL_DIR).') from e
    opt_state = abstract_opt_state if _is_empty(abstract_opt_state) else out['opt_state']
    params = out['params']
    if self._scanned is not None:
      params = place_like(t5.scan_params(params, self._scanned), scanned_target)
    return params, opt_state, dict(out['meta'])

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON record saved with `step` (stage, batches consumed, ...), read alone."""
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out['meta'])

  def restore_newest_intact(self, abstract_params: Any, abstract_opt_state: Any,
                            check_meta: Callable[[dict[str, Any]], None] | None = None
                            ) -> tuple[int, Any, Any, dict[str, Any], list[str]]:
    """Restores the newest checkpoint that reads; moves unreadable newer ones aside.

    A damaged latest checkpoint (a truncated file, a disk that filled up)
    must not cost the intact ones before it: each step is tried newest first,
    and those that fail to read while an older one restores are moved to
    MODEL_DIR/bad_checkpoints/<step> (kept for inspection, out of the run's way).

    Args:
      abstract_params, abstract_opt_state: as for `restore`.
      check_meta: called with each candidate's meta before its arrays are read;
        raises to refuse the run (another stage, a moved-on source).

    Returns:
      (step, params, opt_state, meta, the paths the bad checkpoints were moved to).

    Raises:
      CheckpointError: when no checkpoint restores (the newest one's error: a model
        or stage mismatch rather than damage, when every step fails alike).
    """
    failed: list[tuple[int, CheckpointError]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 (an unreadable record is a damaged checkpoint)
        failed.append((step, CheckpointError(
            f'{self.directory}/{step}: its record (meta) is unreadable ({_first_line(e)})')))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        params, opt_state, meta = self.restore(step, abstract_params, abstract_opt_state)
      except CheckpointError as e:
        failed.append((step, e))
        continue
      moved = self._move_aside([s for s, _ in failed]) if failed else []
      for (bad, e), where in zip(failed, moved):
        logging.warning('checkpoint %s is damaged: %s', bad, e)
        if jax.process_index() == 0:
          print(f'WARNING: checkpoint {self.directory}/{bad} could not be read '
                f'({_first_line(e.__cause__ or e)}); moved it to {where} and resumed from step '
                f'{step}, the newest intact checkpoint.', flush=True)
      return step, params, opt_state, meta, moved
    if not failed:
      raise CheckpointError(f'{self.directory} holds no checkpoint to resume from.')
    raise failed[0][1]

  def _move_aside(self, steps: Sequence[int]) -> list[str]:
    """Moves step folders to MODEL_DIR/bad_checkpoints/ (process 0; all processes wait)."""
    bad_dir = fs.join(fs.dirname(self.directory), 'bad_checkpoints')
    moved = []
    for step in steps:
      where = fs.join(bad_dir, str(step))
      n = 1
      while fs.exists(where):
        n += 1
        where = fs.join(bad_dir, f'{step}.{n}')
      moved.append(where)
    if jax.process_index() == 0:
      fs.makedirs(bad_dir)
      for step, where in zip(steps, moved):
        fs.replace(fs.join(self.directory, str(step)), where)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices('promot_t5x.bad_checkpoints_moved')
    self._manager.reload()
    return moved

  def close(self) -> None:
    self._manager.close()


def _check_params_fit(item: str, abstract_params: Any) -> None:
  """Raises ValueError when a params item's recorded names or shapes differ from the model's.

  Read from the item's metadata only, before any array: orbax abandons a
  restore at its first mismatch with the reads of the other arrays still in
  flight (their late results then land in a closed event loop; cli.py).
  """
  tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item)).tree
  stored = {k: tuple(m.shape) for k, m in
            param_sets.flatten(orbax_io.plain_dict(tree)).items()}
  wanted = {k: tuple(v.shape) for k, v in param_sets.flatten(abstract_params).items()}
  for k in sorted(set(stored) & set(wanted)):
    if stored[k] != wanted[k]:
      raise ValueError(f'parameter {k} has shape {stored[k]} in the checkpoint, {wanted[k]} in '
                       'this model')
  missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing or extra:
    raise ValueError(f'the checkpoint lacks parameters {missing[:5]} of this model'
                     if missing else f'the checkpoint has parameters {extra[:5]} this model lacks')


def place_like(params: Any, abstract: Any) -> Any:
  """`params` moved onto the shardings of `abstract`'s ShapeDtypeStructs (where they have one)."""
  def place(x, a):
    sharding = getattr(a, 'sharding', None)
    return x if sharding is None else jax.device_put(x, sharding)
  return jax.tree_util.tree_map(place, params, abstract)


def _first_line(e: BaseException, limit: int = 300) -> str:
  """The first line of an error (orbax and TensorStore add long tree dumps and stacks)."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return text if len(text) <= limit else text[:limit] + ' ...'

