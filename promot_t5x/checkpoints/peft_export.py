"""What a Hugging Face export carries besides the weights: PEFT prompt adapters, tokenizer, generation config.

A soft prompt `[P, E]` is exactly PEFT's prompt tuning for a seq2seq model
with one transformer sub-module (`PromptTuningConfig(task_type=SEQ_2_SEQ_LM,
num_virtual_tokens=P, num_transformer_submodules=1)`): PEFT prepends the P
virtual-token embeddings to the embedded encoder inputs and extends the
attention mask with ones, as our model does. `write_peft_prompt` writes the
adapter folder PEFT saves (`adapter_config.json` + `adapter_model.safetensors`
holding `prompt_embeddings`), so

  base = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  model = peft.PeftModel.from_pretrained(base, f'{hf_dir}/peft/<prompt name>')

is our prompted model. Neither torch nor peft is needed to write it.

`write_tokenizer` writes T5's tokenizer files (`spiece.model`, the raw
SentencePiece model, and `tokenizer_config.json` with the sentinel count) from
a `seqio.SentencePieceVocabulary`; `write_generation_config` writes
`generation_config.json` with T5's special ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from etils import epath

from promot_t5x.models import t5

PEFT_DIR = 'peft'
ADAPTER_CONFIG = 'adapter_config.json'
ADAPTER_WEIGHTS = 'adapter_model.safetensors'
TOKENIZER_FILES = ('spiece.model', 'tokenizer_config.json', 'special_tokens_map.json')
GENERATION_CONFIG = 'generation_config.json'


def write_peft_prompt(prompt: np.ndarray, path: str, config: t5.T5Config, *,
                      base_model_name_or_path: str | None = None) -> list[str]:
  """Writes one soft prompt as a PEFT prompt-tuning adapter folder.

  Args:
    prompt: `[P, E]` soft prompt.
    path: the adapter folder (created).
    config: the model's architecture (E, heads and layers go into the config).
    base_model_name_or_path: where the HF base model lives (recorded for
      `AutoPeftModelForSeq2SeqLM`); None leaves it empty.

  Returns:
    The two files written.
  """
  prompt = np.ascontiguousarray(np.asarray(prompt, np.float32))
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise ValueError(f'A soft prompt must be [P, {config.emb_dim}] for this model, got '
                     f'{list(prompt.shape)}.')
  os.makedirs(path, exist_ok=True)
  adapter_config = {
      'peft_type': 'PROMPT_TUNING',
      'task_type': 'SEQ_2_SEQ_LM',
      'num_virtual_tokens': int(prompt.shape[0]),
      'token_dim': int(config.emb_dim),
      # The prompt joins the encoder's inputs only (PEFT's default for seq2seq is 2:
      # encoder and decoder).
      'num_transformer_submodules': 1,
      'num_attention_heads': int(config.num_heads),
      'num_layers': int(config.num_encoder_layers),
      'prompt_tuning_init': 'RANDOM',
      'prompt_tuning_init_text': None,
      'tokenizer_name_or_path': None,
      'base_model_name_or_path': base_model_name_or_path,
      'inference_mode': True,
      'revision': None,
  }
  config_file = os.path.join(path, ADAPTER_CONFIG)
  with open(config_file, 'w') as f:
    json.dump(adapter_config, f, indent=2, sort_keys=True)
  weights_file = os.path.join(path, ADAPTER_WEIGHTS)
  safetensors.numpy.save_file({'prompt_embeddings': prompt}, weights_file,
                              metadata={'format': 'pt'})
  return [config_file, weights_file]


def write_peft_prompts(prompts: Mapping[str, np.ndarray], hf_dir: str,
                       config: t5.T5Config) -> list[str]:
  """One adapter folder per prompt name: `hf_dir/peft/<name>/`. Returns the files written."""
  written = []
  for name, prompt in sorted(prompts.items()):
    written += write_peft_prompt(prompt, os.path.join(hf_dir, PEFT_DIR, name), config,
                                 base_model_name_or_path=os.path.abspath(hf_dir))
  return written


def write_tokenizer(vocabulary: Any, hf_dir: str) -> list[str]:
  """T5's tokenizer files for a `seqio.SentencePieceVocabulary`.

  `transformers.AutoTokenizer.from_pretrained(hf_dir)` then gives the ids
  the vocabulary gives (and appends EOS, as T5's HF tokenizer does), sentinels
  `<extra_id_N>` included.

  Raises:
    ValueError: a vocabulary without a SentencePiece model file.
  """
  model_file = getattr(vocabulary, 'sentencepiece_model_file', None)
  if not model_file:
    raise ValueError(f'Cannot write a tokenizer for {type(vocabulary).__name__}: HF T5 '
                     'tokenizers need a SentencePiece model file (seqio.SentencePieceVocabulary).')
  extra_ids = int(getattr(vocabulary, 'extra_ids', 0) or 0)
  os.makedirs(hf_dir, exist_ok=True)
  spiece = os.path.join(hf_dir, TOKENIZER_FILES[0])
  with open(spiece, 'wb') as f:
    f.write(epath.Path(model_file).read_bytes())
  sentinels = [f'<extra_id_{i}>' for i in range(extra_ids)]
  special = {'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': '<pad>',
             'additional_special_tokens': sentinels}
  tokenizer_config = {'tokenizer_class': 'T5Tokenizer', 'extra_ids': extra_ids,
                      'model_max_length': 1_000_000_000, **special}
  written = [spiece]
  for name, content in ((TOKENIZER_FILES[1], tokenizer_config), (TOKENIZER_FILES[2], special)):
    file = os.path.join(hf_dir, name)
    with open(file, 'w') as f:
      json.dump(content, f, indent=2, sort_keys=True)
    written.append(file)
  return written


def write_generation_config(hf_dir: str, *, max_new_tokens: int | None = None,
                            num_beams: int = 1) -> str:
  """`generation_config.json`: T5's ids (pad 0 = decoder start, EOS 1) and the decoding settings."""
  generation = {'decoder_start_token_id': 0, 'eos_token_id': 1, 'pad_token_id': 0,
                'num_beams': int(num_beams)}
  if max_new_tokens is not None:
    generation['max_new_tokens'] = int(max_new_tokens)
  file = os.path.join(hf_dir, GENERATION_CONFIG)
  os.makedirs(hf_dir, exist_ok=True)
  with open(file, 'w') as f:
    json.dump(generation, f, indent=2, sort_keys=True)
  return file
