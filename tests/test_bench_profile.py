"""bench/profile_step.py: one profiled train step, its ops named by what they compute."""

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


CONFIG = json.dumps(dict(vocab_size=512, emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128,
                         num_encoder_layers=1, num_decoder_layers=1, batch_size=4,
                         input_length=32, target_length=8, prompt_length=4, decode_batch=3,
                         decode_length=5))


def _profile(*flags):
  # --top above the op count: every op is listed, so what is checked below does
  # not depend on which tiny ops happened to be slowest in this run.
  return subprocess.run([sys.executable, str(ROOT / 'bench' / 'profile_step.py'), *flags,
                         '--top=100000', '--steps=1', f'--config={CONFIG}'],
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_profile_step_names_the_costliest_ops():
  proc = _profile('--stage=promot_stage2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  header = re.match(r'promot_stage2: (\d+) ms of op time per step \(summed over threads\), (\d+) ops',
                    lines[0])
  assert header and int(header.group(2)) > 10, lines[0]
  rows = [l for l in lines[1:] if re.match(r'\s*[\d.]+ ms  ', l)]
  assert rows
  times = [float(l.split()[0]) for l in rows]
  assert times == sorted(times, reverse=True)
  # The ops were found in the optimized HLO: the model's matmuls show up with their shapes,
  # e.g. the logits [batch * targets, vocab] = [32, 512]: an XLA dot, or where oneMKL runs
  # the dense layers (--products=cpu_kernels, the bench's default), its custom call and operands.
  from promot_t5x.contrib.cpu_kernels import kernels as cpu_kernels
  logits = (r'-> f32\[32,512\]: promot_dense_gemm f32\[32,64\] x f32\[64,512\]$'
            if cpu_kernels.dense_available() else r'-> f32\[[\d,]+\]: dot f32\[32,512\]')
  assert any(re.search(logits, l) for l in rows), '\n'.join(rows)
  # Attention, fused (--products=cpu_kernels): the encoder's call on q, k, v
  # [batch, 36, heads, head_dim] and its bias, returning the context and the probabilities
  # [batch, heads, 36, 36]; and its gradient.
  assert any(re.search(r'-> \(f32\[4,36,2,32\], f32\[4,2,36,36\]\): promot_attention_fwd '
                       r'f32\[4,36,2,32\] x f32\[4,36,2,32\] x f32\[4,36,2,32\] x ', l)
             for l in rows), '\n'.join(rows)
  assert any(re.search(r': promot_attention_bwd f32\[4,36,2,32\]', l) for l in rows)
  # The encoder's position-bias gradient (its 2 heads x 36 x 36 scores summed
  # over the batch) is a ones @ g product, not a leading-axis reduction.
  assert any(re.search(r'dot f32\[1,2592\]', l) for l in rows), '\n'.join(rows)
  assert not any(re.search(r'-> f32\[2,36,36\]: reduce', l) for l in rows)
  # Every op is found, unfused dots (named dot.N) included: none is listed bare.
  assert len(rows) == int(header.group(2))
  bare = [l for l in rows if not re.search(r'-> (\([^)]*\)|\S+): \S', l)]  # shape or tuple
  assert not bare, '\n'.join(bare)
  assert lines[-1].startswith('by kind:')


def test_profile_decode_reads_the_decoding_program():
  proc = _profile('--decode=greedy')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert re.match(r'greedy: \d+ ms of op time per step \(summed over threads\), \d+ ops',
                  lines[0]), lines[0]
  rows = [l for l in lines[1:] if re.match(r'\s*[\d.]+ ms  ', l)]
  # Each step's logits: [decode_batch, vocab] = [3, 512], read from the
  # transposed kernel [vocab, embed] (contracting dim 1 of both operands).
  assert any(re.search(r'dot f32\[3,512\] contracting \{1\} x \{1\}', l) for l in rows), \
      '\n'.join(rows)
  assert lines[-1].startswith('by kind:')


def test_ops_described_whether_fused_unfused_or_multi_output():
  sys.path.insert(0, str(ROOT / 'bench'))
  import profile_step

  hlo = '\n'.join([
      '',
      '%fused_computation.1 (param_0: f32[4]) -> (f32[4], f32[]) {',
      '  %param_0 = f32[4]{0} parameter(0)',
      '  %negate.1 = f32[4]{0} negate(%param_0)',
      '  ROOT %tuple.1 = (f32[4]{0}, f32[]) tuple(%negate.1, %param_0)',
      '}',
      '',
      'ENTRY %main (a: f32[4], x: f32[2,5], y: f32[5,3]) -> f32[4] {',
      '  %fusion.3 = (f32[4]{0}, f32[]) fusion(%a), kind=kLoop, calls=%fused_computation.1',
      '  %copy.2 = f32[4]{0} copy(%a)',
      '  %dot.1 = f32[2,3]{1,0} dot(%x, %y), lhs_contracting_dims={1}, rhs_contracting_dims={0}',
      '}'])
  got = profile_step._op_descriptions(hlo)
  assert got['fusion.3'] == '-> (f32[4], f32[]): negate x1, tuple x1'
  assert got['copy.2'] == '-> f32[4]: copy'
  assert got['dot.1'] == '-> f32[2,3]: dot f32[2,3] contracting {1} x {0}'
