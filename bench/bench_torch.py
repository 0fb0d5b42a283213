r"""The peer: Hugging Face transformers + PEFT on torch (CPU), doing the same work.

  python bench/bench_torch.py train --stage=prompt_tuning --weights=DIR [--config=JSON]
  python bench/bench_torch.py decode --decoder=beam --weights=DIR [--config=JSON]
  python bench/bench_torch.py peak

The model is `T5ForConditionalGeneration` built from the same `T5Config`
values (gated GELU, untied logits) and loaded with *our* initial parameters
(`bench_jax.py export` writes them with `promot_t5x.checkpoints.hf`), so both
sides compute the same function. This process does not import JAX. The
optimizer is transformers' Adafactor with T5X-like settings
(the same family as ours: factored second moments, update clipping 1.0,
decay -0.8, no momentum; relative step off, constant learning rate):

  stage 1     PEFT prompt tuning (`PromptTuningConfig`, prompt prepended to the
              encoder input only, base model frozen), lr 0.2, no parameter scaling;
  stage 2     the same PEFT model with the prompt frozen and the base model
              trainable, lr 1e-3 with parameter scaling;
  fine-tuning the plain model, lr 1e-3 with parameter scaling.

Decoding is `generate(num_beams=1 or 4, use_cache=True)` with
min_new_tokens = max_new_tokens, so it produces as many tokens as ours.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (bench/ is not a package)


def _torch():
  import torch

  torch.set_num_threads(common.usable_cores())
  return torch


def build_model(weights_dir: str):
  """HF T5 with the same architecture and our initial parameters (bench_jax.py export)."""
  import json

  import numpy as np
  import transformers

  torch = _torch()
  with open(os.path.join(weights_dir, 'hf_config.json')) as f:
    config = transformers.T5Config(**json.load(f))
  model = transformers.T5ForConditionalGeneration(config)
  with np.load(os.path.join(weights_dir, 'hf_tensors.npz')) as arrays:
    tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
  # transformers 5 ties lm_head to `shared` in memory whatever the config says;
  # our model has a separate output layer (T5.1.1), so give lm_head its own.
  model.lm_head.weight = torch.nn.Parameter(tensors['lm_head.weight'].clone())
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  untied = [k for k in missing if not k.endswith('embed_tokens.weight')]
  if untied or unexpected:
    raise RuntimeError(f'weights do not line up: missing {untied}, unexpected {unexpected}')
  return model


def adafactor(params, lr: float, scale_parameter: bool):
  from transformers.optimization import Adafactor

  return Adafactor(params, lr=lr, scale_parameter=scale_parameter, relative_step=False,
                   warmup_init=False, decay_rate=-0.8, clip_threshold=1.0, beta1=None)


def bench_train(cfg: common.BenchConfig, stage: str, weights_dir: str) -> dict:
  import peft

  torch = _torch()
  model = build_model(weights_dir)
  if common.uses_prompt(stage):
    pt = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                 num_virtual_tokens=cfg.prompt_length,
                                 num_transformer_submodules=1, token_dim=cfg.emb_dim,
                                 num_attention_heads=cfg.num_heads,
                                 num_layers=cfg.num_encoder_layers)
    model = peft.get_peft_model(model, pt)
    if stage == 'promot_stage2':  # ProMoT stage 2: the model trains, the prompt is frozen
      for name, p in model.named_parameters():
        p.requires_grad_('prompt_encoder' not in name)
  trainable = [p for p in model.parameters() if p.requires_grad]
  if stage == 'prompt_tuning':
    opt = adafactor(trainable, 0.2, scale_parameter=False)
  else:
    opt = adafactor(trainable, 1e-3, scale_parameter=True)
  model.train()

  b = common.train_batch(cfg)
  inputs = {'input_ids': torch.from_numpy(b['encoder_input_tokens']).long(),
            'attention_mask': torch.ones(b['encoder_input_tokens'].shape, dtype=torch.long),
            'decoder_input_ids': torch.from_numpy(b['decoder_input_tokens']).long(),
            'labels': torch.from_numpy(b['decoder_target_tokens']).long()}

  def step():
    loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)

  usage = {}
  loss, first, times = common.timed_calls(step, cfg.train_steps, cfg.warmup_steps - 1, usage)
  return {'side': 'torch', 'kind': 'train', 'stage': stage,
          'step_seconds': common.median(times), 'step_seconds_all': times,
          'first_step_seconds': first, 'loss': loss,
          'trainable_params': sum(p.numel() for p in trainable),
          'tokens_per_step': common.train_tokens(cfg),
          'model_flops_per_step': common.train_flops(cfg, stage), **usage}


def bench_decode(cfg: common.BenchConfig, decoder: str, weights_dir: str) -> dict:
  torch = _torch()
  model = build_model(weights_dir).eval()
  inputs = torch.from_numpy(common.decode_inputs(cfg)).long()
  beams = cfg.num_beams if decoder == 'beam' else 1

  def run():
    with torch.inference_mode():
      return model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                            max_new_tokens=cfg.decode_length, min_new_tokens=cfg.decode_length,
                            num_beams=beams, do_sample=False, use_cache=True,
                            length_penalty=0.6 if beams > 1 else 1.0)

  out, first, times = common.timed_calls(run, cfg.decode_repeats)
  return {'side': 'torch', 'kind': 'decode', 'decoder': decoder,
          'seconds': common.median(times), 'seconds_all': times,
          'first_call_seconds': first,
          'new_tokens': int(cfg.decode_batch * cfg.decode_length),
          # generate() returns the start token first.
          'tokens_head': out[0, 1:9].tolist()}


def bench_peak(size: int = 4096, repeats: int = 5) -> dict:
  torch = _torch()
  a = torch.randn(size, size)
  b = torch.randn(size, size)
  _, _, times = common.timed_calls(lambda: torch.mm(a, b), repeats)
  best = min(times)
  return {'side': 'torch', 'kind': 'peak', 'size': size, 'seconds': best,
          'flops_per_second': 2 * size ** 3 / best}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('what', choices=('train', 'decode', 'peak'))
  p.add_argument('--stage', choices=common.STAGES, default='finetune')
  p.add_argument('--decoder', choices=('greedy', 'beam'), default='greedy')
  p.add_argument('--config', default=None, help='BenchConfig as JSON')
  p.add_argument('--weights', default=None,
                 help='folder written by `bench_jax.py export` (train, decode)')
  args = p.parse_args(argv)
  if args.what != 'peak' and not args.weights:
    p.error('--weights is required: run `python bench/bench_jax.py export --out=DIR` first.')
  cfg = common.BenchConfig.from_json(args.config) if args.config else common.BenchConfig()
  if args.what == 'train':
    result = bench_train(cfg, args.stage, args.weights)
  elif args.what == 'decode':
    result = bench_decode(cfg, args.decoder, args.weights)
  else:
    result = bench_peak()
  common.emit(result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
