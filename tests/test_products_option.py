"""The model's products: XLA's by default in every model gin; the CPU kernels only when chosen.

Runs without a compiler or the `cpu` extra: nothing here builds the kernels.
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL_GINS = sorted(str(p.relative_to(REPO / 'gin')) for p in (REPO / 'gin' / 'models').glob('[!_]*.gin')) + [
    'miniature/model.gin']

_PROBE = r'''
import json, sys
import gin
from promot_t5x import gin_utils
from promot_t5x.models import t5
out = {}
for name in sys.argv[1:]:
  files = name.split('+')
  gin_utils.parse(files, ["SPM_PATH = None"], finalize=False)
  cfg = gin.get_configurable(t5.T5Config)()
  out[name] = [getattr(cfg.dot_general, '__module__', None), getattr(cfg.attention_fn, '__module__', None)]
  gin.clear_config()
print(json.dumps({'configs': out, 'contrib_imported': any(m.startswith('promot_t5x.contrib') for m in sys.modules)}))
'''

_LOWER = r'''
import sys
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
import gin
from promot_t5x import gin_utils
from promot_t5x.models import t5
gin_utils.parse(['miniature/model.gin'], [], finalize=False)
cfg = gin.get_configurable(t5.T5Config)().replace(num_encoder_layers=1, num_decoder_layers=1)
module = t5.Transformer(cfg)
params = nn.unbox(t5.init_params(module, jax.random.PRNGKey(0)))
tokens = np.ones((2, 6), np.int32)
loss = lambda p: jnp.mean(module.apply({'params': p}, tokens, tokens, tokens))
text = jax.jit(jax.grad(loss)).lower(params).as_text()
print('CUSTOM_CALLS', text.count('promot_'), 'DOTS', text.count('dot_general'))
print('CONTRIB', any(m.startswith('promot_t5x.contrib') for m in sys.modules))
'''


def _run(code, *args, **env):
  out = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=600,
                       cwd=REPO, env={**os.environ, **env})
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_every_model_gin_runs_xlas_products_and_imports_no_kernels():
  import json

  result = json.loads(_run(_PROBE, *MODEL_GINS).strip().splitlines()[-1])
  assert set(result['configs']) == set(MODEL_GINS) and len(MODEL_GINS) > 10
  assert all(v == [None, None] for v in result['configs'].values()), result['configs']
  assert result['contrib_imported'] is False


def test_the_option_gin_binds_the_kernels_functions():
  import json

  name = 'miniature/model.gin+options/cpu_kernels.gin'
  result = json.loads(_run(_PROBE, name).strip().splitlines()[-1])
  assert result['configs'][name] == ['promot_t5x.contrib.cpu_kernels'] * 2


@pytest.mark.slow
def test_the_default_model_compiles_nothing_and_calls_no_kernel(tmp_path):
  out = _run(_LOWER, PROMOT_T5X_CACHE=str(tmp_path))
  assert 'CUSTOM_CALLS 0 ' in out and 'CONTRIB False' in out, out
  assert int(out.split('DOTS ')[1].split()[0]) > 0
  assert not list(tmp_path.rglob('*'))  # no kernel build, no BLAS copy


def test_the_miniature_runs_xla_unless_asked_for_the_kernels():
  from promot_t5x import miniature

  default = miniature.experiment(miniature.Settings(), 'rte')
  assert default.model_gin_files == ('miniature/model.gin',)
  chosen = miniature.experiment(miniature.Settings(cpu_kernels=True), 'rte')
  assert chosen.model_gin_files == ('miniature/model.gin', 'options/cpu_kernels.gin')
