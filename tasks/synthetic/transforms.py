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


def make_transforms(world: world_lib.World) -> dict[str, conjugate.Transform]:
  """The world's conjugate transforms, by name (not registered)."""
  return {
      TOYLANG: conjugate.Transform(
          name=TOYLANG, forward_input=world.to_lumic, forward_target=world.to_lumic,
          inverse_output=world.from_lumic, invertible=True,
          description=('Miniature only: the prompt and answer in Lumic, a toy language the '
                       'base model read in pretraining (word by word; names, translation '
                       'sentences and toy-language words unchanged).')),
      CIPHER: conjugate.Transform(
          name=CIPHER, forward_input=world.to_cipher, forward_target=world.to_cipher,
          inverse_output=world.from_cipher, invertible=True,
          description=('Miniature only: vowels of every world English word rotated '
                       '(a->e->i->o->u->a), a cipher taught in pretraining; names, translation '
                       'sentences and toy-language words unchanged.')),
  }


def register_transforms(world: world_lib.World | None = None) -> tuple[str, ...]:
  """Registers (replacing) `toylang` and `cipher` for `world` (default: the default world)."""
  world = world or world_lib.get_world()
  for transform in make_transforms(world).values():
    conjugate.register_transform(transform, overwrite=True)
  return TRANSFORM_NAMES


register_transforms()
