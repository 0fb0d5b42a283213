"""Greedy / beam search with the key/value cache, and rank classification.

The cached decoder is checked against the plain (teacher-forced, uncached)
decoder: same logits at every step, same greedy tokens. Beam search is checked
against greedy search, against re-scoring its hypotheses with the full model,
and against an exhaustive search on a 6-token vocabulary.
"""

import functools
import itertools

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promot_t5x import decoding
from promot_t5x.models import encoder_decoder, prompts, t5

EOS = 1
MAX_LEN = 6
# Rows of different lengths, so the encoder mask matters.
INPUTS = np.array([[5, 6, 7, 8, 9, 10, 11, EOS],
                   [12, 13, EOS, 0, 0, 0, 0, 0],
                   [20, 21, 22, 23, EOS, 0, 0, 0],
                   [30, 31, 32, 33, 34, 35, 36, 37]], np.int32)


def _random_params(module, seed):
  """T5-like random parameters drawn with numpy.

  Compiling `init_params` costs seconds of CPU; numpy draws are instant, and
  decoding only needs some fixed, non-trivial model.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'scale':
      return np.ones(leaf.shape, np.float32)
    if name in ('embedding', 'rel_embedding'):
      return rng.normal(size=leaf.shape).astype(np.float32)
    if path[0].key == 'prompt':
      return rng.uniform(-0.5, 0.5, leaf.shape).astype(np.float32)
    return (rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, flax.linen.unbox(t5.abstract_params(module)))
  # A larger EOS column makes EOS likely in some contexts and unlikely in
  # others, so decodes end at different steps.
  params['decoder']['logits_dense']['kernel'][:, EOS] *= 3.0
  return params


def _tiny_model(vocab_size=50, prompt_length=None, seed=0):
  config = t5.T5Config(
      vocab_size=vocab_size, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
      num_encoder_layers=2, num_decoder_layers=2,
      prompt=prompts.PromptConfig(length=prompt_length) if prompt_length else None)
  model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config))
  return model, _random_params(model.module, seed)


@pytest.fixture(scope='module', params=['plain', 'soft_prompt'])
def setup(request):
  """(model, params, batch): the plain model, or one with a 3-token soft prompt."""
  if request.param == 'plain':
    model, params = _tiny_model()
    return model, params, {'encoder_input_tokens': INPUTS}
  model, params = _tiny_model(prompt_length=3)
  return model, params, {'encoder_input_tokens': INPUTS,
                         'prompt_index': np.zeros(len(INPUTS), np.int32)}


@functools.partial(jax.jit, static_argnums=0)
def _uncached_logits(module, params, encoder_input_tokens, decoder_input_tokens,
                     prompt_index):
  return module.apply({'params': params}, encoder_input_tokens, decoder_input_tokens,
                      jnp.ones_like(decoder_input_tokens), prompt_index=prompt_index)


def _full_logits(model, params, batch, decoder_input_tokens):
  """Uncached decoder logits [B, T, V], every decoder position real (token 0 too)."""
  return _uncached_logits(model.module, params, batch['encoder_input_tokens'],
                          jnp.asarray(decoder_input_tokens), batch.get('prompt_index'))


def _next_token_log_probs(model, params, batch, tokens):
  """[B, L, V]: log p(next token | BOS + tokens[:i]) at each position i (uncached)."""
  inputs = jnp.pad(jnp.asarray(tokens)[:, :-1], ((0, 0), (1, 0)))
  return np.asarray(jax.nn.log_softmax(_full_logits(model, params, batch, inputs)))


def _rescore(model, params, batch, tokens, lengths):
  """Summed log p(tokens[:length]) under the uncached model; tokens [B, L]."""
  log_probs = _next_token_log_probs(model, params, batch, tokens)
  token_lp = np.take_along_axis(log_probs, np.asarray(tokens)[..., None], axis=-1)[..., 0]
  mask = np.arange(tokens.shape[1])[None] < np.asarray(lengths)[:, None]
  return np.sum(np.where(mask, token_lp, 0.0), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _encode_and_prefill(module, params, prompt_index):
  """The cache API: encode once; 'prefill' creates the key/value cache."""
  encoded = module.apply({'params': params}, INPUTS, prompt_index=prompt_index,
                         method=t5.Transformer.encode)
  _, variables = module.apply(
      {'params': params}, encoded, INPUTS, jnp.zeros((len(INPUTS), 1), jnp.int32),
      prompt_index=prompt_index, decode_mode='prefill', max_decode_length=MAX_LEN,
      method=t5.Transformer.decode, mutable=['cache'])
  return encoded, variables['cache']


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(module, params, cache, encoded, tokens, prompt_index, kernel_t=None):
  """One [B, 1] token through the cached decoder -> (logits [B, 1, V], variables)."""
  return module.apply({'params': params, 'cache': cache}, encoded, INPUTS, tokens,
                      prompt_index=prompt_index, decode_mode='step',
                      max_decode_length=MAX_LEN, method=t5.Transformer.decode,
                      mutable=['cache'], logits_kernel_t=kernel_t)


def test_cached_step_logits_match_full_decoder(setup):
  model, params, batch = setup
  module, prompt_index = model.module, batch.get('prompt_index')
  targets = np.random.default_rng(0).integers(2, 50, size=(len(INPUTS), MAX_LEN))
  decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0))).astype(np.int32)
  expected = _full_logits(model, params, batch, decoder_inputs)

  # Both ways of computing a step's logits: logits_dense as stored, and its
  # kernel transposed once ([vocab, embed]), as predict_batch does.
  assert not module.config.logits_via_embedding
  kernel_t = params['decoder']['logits_dense']['kernel'].T
  for transposed in (None, kernel_t):
    encoded, cache = _encode_and_prefill(module, params, prompt_index)
    for i in range(MAX_LEN):
      logits, variables = _decode_step(module, params, cache, encoded,
                                       decoder_inputs[:, i:i + 1], prompt_index, transposed)
      cache = variables['cache']
      np.testing.assert_allclose(logits[:, 0], expected[:, i], atol=1e-5, rtol=1e-5)


def test_cached_greedy_matches_uncached_greedy(setup):
  model, params, batch = setup
  # Reference without a cache: re-run the full decoder on the prefix decoded
  # so far and take the arg-max at its last position. The prefix sits in a
  # fixed [B, MAX_LEN] array (one compilation); the causal mask hides the
  # placeholder positions after it.
  decoder_inputs = np.zeros((len(INPUTS), MAX_LEN), np.int32)
  expected = np.zeros((len(INPUTS), MAX_LEN), np.int32)
  done = np.zeros(len(INPUTS), bool)
  for i in range(MAX_LEN):
    logits = _full_logits(model, params, batch, decoder_inputs)[:, i]
    expected[:, i] = np.where(done, 0, np.argmax(logits, axis=-1))
    done |= expected[:, i] == EOS
    if i + 1 < MAX_LEN:
      decoder_inputs[:, i + 1] = expected[:, i]

  tokens, aux = model.predict_batch_with_scores(params, batch, max_decode_length=MAX_LEN)
  np.testing.assert_array_equal(tokens, expected)
  # Some rows end early (EOS, then 0s) and others run to the length limit.
  ended = (expected == EOS).any(axis=1)
  assert ended.any() and not ended.all()
  np.testing.assert_array_equal(aux['lengths'],
                                np.where(ended, np.argmax(expected == EOS, axis=1) + 1, MAX_LEN))
  np.testing.assert_allclose(aux['log_probs'],
                             _rescore(model, params, batch, tokens, aux['lengths']), atol=1e-4)


def test_beam_width_one_is_greedy():
  model, params = _tiny_model()
  batch = {'encoder_input_tokens': INPUTS}
  greedy, greedy_aux = model.predict_batch_with_scores(params, batch,
                                                       max_decode_length=MAX_LEN)
  for alpha in (0.0, 0.6):
    beam, beam_aux = model.predict_batch_with_scores(
        params, batch, decoder='beam', num_beams=1, max_decode_length=MAX_LEN, alpha=alpha)
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_allclose(beam_aux['log_probs'], greedy_aux['log_probs'], atol=1e-5)


def test_beam_search_beats_greedy_and_scores_its_beams_correctly():
  # The soft-prompt model: prompt_index is expanded to the beams too.
  model, params = _tiny_model(prompt_length=3)
  batch = {'encoder_input_tokens': INPUTS, 'prompt_index': np.zeros(len(INPUTS), np.int32)}
  alpha = 0.6
  greedy, greedy_aux = model.predict_batch_with_scores(params, batch,
                                                       max_decode_length=MAX_LEN)
  beams, aux = model.predict_batch_with_scores(params, batch, decoder='beam', num_beams=4,
                                               max_decode_length=MAX_LEN, alpha=alpha,
                                               return_all_beams=True)
  assert beams.shape == (len(INPUTS), 4, MAX_LEN)
  greedy_score = decoding.length_penalized_score(greedy_aux['log_probs'],
                                                 greedy_aux['lengths'], alpha)
  # Not a theorem for beam search in general, but it holds on this model; the
  # exhaustive test below is the exact check.
  assert np.all(aux['scores'][:, 0] >= greedy_score - 1e-5)
  assert np.any(aux['scores'][:, 0] > greedy_score + 1e-3)   # beams found better ones
  assert np.all(np.diff(aux['scores'], axis=1) <= 0)          # best first
  # Every beam's log-probability is that of its tokens under the full model:
  # the cache was reordered with the beams. EOS ends a beam; 0s follow it.
  for j in range(4):
    np.testing.assert_allclose(
        aux['log_probs'][:, j],
        _rescore(model, params, batch, beams[:, j], aux['lengths'][:, j]), atol=1e-4)
  for example in np.asarray(beams):                           # 4 different hypotheses
    assert len({tuple(beam) for beam in example}) == 4
  for row, length in zip(beams.reshape(-1, MAX_LEN), np.ravel(aux['lengths'])):
    ends = np.flatnonzero(row == EOS)
    assert (ends.size and length == ends[0] + 1) or (not ends.size and length == MAX_LEN)
    assert np.all(row[length:] == 0)
  best = model.predict_batch(params, batch, decoder='beam', num_beams=4,
                             max_decode_length=MAX_LEN, alpha=alpha)
  np.testing.assert_array_equal(best, beams[:, 0])


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_beam_search_finds_exhaustive_optimum(alpha):
  vocab, length = 6, 3
  model, params = _tiny_model(vocab_size=vocab, seed=3)
  batch = {'encoder_input_tokens': np.array([[2, 3, 4, EOS], [5, 4, EOS, 0]], np.int32)}
  # Every hypothesis: EOS after 0..length-1 non-EOS tokens, or `length` non-EOS
  # tokens (truncated). Token 0 is an ordinary output for the decoder (as in
  # T5X; trained models rarely emit it), and this random model likes it.
  other = [t for t in range(vocab) if t != EOS]
  hypotheses = [list(p) + [EOS] for n in range(length) for p in itertools.product(other, repeat=n)]
  hypotheses += [list(p) for p in itertools.product(other, repeat=length)]
  tokens = np.array([h + [0] * (length - len(h)) for h in hypotheses], np.int32)
  lengths = np.array([len(h) for h in hypotheses])
  best_scores, best_tokens, greedy_scores = [], [], []
  for row in batch['encoder_input_tokens']:
    one = {'encoder_input_tokens': np.repeat(row[None], len(hypotheses), axis=0)}
    table = _next_token_log_probs(model, params, one, tokens)      # [hypotheses, 3, 6]
    token_lp = np.take_along_axis(table, tokens[..., None], axis=-1)[..., 0]
    log_probs = np.sum(np.where(np.arange(length) < lengths[:, None], token_lp, 0.0), axis=1)
    scores = decoding.length_penalized_score(log_probs, lengths, alpha)
    best_scores.append(np.max(scores))
    best_tokens.append(tokens[np.argmax(scores)])
    # The greedy path, read from the same table: any hypothesis that starts
    # with the path so far holds the next-token distribution after it.
    path, path_lp = [], 0.0
    while len(path) < length and EOS not in path:
      n = next(n for n, h in enumerate(hypotheses) if h[:len(path)] == path)
      path.append(int(np.argmax(table[n, len(path)])))
      path_lp += table[n, len(path) - 1, path[-1]]
    greedy_scores.append(decoding.length_penalized_score(path_lp, len(path), alpha))
  # Slots for every candidate before the last step keep the search
  # exhaustive: at step 2 these are 5 * 6 extensions + 1 finished = 31; at
  # the last step the optimum is the best candidate, so it keeps a slot.
  exact_width = 1 + (vocab - 1) * vocab
  found, aux = model.predict_batch_with_scores(params, batch, decoder='beam',
                                               num_beams=exact_width,
                                               max_decode_length=length, alpha=alpha)
  np.testing.assert_allclose(aux['scores'], best_scores, atol=1e-5)
  np.testing.assert_array_equal(found, best_tokens)
  # Greedy misses the optimum here, so the search mattered.
  assert np.any(np.array(greedy_scores) < np.array(best_scores) - 1e-4)


def _markov_step_fn(transition_probs, calls=None):
  """A toy 'model': next-token probabilities `[step, last token, next token]`.

  `[last, next]` tables apply at every step. Its cache is the step counter, a
  scalar, which beam search shares across rows. Appends to `calls` per step.
  """
  log_table = jnp.log(jnp.asarray(transition_probs, jnp.float32))
  if log_table.ndim == 2:
    log_table = log_table[None]

  def step_fn(tokens, step):
    if calls is not None:
      jax.debug.callback(lambda: calls.append(1))
    table = log_table[jnp.minimum(step, log_table.shape[0] - 1)]
    return table[tokens], step + 1
  return step_fn


def test_finished_beams_stay_finished_and_search_stops_early():
  # Tokens: 0 pad/BOS, 1 EOS, 2, 3. From BOS: EOS 0.5, '2' 0.3, '3' 0.2;
  # after '2': EOS 0.5, '2' 0.45; after EOS: uniform.
  probs = np.array([[1e-6, 0.5, 0.3, 0.2],
                    [0.25, 0.25, 0.25, 0.25],
                    [1e-6, 0.5, 0.45, 0.05],
                    [1e-6, 0.4, 0.1, 0.5]])
  calls = []
  result = jax.jit(lambda: decoding.beam_search(
      _markov_step_fn(probs, calls), jnp.array(0), batch_size=1,
      max_decode_length=20, num_beams=2, alpha=0.0))()
  jax.effects_barrier()
  # Step 1: [EOS] (0.5) finishes, ['2'] (0.3) lives. Step 2: [EOS] keeps its
  # slot with its own score (0.5; extending it would score 0.125, below
  # ['2','2'] at 0.135), ['2', EOS] (0.15) takes the other; every slot has
  # ended, so the loop stops after 2 of 20 steps.
  np.testing.assert_array_equal(result.tokens[0, :, :3], [[EOS, 0, 0], [2, EOS, 0]])
  assert np.all(result.tokens[0, :, 3:] == 0)
  np.testing.assert_array_equal(result.lengths[0], [1, 2])
  assert np.all(result.finished)
  np.testing.assert_allclose(result.log_probs[0], np.log([0.5, 0.3 * 0.5]), rtol=1e-5)
  assert len(calls) == 2

  calls.clear()
  greedy = jax.jit(lambda: decoding.greedy_search(
      _markov_step_fn(probs, calls), jnp.array(0), batch_size=1, max_decode_length=20))()
  jax.effects_barrier()
  np.testing.assert_array_equal(greedy.tokens[0, :2], [EOS, 0])
  assert len(calls) == 1


def test_displaced_finished_hypothesis_is_kept():
  # Step 1: ['2'] 0.7, [EOS] 0.2. Step 2: ['2','2'] and ['2','3'] (0.35 each)
  # push [EOS] out of the 2 slots. Step 3 spreads every path over 3 tokens
  # (0.117 each), so the best hypothesis is the displaced [EOS].
  eps = 1e-6
  probs = np.zeros((3, 4, 4)) + 0.25
  probs[0, 0] = [eps, 0.2, 0.7, 0.1]
  probs[1, 2] = [eps, eps, 0.5, 0.5]
  probs[2, 2:] = [eps, 1 / 3, 1 / 3, 1 / 3]
  result = decoding.beam_search(_markov_step_fn(probs), jnp.array(0), batch_size=1,
                                max_decode_length=3, num_beams=2, alpha=0.0)
  np.testing.assert_array_equal(result.tokens[0, 0], [EOS, 0, 0])
  assert result.finished[0, 0] and result.lengths[0, 0] == 1
  np.testing.assert_allclose(result.log_probs[0], np.log([0.2, 0.35 / 3]), rtol=1e-4)


def test_brevity_penalty_changes_the_winner():
  # From BOS: EOS 0.5, '3' 0.5; after '3': '3' 0.9, EOS 0.1. With length
  # limit 3 the candidates are [EOS] (p 0.5, length 1) and the truncated
  # ['3','3','3'] (p 0.405, length 3): plain log-likelihood prefers the short
  # one, a strong brevity penalty (alpha 3: log 0.405 / (8/6)^3 = -0.38 >
  # log 0.5 = -0.69) the long one.
  probs = np.array([[1e-6, 0.5, 1e-6, 0.5],
                    [0.25, 0.25, 0.25, 0.25],
                    [0.25, 0.25, 0.25, 0.25],
                    [1e-6, 0.1, 1e-6, 0.9]])

  def run(alpha):
    return decoding.beam_search(_markov_step_fn(probs), jnp.array(0), batch_size=1,
                                max_decode_length=3, num_beams=2, alpha=alpha)
  plain, penalized = run(0.0), run(3.0)
  np.testing.assert_array_equal(plain.tokens[0, 0], [EOS, 0, 0])
  np.testing.assert_array_equal(penalized.tokens[0, 0], [3, 3, 3])
  assert not penalized.finished[0, 0]
  np.testing.assert_allclose(
      penalized.scores[0, 0], np.log(0.5 * 0.81) / ((5 + 3) / 6) ** 3.0, rtol=1e-5)


def test_predict_batch_defaults_and_errors():
  model, params = _tiny_model()
  targets = np.ones((len(INPUTS), MAX_LEN), np.int32)
  tokens = model.predict_batch(params, {'encoder_input_tokens': INPUTS,
                                        'decoder_target_tokens': targets})
  assert tokens.shape == (len(INPUTS), MAX_LEN)
  with pytest.raises(ValueError, match='max_decode_length'):
    model.predict_batch(params, {'encoder_input_tokens': INPUTS})
  with pytest.raises(ValueError, match='decoder='):
    model.predict_batch(params, {'encoder_input_tokens': INPUTS}, decoder='sample',
                        max_decode_length=4)
  with pytest.raises(ValueError, match='Label 1'):
    model.rank_classify(params, {'encoder_input_tokens': INPUTS}, [[5], []])


def test_rank_classify_picks_most_likely_label():
  model, params = _tiny_model(prompt_length=3)
  batch = {'encoder_input_tokens': INPUTS, 'prompt_index': np.zeros(len(INPUTS), np.int32)}
  labels = [[5, 6], [7], [8, 9, 10], [11, EOS]]   # the last already ends with EOS
  best, scores = model.rank_classify(params, batch, labels, return_scores=True)
  # The same scores from score_batch, one label at a time (targets padded to
  # one width, so score_batch compiles once).
  score_batch = jax.jit(model.score_batch)
  expected = []
  for ids in labels:
    target = list(ids) if ids[-1] == EOS else list(ids) + [EOS]
    targets = np.tile(np.array(target + [0] * (4 - len(target)), np.int32), (len(INPUTS), 1))
    label_batch = {**batch, 'decoder_target_tokens': targets,
                   'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0)))}
    expected.append(score_batch(params, label_batch))
  expected = np.stack(expected, axis=1)
  np.testing.assert_allclose(scores, expected, atol=1e-5)
  np.testing.assert_array_equal(best, np.argmax(expected, axis=1))
  assert len(set(np.asarray(best).tolist())) > 1   # not the same answer for every input
  # Length normalization divides by the target length (EOS included).
  _, normalized = model.rank_classify(params, batch, labels, length_normalize=True,
                                      return_scores=True)
  np.testing.assert_allclose(normalized, expected / np.array([3, 2, 4, 2]), atol=1e-5)
