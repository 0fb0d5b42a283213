"""Adafactor (against optax and a numpy reference), schedules, per-set optimizers, sharded state."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from promot_t5x import optimizers, param_sets, partitioning
from promot_t5x.models import prompts, t5


def _random_params(seed: int = 0) -> dict:
  """A wide matrix, a tall matrix, a vector and a 3-D array (batch axis + matrix)."""
  rng = np.random.default_rng(seed)
  shapes = {'wide': (6, 10), 'tall': (12, 5), 'vector': (10,), 'stack': (3, 8, 6)}
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def _random_grads(params: dict, rng: np.random.Generator, scale: float = 1.0) -> dict:
  return jax.tree.map(
      lambda p: jnp.asarray(scale * rng.normal(size=p.shape), jnp.float32), params)


# -----------------------------------------------------------------------------
# Adafactor's update rule.
# -----------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs', [
    dict(min_dim_size_to_factor=4),
    # Full second moments everywhere, absolute step size.
    dict(min_dim_size_to_factor=4, factored=False, multiply_by_parameter_scale=False),
    dict(min_dim_size_to_factor=4, beta1=0.9, weight_decay_rate=1e-3),
], ids=['factored', 'unfactored_no_param_scale', 'momentum_weight_decay'])
def test_adafactor_matches_optax_adafactor(kwargs):
  """Same paper, same settings: parameters and statistics agree over several steps."""
  ours = optimizers.adafactor(0.05, decay_rate=0.8, clipping_threshold=1.0, **kwargs)
  reference = optax.adafactor(
      0.05, decay_rate=0.8, clipping_threshold=1.0, factored=kwargs.get('factored', True),
      min_dim_size_to_factor=kwargs['min_dim_size_to_factor'],
      multiply_by_parameter_scale=kwargs.get('multiply_by_parameter_scale', True),
      momentum=kwargs.get('beta1'), weight_decay_rate=kwargs.get('weight_decay_rate'))
  params = ours_params = ref_params = _random_params()
  ours_state, ref_state = ours.init(params), reference.init(params)
  rng = np.random.default_rng(1)
  for step in range(5):
    grads = _random_grads(params, rng, scale=10.0 ** (step - 2))  # exercises clipping
    u, ours_state = ours.update(grads, ours_state, ours_params)
    ours_params = optax.apply_updates(ours_params, u)
    u, ref_state = reference.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, u)
  for name in params:
    np.testing.assert_allclose(ours_params[name], ref_params[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
    assert not np.allclose(ours_params[name], params[name])  # the optimizer moved it
  assert int(ours_state.count) == 5

  # Second moments: optax keeps separate v_row / v_col / v trees (with (1,)
  # dummies) and names factors by size; match ours by shape.
  factored_ref = ref_state[0]
  for name, slots in ours_state.param_states.items():
    ref_arrays = [factored_ref.v_row[name], factored_ref.v_col[name], factored_ref.v[name]]
    for key in ('v_row', 'v_col', 'v'):
      if key in slots:
        match = [r for r in ref_arrays if r.shape == slots[key].shape]
        assert match, (name, key)
        np.testing.assert_allclose(slots[key], match[0], rtol=1e-5, err_msg=f'{name}/{key}')


def _numpy_adafactor_matrix(param, grads, lr, decay_rate=0.8, eps1=1e-30, eps2=1e-3,
                            clipping_threshold=1.0):
  """The paper's factored update for one matrix, in float64, as an outer product."""
  param = param.astype(np.float64)
  v_row = np.zeros(param.shape[0])
  v_col = np.zeros(param.shape[1])
  for t, g in enumerate(grads):
    g = g.astype(np.float64)
    beta2 = 1.0 - (t + 1.0) ** -decay_rate
    v_row = beta2 * v_row + (1 - beta2) * (g ** 2 + eps1).mean(axis=1)
    v_col = beta2 * v_col + (1 - beta2) * (g ** 2 + eps1).mean(axis=0)
    v_hat = np.outer(v_row, v_col) / v_row.mean()
    y = g / np.sqrt(v_hat)
    y = y / max(1.0, np.sqrt(np.mean(y ** 2)) / clipping_threshold)
    param = param - lr * max(np.sqrt(np.mean(param ** 2)), eps2) * y
  return param, v_row, v_col


