"""Soft prompts: `[P, E]` parameters prepended to the embedded encoder inputs.

A prompt is a small, separate module with its own initializers and its own
logical axes (`prompt`, `prompt_embed`), so the transformer only sees a
`[batch, P, embed]` array. One prompt per name (`PromptConfig.names`): a
multi-task ProMoT run keeps one prompt per task, each in its own parameter set
(`prompt/<name>`).

Initializers (Lester et al., 2021; the prompt-tuning project):
  'uniform'       U(-scale, scale), the default with scale 0.5;
  'vocab_sample'  rows drawn from the token embedding table (optionally from
                  the first `vocab_sample_size` ids, the most frequent pieces);
  'class_labels'  the first rows are the mean embedding of each class label's
                  tokens, the rest sampled from the vocabulary;
  'file'          a `.npy` array of shape `[P, E]`.

Initializers that read the embedding table take the table the model holds
at initialization time; when a run starts from a pretrained checkpoint that
lacks the prompt, the trainer re-initializes the prompt from the restored
table (`init_prompt_array`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PROMPT_INITIALIZERS = ('uniform', 'vocab_sample', 'class_labels', 'file')


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Shape and initialization of the soft prompt(s)."""

  length: int = 100
  names: tuple[str, ...] = ('task',)
  init: str = 'uniform'
  init_scale: float = 0.5
  vocab_sample_size: int | None = 5000
  # Token ids of each class label, e.g. (('True' ids), ('False' ids)).
  class_label_ids: tuple[tuple[int, ...], ...] = ()
  init_file: str | None = None

  def __post_init__(self):
    object.__setattr__(self, 'names', tuple(self.names))
    object.__setattr__(self, 'class_label_ids',
                       tuple(tuple(int(t) for t in ids) for ids in self.class_label_ids))
    if self.length <= 0:
      raise ValueError(f'PromptConfig.length (PROMPT_LENGTH) must be positive, got {self.length}.')
    if not self.names or len(set(self.names)) != len(self.names):
      raise ValueError(f'PromptConfig.names must be non-empty and unique, got {self.names}.')
    for name in self.names:
      if not name.replace('_', '').isalnum():
        raise ValueError(f'Prompt name {name!r} must be alphanumeric/underscore '
                         '(it becomes a parameter path).')
    if self.init not in PROMPT_INITIALIZERS:
      raise ValueError(f'PromptConfig.init={self.init!r}; choose one of {PROMPT_INITIALIZERS}.')
    if self.init == 'file' and not self.init_file:
      raise ValueError("PromptConfig.init='file' needs PromptConfig.init_file (a .npy path).")
    if self.init == 'class_labels':
      if not self.class_label_ids or any(not ids for ids in self.class_label_ids):
        raise ValueError("PromptConfig.init='class_labels' needs class_label_ids, e.g. "
                         'from prompts.label_token_ids(labels, vocabulary).')
      if len(self.class_label_ids) > self.length:
        raise ValueError('More class labels than prompt positions.')

  def index(self, name: str) -> int:
    if name not in self.names:
      raise ValueError(f'No soft prompt named {name!r}; the model has {list(self.names)}.')
    return self.names.index(name)


def label_token_ids(labels: Sequence[str], vocabulary) -> tuple[tuple[int, ...], ...]:
  """Token ids of each label string, for the 'class_labels' initializer (gin-callable)."""
  return tuple(tuple(int(t) for t in vocabulary.encode(label)) for label in labels)


def _sample_rows(rng: jax.Array, embedding: jax.Array, count: int,
                 sample_size: int | None) -> jax.Array:
  population = embedding.shape[0] if not sample_size else min(sample_size, embedding.shape[0])
  ids = jax.random.choice(rng, population, (count,), replace=count > population)
  return jnp.take(embedding, ids, axis=0)


def init_prompt_array(rng: jax.Array, config: PromptConfig,
                      embedding: jax.Array) -> jax.Array:
  """A freshly initialized prompt `[P, E]` (float32).

  `embedding` is the token embedding table `[vocab, E]` (used by the
  'vocab_sample' and 'class_labels' initializers; its width sets E).
  """
  shape = (config.length, embedding.shape[-1])
  if config.init == 'uniform':
    return jax.random.uniform(rng, shape, jnp.float32, -config.init_scale, config.init_scale)
  if config.init == 'vocab_sample':
    return _sample_rows(rng, embedding, config.length, config.vocab_sample_size).astype(jnp.float32)
  if config.init == 'class_labels':
    labels = [jnp.mean(jnp.take(embedding, jnp.asarray(ids), axis=0), axis=0)
              for ids in config.class_label_ids]
    rest = _sample_rows(rng, embedding, config.length - len(labels), config.vocab_sample_size)
    return jnp.concatenate([jnp.stack(labels), rest], axis=0).astype(jnp.float32)
  array = np.load(config.init_file)
  if array.shape != shape:
    raise ValueError(f'Prompt file {config.init_file} holds shape {array.shape}; the '
                     f'model needs {shape} (PROMPT_LENGTH x emb_dim).')
  return jnp.asarray(array, jnp.float32)


class SoftPrompts(nn.Module):
  """One `[P, E]` parameter per prompt name; returns the chosen one per example."""

  config: PromptConfig
  emb_dim: int

  @nn.compact
  def __call__(self, prompt_index: jax.Array, embedding: jax.Array) -> jax.Array:
    """prompt_index: [batch] int -> prompts [batch, P, E] (float32)."""
    stacked = []
    for i, name in enumerate(self.config.names):
      def init(rng, shape, i=i):
        del shape
        return init_prompt_array(jax.random.fold_in(rng, i), self.config,
                                 jax.lax.stop_gradient(embedding))
      p = self.param(name, nn.with_logical_partitioning(init, ('prompt', 'prompt_embed')),
                     (self.config.length, self.emb_dim))
      stacked.append(p)
    if len(stacked) == 1:
      prompts = jnp.broadcast_to(stacked[0][None], (prompt_index.shape[0], *stacked[0].shape))
    else:
      prompts = jnp.take(jnp.stack(stacked), prompt_index, axis=0)
    return nn.with_logical_constraint(prompts, ('batch', 'length', 'embed'))
