"""Conjugate transforms of the synthetic world (issue 5), registered in `promot_t5x.conjugate`.

Two invertible transforms the base model learns in pretraining (a share of the
pretraining documents and few-shot episodes is rendered in each form, see
`world.PRETRAIN_RATES`):

- `toylang`: every word of the world's English (templates, label words,
  questions, facts, articles) replaced word by word by its Lumic word, an
  invented language; the analogue of prompting in French or Hungarian.
- `cipher`: the same words with their vowels rotated (a->e->i->o->u->a);
  the analogue of Leetspeak or Pig Latin.

Both leave proper nouns (people, cities, language names), translation
sentences and toy-language words alone, so a translation prompt keeps its
source sentence and its expected output (`Translate English to Deuna: ...`
becomes `<Translate> English <to> Deuna: ...`). Both are bijections on the
world's text: `inverse_output(forward_target(t)) == t` and
`inverse(forward(x)) == x` for every input and target of the world.

Usage (any evaluation suite of the miniature):

  import promot_t5x_tasks.synthetic.tasks  # registers tasks and transforms
  from promot_t5x import conjugate
  conjugate.register_conjugate('mini_eval_1shot', 'toylang')  # -> 'mini_eval_1shot__toylang'

or directly on text:

  t = conjugate.get_transform('toylang')
  t.apply_to_input('Q: what pet does Lira have? A:')   # -> Lumic text
  t.invert(model_output)                                # -> English text
"""

from __future__ import annotations

from promot_t5x_tasks.synthetic import world as world_lib

from promot_t5x import conjugate

TOYLANG = 'toylang'
CIPHER = 'cipher'
TRANSFORM_NAMES = (TOYLANG, CIPHER)
# Registered transform name -> the world whose words it maps (`register_transforms`).
_WORLDS: dict[str, world_lib.WorldConfig] = {}


def transform_names(suffix: str = '') -> tuple[str, ...]:
  """('toylang', 'cipher'), each name followed by `suffix` (another world's: '_v2')."""
  return tuple(name + suffix for name in TRANSFORM_NAMES)


def make_transforms(world: world_lib.World, suffix: str = '') -> dict[str, conjugate.Transform]:
  """The world's conjugate transforms, by name (`transform_names(suffix)`; not registered).

  Every world has its own Lumic and cipher dictionaries (they follow its
  vocabulary), so each world's transforms need names of their own.
  """
  toylang, cipher = transform_names(suffix)
  return {
      toylang: conjugate.Transform(
          name=toylang, forward_input=world.to_lumic, forward_target=world.to_lumic,
          inverse_output=world.from_lumic, invertible=True,
          description=('Miniature only: the prompt and answer in Lumic, a toy language the '
                       'base model read in pretraining (word by word; names, translation '
                       'sentences and toy-language words unchanged).')),
      cipher: conjugate.Transform(
          name=cipher, forward_input=world.to_cipher, forward_target=world.to_cipher,
          inverse_output=world.from_cipher, invertible=True,
          description=('Miniature only: vowels of every world English word rotated '
                       '(a->e->i->o->u->a), a cipher taught in pretraining; names, translation '
                       'sentences and toy-language words unchanged.')),
  }


def register_transforms(world: world_lib.World | None = None, suffix: str = '') -> tuple[str, ...]:
  """Registers (replacing) `toylang{suffix}` and `cipher{suffix}` for `world`; returns their names.

  `world` defaults to the default world (`WorldConfig()`), whose transforms have
  no suffix; the second world's are `toylang_v2` and `cipher_v2` (`tasks_v2.py`).
  """
  world = world or world_lib.get_world()
  transforms = make_transforms(world, suffix)
  for name, transform in transforms.items():
    conjugate.register_transform(transform, overwrite=True)
    _WORLDS[name] = world.config
  return tuple(transforms)


def world_of(name: str) -> world_lib.WorldConfig | None:
  """The world a transform of this module was registered for (None: not one of this module's)."""
  return _WORLDS.get(name)


def registered_for(world_config: world_lib.WorldConfig) -> tuple[str, ...]:
  """The names of this module's transforms registered for `world_config`, in registration order."""
  return tuple(name for name, config in _WORLDS.items() if config == world_config)


register_transforms()