def test_adafactor_matches_numpy_reference_for_one_factored_matrix():
  rng = np.random.default_rng(3)
  param = rng.normal(size=(5, 7)).astype(np.float32)
  grads = [rng.normal(size=(5, 7)).astype(np.float32) * s for s in (1.0, 3.0, 0.1)]
  opt = optimizers.adafactor(0.1, min_dim_size_to_factor=2)
  p, state = jnp.asarray(param), opt.init(jnp.asarray(param))
  for g in grads:
    u, state = opt.update(jnp.asarray(g), state, p)
    p = p + u
  want_p, want_row, want_col = _numpy_adafactor_matrix(param, grads, lr=0.1)
  np.testing.assert_allclose(p, want_p, rtol=1e-5)
  np.testing.assert_allclose(state.param_states['v_row'], want_row, rtol=1e-5)
  np.testing.assert_allclose(state.param_states['v_col'], want_col, rtol=1e-5)


def test_adafactor_state_shapes():
  params = _random_params()
  state = optimizers.adafactor(0.1, min_dim_size_to_factor=4).init(params)
  shapes = jax.tree.map(lambda x: x.shape, state.param_states)
  assert shapes == {
      'wide': {'v_row': (6,), 'v_col': (10,)},       # [rows], [cols]
      'tall': {'v_row': (12,), 'v_col': (5,)},       # by position, not by size
      'vector': {'v': (10,)},                         # vectors keep a full v
      'stack': {'v_row': (3, 8), 'v_col': (3, 6)},   # leading axis kept as a batch axis
  }
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  # Momentum adds a full `m`; dims below min_dim_size_to_factor are not factored.
  state = optimizers.adafactor(0.1, beta1=0.9, min_dim_size_to_factor=7).init(params)
  shapes = jax.tree.map(lambda x: x.shape, state.param_states)
  assert shapes['wide'] == {'v': (6, 10), 'm': (6, 10)}
  assert shapes['stack'] == {'v': (3, 8, 6), 'm': (3, 8, 6)}  # its two largest: 8 and 6
  assert shapes['tall'] == {'v': (12, 5), 'm': (12, 5)}


def test_adafactor_learning_rate_schedule_is_read_at_the_step_before_the_update():
  # A constant gradient makes v = g^2, so y = sign(g) and |update| = lr(t)
  # exactly (no parameter scale; rms(y) = 1 is not clipped).
  schedule = optimizers.learning_rate_schedule('constant * linear_warmup', base=0.1,
                                               warmup_steps=2)
  opt = optimizers.adafactor(schedule, multiply_by_parameter_scale=False)
  params = {'x': jnp.zeros((4,))}
  grads = {'x': jnp.asarray([1.0, -2.0, 3.0, -0.5])}
  state = opt.init(params)
  sizes = []
  for _ in range(4):
    u, state = opt.update(grads, state, params)
    np.testing.assert_array_equal(np.sign(u['x']), -np.sign(grads['x']))
    sizes.append(float(jnp.max(jnp.abs(u['x']))))
  np.testing.assert_allclose(sizes, [1e-8, 0.05, 0.1, 0.1], rtol=1e-5)


def test_clip_by_global_norm():
  grads = {'a': jnp.asarray([6.0, 0.0]), 'b': {'c': jnp.asarray([[8.0]])}}
  clipped = optimizers.clip_by_global_norm(grads, 1.0)
  np.testing.assert_allclose(optimizers.global_norm(clipped), 1.0, rtol=1e-6)
  np.testing.assert_allclose(clipped['a'], [0.6, 0.0], rtol=1e-6)
  unchanged = optimizers.clip_by_global_norm(grads, 100.0)
  np.testing.assert_allclose(unchanged['b']['c'], [[8.0]])
  zeros = optimizers.clip_by_global_norm({'a': jnp.zeros(3)}, 1.0)
  np.testing.assert_array_equal(zeros['a'], np.zeros(3))  # no NaN from 0/0


