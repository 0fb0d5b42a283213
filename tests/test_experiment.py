"""Experiment specs: the shipped ablation parses into variants whose gin resolves."""

import os

import pytest

import gin
from promot_t5x import experiment, gin_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, 'experiments', 'miniature_prompt_length.toml')


def test_shipped_spec_parses_and_each_variant_resolves_its_gin():
  exp = experiment.load_spec(SPEC)
  assert [v.name for v in exp.variants] == ['pretrained', 'finetune', 'promot_p10', 'promot_p50',
                                            'promot_p100']
  assert exp.seeds_of(exp.variants[0]) == (0,) and exp.seeds_of(exp.variants[2]) == (0, 1)
  lengths = {}
  for variant in exp.variants[1:]:
    gin_utils.parse(exp.model_gin_files + exp.gin_files + variant.gin_files,
                    experiment.bindings(exp.overrides) + experiment.bindings(variant.overrides),
                    finalize=False)
    assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'mini_rte'
    if variant.name.startswith('promot'):
      assert gin.query_parameter('%RUN_ENTRY') == 'promot_t5x.train.promot'
      lengths[variant.name] = gin.query_parameter('%PROMPT_LENGTH')
  gin.clear_config()
  assert lengths == {'promot_p10': 10, 'promot_p50': 50, 'promot_p100': 100}
  assert exp.run_dir(exp.variants[2], 1).endswith(os.path.join('promot_p10', 'seed_1'))


def test_bad_spec_names_the_fields(tmp_path):
  bad = tmp_path / 'bad.toml'
  bad.write_text('name = "x"\noutput_dir = "o"\nmodle_gin_files = []\n[[variants]]\nname = "a"\n'
                 'train = false\n')
  with pytest.raises(ValueError, match='model_gin_files'):
    experiment.load_spec(str(bad))


def test_variant_that_trains_needs_a_recipe():
  with pytest.raises(ValueError, match='names no recipe gin'):
    experiment.Variant('finetune')