def test_adafactor_rejects_bad_settings():
  with pytest.raises(ValueError, match='beta1'):
    optimizers.adafactor(0.1, beta1=1.0)
  with pytest.raises(TypeError, match='learning_rate'):
    optimizers.adafactor('0.1')
  with pytest.raises(ValueError, match='needs `params`'):
    opt = optimizers.adafactor(0.1)
    opt.update({'x': jnp.ones(2)}, opt.init({'x': jnp.ones(2)}))


# -----------------------------------------------------------------------------
# Learning-rate schedules.
# -----------------------------------------------------------------------------
@pytest.mark.parametrize('kind,base,warmup,values', [
    ('constant', 0.001, 0, {0: 0.001, 1000: 0.001}),
    # T5X's pre-training default: 0.01 for 10k steps, then 1/sqrt(step).
    ('constant * rsqrt_decay', 1.0, 10000, {0: 0.01, 5000: 0.01, 40000: 0.005}),
    # Linear warmup starts at the 1e-8 floor, as in T5X.
    ('constant * linear_warmup', 0.2, 100, {0: 1e-8, 50: 0.1, 100: 0.2, 500: 0.2}),
    ('constant * linear_warmup * rsqrt_decay', 1.0, 100, {50: 0.05, 100: 0.1, 400: 0.05}),
    ('constant * rsqrt_normalized_decay', 2.0, 100, {10: 2.0, 400: 1.0}),
])
def test_learning_rate_schedule_values(kind, base, warmup, values):
  schedule = optimizers.learning_rate_schedule(kind, base, warmup)
  jitted = jax.jit(schedule)
  for step, want in values.items():
    np.testing.assert_allclose(schedule(step), want, rtol=1e-6)
    np.testing.assert_allclose(jitted(jnp.int32(step)), want, rtol=1e-6)


def test_learning_rate_schedule_offset_and_errors():
  schedule = optimizers.learning_rate_schedule('constant * linear_warmup', 0.4, 10,
                                               step_offset=100)
  np.testing.assert_allclose(schedule(105), 0.2, rtol=1e-6)
  np.testing.assert_allclose(schedule(50), 1e-8, rtol=1e-6)
  with pytest.raises(ValueError, match='"constant"'):
    optimizers.learning_rate_schedule('rsqrt_decay', 1.0, 1000)
  with pytest.raises(ValueError, match='cosine'):
    optimizers.learning_rate_schedule('constant * cosine', 1.0)


# -----------------------------------------------------------------------------
# One optimizer per parameter set.
# -----------------------------------------------------------------------------
def _prompt_and_model_params():
  rng = np.random.default_rng(5)
  shapes = {'prompt': {'rte': (4, 8), 'wmt': (4, 8)},
            'encoder': {'layers_0': {'mlp': {'wi_0': {'kernel': (8, 16)}}}},
            'token_embedder': {'embedding': (32, 8)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def test_per_set_optimizers_route_each_leaf_to_its_set():
  params = _prompt_and_model_params()
  grads = _random_grads(params, np.random.default_rng(6))
  opt = optimizers.multi_set_optimizer({'prompt': optax.sgd(0.2), 'model': optax.sgd(0.001)})
  updates, _ = opt.update(grads, opt.init(params), params)
  for path, g in param_sets.flatten(grads).items():
    lr = 0.2 if path.startswith('prompt/') else 0.001
    np.testing.assert_allclose(param_sets.flatten(updates)[path], -lr * g, rtol=1e-6,
                               err_msg=path)

  # The most specific set wins: prompt/rte has its own rate, other prompts share 'prompt'.
  opt = optimizers.multi_set_optimizer(
      {'prompt/rte': optax.sgd(1.0), 'prompt': optax.sgd(0.2), 'model': optax.sgd(0.001)})
  updates, state = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(updates['prompt']['rte'], -grads['prompt']['rte'], rtol=1e-6)
  np.testing.assert_allclose(updates['prompt']['wmt'], -0.2 * grads['prompt']['wmt'], rtol=1e-6)
  assert sorted(state) == ['model', 'prompt', 'prompt/rte']

  # Explicit labels: a flat {path: set} dict.
  flat_labels = {p: ('fast' if 'wi_0' in p else 'slow') for p in param_sets.flatten(params)}
  opt = optimizers.multi_set_optimizer({'fast': optax.sgd(1.0), 'slow': optax.sgd(0.0)},
                                       flat_labels)
  updates, _ = opt.update(grads, opt.init(params), params)
  wi = grads['encoder']['layers_0']['mlp']['wi_0']['kernel']
  np.testing.assert_allclose(updates['encoder']['layers_0']['mlp']['wi_0']['kernel'], -wi)
  np.testing.assert_array_equal(updates['token_embedder']['embedding'], 0.0)


def test_per_set_adafactor_learning_rates_prompt_02_model_0001():
  """The paper's joint-tuning numbers. With a constant gradient and no parameter
  scale, Adafactor's step is exactly lr per element, so the ratio is 200."""
  params = _prompt_and_model_params()
  grads = _random_grads(params, np.random.default_rng(7))
  opt = optimizers.multi_set_optimizer(
      {'prompt': 0.2, 'model': 0.001},
      make_optimizer=functools.partial(optimizers.adafactor, multiply_by_parameter_scale=False))
  state = opt.init(params)
  assert isinstance(state['prompt'], optimizers.AdafactorState)
  for _ in range(3):
    updates, state = opt.update(grads, state, params)
    flat = param_sets.flatten(updates)
    for path, u in flat.items():
      lr = 0.2 if path.startswith('prompt/') else 0.001
      np.testing.assert_allclose(np.abs(u), lr, rtol=1e-5, err_msg=path)
  assert int(state['prompt'].count) == 3 and int(state['model'].count) == 3

  # Per-set keyword arguments (prompt-tuning's recipe: no parameter scale for the prompt).
  opt = optimizers.multi_set_optimizer(
      {'prompt': {'learning_rate': 0.2, 'multiply_by_parameter_scale': False}, 'model': 0.001})
  updates, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(np.abs(updates['prompt']['rte']), 0.2, rtol=1e-5)
  model_scale = float(jnp.sqrt(jnp.mean(params['token_embedder']['embedding'] ** 2)))
  np.testing.assert_allclose(np.abs(updates['token_embedder']['embedding']),
                             0.001 * model_scale, rtol=1e-5)


def test_global_norm_clip_spans_all_sets():
  params = {'prompt': {'p': jnp.zeros(2)}, 'm': jnp.zeros(1)}
  grads = {'prompt': {'p': jnp.asarray([6.0, 0.0])}, 'm': jnp.asarray([8.0])}  # norm 10
  opt = optimizers.multi_set_optimizer({'prompt': optax.sgd(1.0), 'model': optax.sgd(1.0)},
                                       global_norm_clip=1.0)
  updates, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(updates['prompt']['p'], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(updates['m'], [-0.8], rtol=1e-6)


@pytest.fixture(scope='module')
def tiny_t5_params():
  """Boxed abstract parameters (ShapeDtypeStructs) of a 1+1-layer T5 with a 4-token prompt."""
  return t5.abstract_params(t5.Transformer(t5.T5Config(
      vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32, num_encoder_layers=1,
      num_decoder_layers=1, prompt=prompts.PromptConfig(length=4, names=('rte',)))))


def test_prompt_tuning_state_exists_only_for_the_prompt(tiny_t5_params):
  boxed = tiny_t5_params
  trainable, frozen = param_sets.split(boxed, param_sets.PROMPT_TUNING)
  opt = optimizers.multi_set_optimizer({'prompt': 0.2, 'model': 0.001})
  state = jax.eval_shape(opt.init, nn.unbox(trainable))
  assert list(state) == ['prompt']  # no entry, no arrays for the frozen model
  state_sizes = sum(x.size for x in jax.tree.leaves(state))
  assert state_sizes == 4 * 16 + 1  # full v of the [4, 16] prompt + the step count
  assert t5.count_params(frozen) > 100 * state_sizes

  with pytest.raises(ValueError, match='no parameter set'):
    optimizers.multi_set_optimizer({'prompt': 0.2}).init(nn.unbox(boxed))
  with pytest.raises(ValueError, match='Unknown parameter set'):
    optimizers.multi_set_optimizer({'encoder': 0.2})


# -----------------------------------------------------------------------------
# Shardings of the state.
# -----------------------------------------------------------------------------
def test_state_partition_specs_follow_the_parameters():
  specs = {'w': PartitionSpec('data', 'model'), 'b': PartitionSpec('model'),
           's': PartitionSpec(None, 'model')}
  shapes = {'w': jax.ShapeDtypeStruct((8, 16), jnp.float32),
            'b': jax.ShapeDtypeStruct((16,), jnp.float32),
            's': jax.ShapeDtypeStruct((2, 8, 16), jnp.float32)}
  opt = optimizers.adafactor(0.1, beta1=0.9, min_dim_size_to_factor=4)
  got = optimizers.state_partition_specs(opt, specs, shapes)
  assert got.count == PartitionSpec()
  assert got.param_states['w'] == {'v_row': PartitionSpec('data'),
                                   'v_col': PartitionSpec('model'),
                                   'm': PartitionSpec('data', 'model')}
  assert got.param_states['b'] == {'v': PartitionSpec('model'), 'm': PartitionSpec('model')}
  # [2, 8, 16] factored over its last two axes: v_row [2, 8], v_col [2, 16].
  assert got.param_states['s']['v_row'] == PartitionSpec(None, 'model')
  assert got.param_states['s']['v_col'] == PartitionSpec(None, None)
  # The spec tree has exactly the state's structure.
  state = jax.eval_shape(opt.init, shapes)
  assert (jax.tree.structure(got, is_leaf=lambda x: isinstance(x, PartitionSpec))
          == jax.tree.structure(state))

  # Other optax optimizers: parameter-shaped parts take the parameters' specs.
  adam_specs = optimizers.state_partition_specs(optax.adam(1e-3), specs, shapes)
  assert adam_specs[0].mu == specs and adam_specs[0].nu == specs
  assert adam_specs[0].count == PartitionSpec()


def test_sharded_update_equals_unsharded_update():
  """Params over ('data', 'model') on 8 fake devices, state placed by the derived shardings."""
  mesh = partitioning.make_mesh(data=2, model=4)
  # FSDP-style rules so that both mesh axes split parameters.
  partitioner = partitioning.Partitioner(
      mesh, rules=(('embed', 'data'), ('mlp', 'model'), ('vocab', 'model')))
  names = {'wi': ('embed', 'mlp'), 'wo': ('mlp', 'embed'), 'emb': ('vocab', 'embed'),
           'scale': ('embed',), 'prompt': {'rte': ('prompt', 'embed')}}
  shapes = {'wi': (16, 32), 'wo': (32, 16), 'emb': (64, 16), 'scale': (16,),
            'prompt': {'rte': (4, 16)}}
  rng = np.random.default_rng(9)
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))
  boxed = jax.tree.map(lambda p, n: nn.LogicallyPartitioned(p, n), params, names,
                       is_leaf=lambda x: isinstance(x, tuple))
  opt = optimizers.multi_set_optimizer(
      {'prompt': optax.sgd(0.2, momentum=0.9),
       'model': optimizers.adafactor(0.01, beta1=0.9, min_dim_size_to_factor=4)})

  param_shardings = partitioner.param_shardings(boxed)
  state_shardings = optimizers.state_shardings(opt, boxed, partitioner)
  assert state_shardings['model'].param_states['wi']['v_row'].spec == PartitionSpec('data')
  assert state_shardings['model'].param_states['wi']['v_col'].spec == PartitionSpec('model')
  assert state_shardings['model'].param_states['emb']['v_row'].spec == PartitionSpec('model')
  assert state_shardings['prompt'][0].trace['prompt']['rte'].spec == PartitionSpec(None, 'data')

  def train_step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  sharded_step = jax.jit(train_step, in_shardings=(param_shardings, state_shardings,
                                                   param_shardings),
                         out_shardings=(param_shardings, state_shardings))
  plain_step = jax.jit(train_step)
  sharded_params = jax.device_put(params, param_shardings)
  state = jax.jit(opt.init, out_shardings=state_shardings)(sharded_params)
  ref_params, ref_state = params, opt.init(params)
  grad_rng = np.random.default_rng(10)
  for _ in range(3):
    grads = jax.tree.map(lambda p: grad_rng.normal(size=p.shape).astype(np.float32), params)
    sharded_params, state = sharded_step(sharded_params, state,
                                         jax.device_put(grads, param_shardings))
    ref_params, ref_state = plain_step(ref_params, ref_state, grads)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               sharded_params, ref_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               state, ref_state)
  # The state stays where the shardings put it (the factored row over 'data').
  v_row = state['model'].param_states['wi']['v_row']
  assert isinstance(v_row.sharding, NamedSharding)
  assert v_row.sharding.spec == PartitionSpec('data')
  assert len(v_row.addressable_shards) == 8
  assert v_row.addressable_shards[0].data.shape == (8,)


def test_state_shardings_of_a_t5_model_on_the_standard_rules(tiny_t5_params):
  boxed = tiny_t5_params
  partitioner = partitioning.Partitioner(partitioning.make_mesh(data=2, model=4))
  opt = optimizers.multi_set_optimizer(
      {'prompt': 0.2, 'model': 0.001},
      make_optimizer=functools.partial(optimizers.adafactor, min_dim_size_to_factor=8))
  shardings = optimizers.state_shardings(opt, boxed, partitioner)
  model = shardings['model'].param_states
  # [vocab, embed] embedding: rows split over 'model' like the vocabulary.
  assert model['token_embedder']['embedding']['v_row'].spec == PartitionSpec('model')
  assert model['token_embedder']['embedding']['v_col'].spec == PartitionSpec(None)
  wi = model['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi['v_row'].spec == PartitionSpec(None) and wi['v_col'].spec == PartitionSpec('model')
  assert shardings['prompt'].param_states['prompt']['rte']['v'].spec == PartitionSpec(None, None)
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), nn.unbox(boxed))
  state = jax.jit(opt.init, out_shardings=shardings)(params)
  assert (state['model'].param_states['token_embedder']['embedding']['v_row'].sharding.spec
          == PartitionSpec('model'))

  with pytest.raises(TypeError, match='boxed'):
    optimizers.state_shardings(opt, nn.unbox(boxed), partitioner)


# -----------------------------------------------------------------------------
# Configuration.
# -----------------------------------------------------------------------------
def test_joint_tuning_optimizer_from_gin():
  """How a run gin sets the paper's per-set learning rates (prompt warmed up to 0.2)."""
  import gin
  gin.clear_config()
  try:
    gin.parse_config("""
        from __gin__ import dynamic_registration
        from promot_t5x import optimizers

        optimizers.multi_set_optimizer:
          per_set = {'prompt': @prompt/optimizers.learning_rate_schedule(), 'model': 0.001}
          make_optimizer = @optimizers.adafactor
        optimizers.adafactor.min_dim_size_to_factor = 8
        prompt/optimizers.learning_rate_schedule:
          kind = 'constant * linear_warmup'
          base = 0.2
          warmup_steps = 10
    """)
    opt = gin.get_configurable(optimizers.multi_set_optimizer)()
  finally:
    gin.clear_config()
  assert opt.per_set['model'].learning_rate == 0.001
  assert opt.per_set['model'].min_dim_size_to_factor == 8
  np.testing.assert_allclose(opt.per_set['prompt'].learning_rate(5), 0.1, rtol=1e-6)

