"""A small, deterministic synthetic world for the miniature ProMoT experiment.

The world has people with six facts each (city, job, food, pet, color, sport),
topics with cue words (for the word-sense task), recipes, and four toy
languages besides English: Frenka, Deuna and Romali (the analogues of French,
German and Romanian) and Lumic (the language of the conjugate transform).
Every task family of the paper has an analogue, rendered with the paper's
templates (`promot_t5x_tasks.templates`):

| family      | paper analogue   | role         | target                        |
|-------------|------------------|--------------|-------------------------------|
| rte         | RTE              | fine-tuning  | True / False                  |
| enfr        | WMT14 En-Fr      | fine-tuning  | Frenka sentence               |
| cb          | CB               | evaluation   | True / False / Neither        |
| wic         | WiC              | evaluation   | True / False                  |
| triviaqa    | TriviaQA         | evaluation   | a fact (city, job, food)      |
| webqa       | WebQuestions     | evaluation   | a fact (pet, color, sport)    |
| ende        | WMT16 En-De      | evaluation   | Deuna sentence                |
| enro        | WMT16 En-Ro      | evaluation   | Romali sentence               |
| xsum        | XSum             | evaluation   | the article's first sentence  |
| wikilingua  | WikiLingua/en    | evaluation   | the article's last sentence   |

Pretraining (`pretraining_example`) mixes span corruption on "world documents"
(the only place where the facts asked by the QA evaluation splits are stated;
half of them T5-style, half BART-style reconstructions of a short document)
with 0- to 4-shot episodes of the evaluation families. Each episode draws a
latent *convention* that its demonstrations share and that a demonstration
reveals: the label words (True/False/Neither, yes/no/maybe or
right/wrong/unclear), the answer style of QA ("Kelmar", "Bavo lives in Kelmar",
"the answer is Kelmar"), the register of a translation (formal or informal
word forms), and which sentence an extractive summary copies (first, second,
last). The evaluation and fine-tuning tasks use one fixed convention (the
paper's labels, the short answer, the formal register; XSum's first and
WikiLingua's last sentence), so a 0-shot query is genuinely ambiguous and a
demonstration resolves it.

The fine-tuning forms never occur in pretraining: no binary-inference
template at all, and no English-to-Frenka translation (Frenka appears only as
a source language), so the pretrained model starts near chance on them.

Everything is a function of `WorldConfig` (and an example index): the same
seed gives the same world, splits and pretraining stream on every machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import zlib
from collections.abc import Callable

import numpy as np
from promot_t5x_tasks import templates

# -----------------------------------------------------------------------------
# Fixed English word lists. Translation sentences use their own vocabulary,
# disjoint from every other English word of the world, so that the Lumic
# transform (which maps the world's other English words) leaves a
# translation's source sentence untouched.
# -----------------------------------------------------------------------------
JOBS = ('baker', 'farmer', 'teacher', 'doctor', 'painter', 'sailor', 'miner', 'tailor',
        'singer', 'hunter', 'potter', 'weaver')
FOODS = ('bread', 'rice', 'soup', 'cheese', 'honey', 'pears', 'beans', 'noodles',
         'porridge', 'yogurt')
PETS = ('cat', 'dog', 'goat', 'parrot', 'rabbit', 'turtle', 'hamster', 'pony')
COLORS = ('red', 'blue', 'green', 'yellow', 'purple', 'orange', 'black', 'white')
SPORTS = ('chess', 'tennis', 'soccer', 'golf', 'hockey', 'rugby', 'cricket', 'polo')

# Word-sense topics: a topic and its cue words. A polysemous word belongs to
# two topics; in a WiC example the cue words say which sense is meant.
TOPICS = {
    'river': ('water', 'shore', 'fish', 'reeds', 'current', 'mud'),
    'money': ('coin', 'loan', 'gold', 'debt', 'clerk', 'vault'),
    'music': ('song', 'drum', 'choir', 'tune', 'flute', 'chord'),
    'game': ('goal', 'referee', 'pitch', 'score', 'team', 'whistle'),
    'kitchen': ('pot', 'oven', 'knife', 'stove', 'kettle', 'spoon'),
    'sea': ('wave', 'sail', 'anchor', 'harbor', 'tide', 'deck'),
    'school': ('pupil', 'chalk', 'lesson', 'desk', 'exam', 'pencil'),
    'farm': ('barn', 'plow', 'hay', 'cow', 'tractor', 'fence'),
    'forest': ('oak', 'moss', 'fern', 'wolf', 'trail', 'pine'),
    'sky': ('star', 'moon', 'sun', 'comet', 'planet', 'orbit'),
}
POLYSEMOUS = ('bank', 'note', 'bar', 'spring', 'match', 'ring', 'bolt', 'scale', 'trunk',
              'bow', 'seal', 'club', 'board', 'check', 'key', 'park')
WIC_PATTERNS = ('{n} saw a {w} by a {c}.', 'The {w} was by the {c}.', 'A {w} beside a {c}.',
                'The {c} and a {w}.', 'A {w} hit the {c}.')
TOPIC_DOC_PATTERNS = ('At the {t} there is a {a}, a {b} and a {c}.',
                      'A {a} and a {b} belong to the {t}.',
                      'Around every {t} you find a {a} and a {b}.')

# How-to articles (the WikiLingua analogue).
DISHES = ('stew', 'pie', 'cake', 'salad', 'curry', 'pudding', 'omelet', 'dumplings')
INGREDIENTS = ('onion', 'carrot', 'garlic', 'potato', 'pepper', 'butter', 'flour', 'sugar',
               'salt', 'milk', 'egg', 'lemon')
HOWTO_PATTERNS = ('Cut the {i} into tiny pieces.', 'Boil the {i} for a while.',
                  'Add the {i} to the {d}.', 'Mix the {i} with some {j}.',
                  'Put the {i} in the oven.', 'Wash the {i} with clean water.',
                  'Serve the {d} with the {i}.', 'Keep the {i} for the {d}.')
NEWS_EVENTS = ('{e} visited {c} last week.', '{e} won a prize in {c}.',
               '{e} moved away from {c}.', '{e} gave a talk in {c}.')

# Translation sentences: `NP verb NP [preposition NP]`, NP = [adjective] noun.
TR_NOUNS = ('apple', 'stone', 'bird', 'tree', 'horse', 'wagon', 'cloud', 'lamp', 'mountain',
            'door', 'window', 'garden', 'bridge', 'candle', 'basket', 'ladder', 'feather',
            'mirror', 'hammer', 'rope')
TR_ADJECTIVES = ('big', 'small', 'old', 'young', 'heavy', 'quiet', 'bright', 'dark', 'warm',
                 'cold', 'tall', 'soft')
TR_VERBS = ('sees', 'carries', 'finds', 'pulls', 'pushes', 'holds', 'breaks', 'follows',
            'touches', 'watches', 'lifts', 'drops')
TR_PREPOSITIONS = ('near', 'under', 'behind', 'above')


@dataclasses.dataclass(frozen=True)
class Relation:
  """A fact type: its values, how documents state it, how QA asks it."""

  name: str
  family: str  # 'triviaqa' or 'webqa'
  statements: tuple[str, ...]  # paraphrases; '{e}' entity, '{v}' value
  question: str
  values: tuple[str, ...] = ()


_RELATIONS = (
    Relation('city', 'triviaqa', ('{e} lives in {v}.', '{e} has a home in {v}.',
                                  'The home of {e} is in {v}.'),
             'Which city does {e} live in?'),
    Relation('job', 'triviaqa', ('{e} works as a {v}.', '{e} earns a living as a {v}.',
                                 'The job of {e} is {v}.'),
             'What is the job of {e}?'),
    Relation('food', 'triviaqa', ('{e} likes to eat {v}.', '{e} often eats {v}.',
                                  'The favorite food of {e} is {v}.'),
             'Which food does {e} like best?', FOODS),
    Relation('pet', 'webqa', ('{e} owns a {v}.', '{e} keeps a {v} at home.',
                              'The pet of {e} is a {v}.'),
             'what pet does {e} have?', PETS),
    Relation('color', 'webqa', ('{e} likes the color {v}.', 'The favorite color of {e} is {v}.',
                                '{e} always wears {v}.'),
             'what color does {e} like?', COLORS),
    Relation('sport', 'webqa', ('{e} plays {v}.', '{e} is good at {v}.',
                                'The sport of {e} is {v}.'),
             'what sport does {e} play?', SPORTS),
)

# The second world's latent-skill forms (`WorldConfig.latent_skills`): the
# fine-tuning tasks' semantics in formats other than the fine-tuning templates.
YES_NO_INFERENCE = 'Q: {premise} Does it say that {hypothesis}? A:'
YES_NO_LABELS = ('yes', 'no')
ALT_TRANSLATION = '{source}: {sentence} {target}:'
# Held out of pretraining: what fine-tuning on `rte` can add (`negation_rate`).
NEGATION = 'It is not true that {statement}'

# Conventions. Index 0 is the one the evaluation tasks use.
BINARY_LABEL_SETS = (templates.BINARY_LABELS, ('yes', 'no'), ('right', 'wrong'))
THREE_WAY_LABEL_SETS = (templates.THREE_WAY_LABELS, ('yes', 'no', 'maybe'),
                        ('right', 'wrong', 'unclear'))
QA_STYLES = ('short', 'sentence', 'answer_is')
REGISTERS = ('formal', 'informal')
SUMMARY_RULES = ('first', 'second', 'last')
SENTINEL_FORMAT = '<extra_id_{}>'
RECONSTRUCT_MASK = '<extra_id_99>'

# Languages: English plus four invented ones. Frenka is the En-Fr analogue
# (fine-tuning), Deuna and Romali the En-De / En-Ro analogues (evaluation),
# Lumic the language of the conjugate transform.
ENGLISH, FRENKA, DEUNA, ROMALI, LUMIC = 'English', 'Frenka', 'Deuna', 'Romali', 'Lumic'
TOY_LANGUAGES = (FRENKA, DEUNA, ROMALI)


@dataclasses.dataclass(frozen=True)
class _Phonology:
  onsets: tuple[str, ...]
  vowels: tuple[str, ...]
  codas: tuple[str, ...]
  syllables: tuple[int, int]  # min, max per word


_PHONOLOGY = {
    'name': _Phonology(('b', 'd', 'f', 'g', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'z'),
                       ('a', 'e', 'i', 'o', 'u'), ('', '', '', 'n', 'l', 'r'), (2, 2)),
    'city': _Phonology(('br', 'dr', 'k', 'l', 'm', 'v', 'st', 'th', 'gr'),
                       ('a', 'e', 'o', 'i'), ('l', 'n', 'r', 'm', 'sk', 'nd'), (2, 2)),
    FRENKA: _Phonology(('b', 'ch', 'd', 'f', 'l', 'm', 'p', 'r', 's', 't', 'v'),
                       ('a', 'e', 'ou', 'ai', 'o', 'i'), ('', '', 'n', 'r', 'x'), (2, 2)),
    DEUNA: _Phonology(('b', 'g', 'k', 'sch', 'st', 'w', 'z', 'h', 'kr', 'pf'),
                      ('a', 'ei', 'au', 'u', 'o', 'ie'), ('t', 'k', 'ch', 'n', 'rg', 'ss'), (1, 2)),
    ROMALI: _Phonology(('c', 'd', 'm', 'n', 'p', 'r', 's', 't', 'v', 'fl', 'str'),
                       ('a', 'e', 'i', 'u', 'ea', 'oa'), ('', '', 'r', 'c', 'sc'), (2, 2)),
    LUMIC: _Phonology(('l', 'm', 'n', 'v', 'th', 's', 'r', 'y', 'q'),
                      ('a', 'e', 'i', 'o', 'u', 'y', 'ae'), ('', 'm', 'n', 's', 'th'), (1, 2)),
}

# Register suffixes of toy-language nouns and verbs: (formal, informal).
_REGISTER_SUFFIXES = {
    FRENKA: {'noun': ('', 'et'), 'verb': ('ez', 'es')},
    DEUNA: {'noun': ('', 'chen'), 'verb': ('en', 'st')},
    ROMALI: {'noun': ('', 'el'), 'verb': ('ati', 'i')},
}

_WORD_RE = re.compile(r"[A-Za-z]+|[^A-Za-z\s]")


def _salt(*parts: object) -> list[int]:
  """A stable integer seed sequence from strings/ints (Python's hash() is salted)."""
  out = []
  for p in parts:
    out.append(p if isinstance(p, int) else zlib.crc32(str(p).encode()))
  return out


def words_of(text: str) -> list[str]:
  """Alphabetic words of `text` (punctuation dropped)."""
  return re.findall(r'[A-Za-z]+', text)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Everything that determines the world, its splits and its pretraining stream.

  Attributes:
    seed: master seed.
    num_people: people with six facts each (QA facts: num_people * 3 per QA task,
      split evenly into train / validation / test by (person, relation)).
    num_story_names: names used by inference and word-sense examples; disjoint
      from the people, so that stories never contradict the world's facts.
    eval_size: validation and test examples per non-QA evaluation task.
    finetune_test_size: test examples of the fine-tuning families (`rte`, `enfr`)
      when above eval_size. Their first eval_size items are the same as with
      eval_size alone (the test split is drawn first, from its own stream); the
      rest are held out of pretraining like every test item
      (`promot_t5x_tasks.synthetic.check_held_out` checks that the committed
      base model's pretraining stream never drew them).
    demo_pool_size: train examples per evaluation family (the demonstrations).
    finetune_train_size: train examples of `rte` and `enfr`.
    max_shots: most demonstrations in a pretraining episode.
    shot_probs: probability of 0..max_shots demonstrations in a pretraining episode.
    salient_span_rate: fraction of span-corruption documents whose masked spans
      are fact values (REALM-style salient spans) rather than random spans.
    noise_density: fraction of words masked by random span corruption.
    mean_span_length: mean masked span length in words.
    max_episode_words: a pretraining episode longer than this (in words) drops
      its oldest demonstrations (about 1.25 tokens per word).
    reconstruct_rate: fraction of span-corruption documents (three facts long)
      whose target is the whole document rather than the masked spans.
    latent_skills: the second world (`WORLD_V2`): the skills the fine-tuning
      tasks need are latent in pretraining, in other formats (the `skills`
      component: binary inference as yes/no questions, monolingual Frenka
      documents, English-to-Frenka in another wording) while the fine-tuning
      templates themselves still never occur; three-way inference episodes
      are twice as frequent.
    negation_rate: share of the fine-tuning inference items (`rte`, every
      split) whose premise states the hypothesis's fact negated ("It is not
      true that ..."; label False). Negation never occurs in pretraining, so
      it is what fine-tuning can add beyond prompt tuning.
    max_prepositional_phrases: most prepositional phrases in a translation
      sentence, 1 or 2 (with 2, two in five sentences have a phrase and half
      of those a second one: longer sentences, meant to leave the translation
      analogues headroom in a later world; both committed worlds use 1, and
      the second world's base model translates at ceiling: docs/results.md).
    rare_share: share of the people, and of the Deuna and Romali translation
      nouns, adjectives and verbs, that pretraining mentions rarely (a fixed,
      seeded subset). The tasks' splits draw every person and word uniformly, so
      the QA and En-De / En-Ro analogues ask about rare ones too: a base model
      knows the common part of the world and little of the rare part, which
      leaves those analogues headroom (the third world, `WORLD_V3`). 0 (the
      earlier worlds): every draw exactly as before.
    rare_weight: a rare person's or word's weight in pretraining's draws,
      relative to 1 for the others.
  """

  seed: int = 0
  num_people: int = 72
  num_story_names: int = 48
  eval_size: int = 128
  finetune_test_size: int = 256
  demo_pool_size: int = 512
  finetune_train_size: int = 4000
  max_shots: int = 4
  shot_probs: tuple[float, ...] = (0.15, 0.3, 0.2, 0.15, 0.2)
  salient_span_rate: float = 0.6
  noise_density: float = 0.15
  mean_span_length: float = 3.0
  max_episode_words: int = 150
  reconstruct_rate: float = 0.5
  latent_skills: bool = False
  negation_rate: float = 0.0
  max_prepositional_phrases: int = 1
  rare_share: float = 0.0
  rare_weight: float = 0.01

  def __post_init__(self):
    if self.num_people < 12 or self.num_story_names < 8:
      raise ValueError('WorldConfig needs num_people >= 12 and num_story_names >= 8.')
    if len(self.shot_probs) != self.max_shots + 1 or abs(sum(self.shot_probs) - 1) > 1e-6:
      raise ValueError(f'WorldConfig.shot_probs must have max_shots + 1 = {self.max_shots + 1} '
                       f'entries summing to 1, got {self.shot_probs}.')
    for name in ('salient_span_rate', 'reconstruct_rate', 'negation_rate', 'rare_share', 'rare_weight'):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f'WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}.')
    if not 0 < self.noise_density < 1 or self.mean_span_length < 1:
      raise ValueError('WorldConfig.noise_density must be in (0, 1) and mean_span_length >= 1.')
    for name in ('eval_size', 'finetune_test_size', 'demo_pool_size', 'finetune_train_size'):
      if getattr(self, name) <= 0:
        raise ValueError(f'WorldConfig.{name} must be positive.')
    if self.max_prepositional_phrases not in (1, 2):
      raise ValueError('WorldConfig.max_prepositional_phrases must be 1 or 2, got '
                       f'{self.max_prepositional_phrases}.')
    object.__setattr__(self, 'shot_probs', tuple(self.shot_probs))


# Families and their kinds.
CLASSIFICATION_FAMILIES = ('rte', 'cb', 'wic')
QA_FAMILIES = ('triviaqa', 'webqa')
TRANSLATION_FAMILIES = {'enfr': (ENGLISH, FRENKA), 'ende': (ENGLISH, DEUNA),
                        'enro': (ENGLISH, ROMALI)}
SUMMARY_FAMILIES = {'xsum': 'first', 'wikilingua': 'last'}
FINETUNE_FAMILIES = ('rte', 'enfr')
EVAL_FAMILIES = ('cb', 'wic', 'triviaqa', 'webqa', 'ende', 'enro', 'xsum', 'wikilingua')
ALL_FAMILIES = FINETUNE_FAMILIES + EVAL_FAMILIES
SPLITS = ('train', 'validation', 'test')
# The scored split of the tasks (`World.items`): test, plus validation for QA.
EVAL_SPLIT = 'eval'


def family_kind(family: str) -> str:
  """'classification', 'qa', 'translation' or 'summary'."""
  if family in CLASSIFICATION_FAMILIES:
    return 'classification'
  if family in QA_FAMILIES:
    return 'qa'
  if family in TRANSLATION_FAMILIES:
    return 'translation'
  if family in SUMMARY_FAMILIES:
    return 'summary'
  raise ValueError(f'Unknown family {family!r}; known: {ALL_FAMILIES}.')


@dataclasses.dataclass(frozen=True)
class Example:
  """One rendered example. `query` is the input without demonstrations."""

  inputs: str
  targets: str
  query: str = ''

  def as_dict(self) -> dict[str, str]:
    return {'inputs': self.inputs, 'targets': self.targets}


# Raw (unrendered) items, so that one item can be rendered in several conventions.
@dataclasses.dataclass(frozen=True)
class _Item:
  family: str
  fields: tuple  # family-specific
  key: str  # identity for split disjointness


class World:
  """The world built from a `WorldConfig`; all methods are deterministic."""

  def __init__(self, config: WorldConfig | None = None):
    self.config = config or WorldConfig()
    rng = self._rng('build')
    taken: set[str] = set(w.lower() for w in self.english_words())
    taken |= {l.lower() for l in (ENGLISH, FRENKA, DEUNA, ROMALI, LUMIC)}
    self.people = self._invent(rng, 'name', self.config.num_people, taken, capital=True)
    self.story_names = self._invent(rng, 'name', self.config.num_story_names, taken,
                                    capital=True)
    self.cities = tuple(self._invent(rng, 'city', 12, taken, capital=True))
    self.relations = tuple(
        dataclasses.replace(r, values=r.values or {'city': self.cities, 'job': JOBS}[r.name])
        for r in _RELATIONS)
    # Facts: person -> relation -> value.
    self.facts = {p: {r.name: r.values[int(rng.integers(len(r.values)))]
                      for r in self.relations} for p in self.people}
    # Word-sense: each polysemous word gets two distinct topics.
    topics = sorted(TOPICS)
    self.senses = {}
    for w in POLYSEMOUS:
      a, b = rng.choice(len(topics), size=2, replace=False)
      self.senses[w] = (topics[int(a)], topics[int(b)])
    # Toy-language lexicons (English translation vocabulary -> stems).
    self.lexicons: dict[str, dict[str, str]] = {}
    tr_words = TR_NOUNS + TR_ADJECTIVES + TR_VERBS + TR_PREPOSITIONS
    for lang in TOY_LANGUAGES:
      stems = self._invent(rng, lang, len(tr_words), taken)
      self.lexicons[lang] = dict(zip(tr_words, stems))
      for stem in stems:  # Register forms must stay unique too.
        for kind in ('noun', 'verb'):
          taken.update(stem + s for s in _REGISTER_SUFFIXES[lang][kind] if s)
    # Lumic: one word per non-translation English word (templates included).
    # Shorter English words get shorter Lumic words, so Lumic text stays short.
    by_length = lambda w: (len(w), w)
    lumic_source = sorted(self.lumic_vocabulary(), key=by_length)
    lumic_words = sorted(self._invent(rng, LUMIC, len(lumic_source), taken), key=by_length)
    self.lumic = dict(zip(lumic_source, lumic_words))
    self._check()
    # What pretraining mentions rarely (`rare_share`): its own stream, so the rest
    # of the world is the same with or without it.
    rare_rng = self._rng('rare')
    pick = lambda n: frozenset(int(i) for i in rare_rng.choice(
        n, size=int(round(self.config.rare_share * n)), replace=False))
    self.rare_people = frozenset(self.people[i] for i in pick(len(self.people)))
    self.rare_words = frozenset(words[i] for words in (TR_NOUNS, TR_ADJECTIVES, TR_VERBS)
                                for i in pick(len(words)))

  # -- construction helpers ---------------------------------------------------
  def _rng(self, *salt: object) -> np.random.Generator:
    return np.random.default_rng(_salt(self.config.seed, *salt))

  @staticmethod
  def _invent(rng: np.random.Generator, phonology: str, count: int, taken: set[str],
              capital: bool = False) -> list[str]:
    ph = _PHONOLOGY[phonology]
    out = []
    while len(out) < count:
      n = int(rng.integers(ph.syllables[0], ph.syllables[1] + 1))
      word = ''.join(ph.onsets[int(rng.integers(len(ph.onsets)))]
                     + ph.vowels[int(rng.integers(len(ph.vowels)))]
                     for _ in range(n))
      word += ph.codas[int(rng.integers(len(ph.codas)))]
      if len(word) < 3 or word in taken:
        continue
      taken.add(word)
      out.append(word.capitalize() if capital else word)
    return out

  def english_words(self) -> set[str]:
    """Every English word the world uses (lower case), translation vocabulary included."""
    return self.lumic_vocabulary() | set(TR_NOUNS + TR_ADJECTIVES + TR_VERBS + TR_PREPOSITIONS)

  def lumic_vocabulary(self) -> set[str]:
    """English words that Lumic translates: everything but the translation vocabulary."""
    return {w.lower() for w in _english_text_sources(self.config.latent_skills)}

  def _check(self) -> None:
    tr = set(TR_NOUNS + TR_ADJECTIVES + TR_VERBS + TR_PREPOSITIONS)
    clash = tr & self.lumic_vocabulary()
    if clash:
      raise AssertionError(f'Translation words also used elsewhere in the world: {clash}.')
    for topic, cues in TOPICS.items():
      if set(cues) & set(POLYSEMOUS):
        raise AssertionError(f'Topic {topic} cue words overlap polysemous words.')
    # Every surface word belongs to exactly one language (or is a proper noun).
    surfaces = [w.lower() for w in self.people + self.story_names + list(self.cities)]
    surfaces += list(self.english_words()) + list(self.lumic.values())
    for lang, lex in self.lexicons.items():
      for w, stem in lex.items():
        if w in TR_NOUNS:
          surfaces += [stem + s for s in _REGISTER_SUFFIXES[lang]['noun']]
        elif w in TR_VERBS:
          surfaces += [stem + s for s in _REGISTER_SUFFIXES[lang]['verb']]
        else:
          surfaces.append(stem)
    dup = {w for w in surfaces if surfaces.count(w) > 1}
    if dup:
      raise AssertionError(f'Words shared between languages or names: {sorted(dup)}.')
    # The cipher is exactly invertible on world text when no word it leaves alone
    # (names, translation and toy-language words) looks like a ciphered word.
    kept = set(surfaces) - set(self.lumic) - set(self.lumic.values())
    clash = kept & set(self.cipher.values())
    if clash:
      raise AssertionError(f'Ciphered words collide with other words: {sorted(clash)}.')

  # -- languages ----------------------------------------------------------------
  def translate_sentence(self, parsed: tuple, language: str, register: str = 'formal') -> str:
    """Renders a parsed translation sentence in `language` (English or a toy language).

    `parsed` is ((adj|None, noun), verb, (adj|None, noun), (prep, (adj|None, noun))|None),
    optionally followed by a second prepositional phrase (worlds with
    `max_prepositional_phrases=2`), rendered after the first.
    Word order: English and Deuna keep adjective-noun order; Frenka and Romali put
    the adjective after the noun; Deuna puts the verb last (before a prepositional
    phrase); Romali uses postpositions (noun phrase, then the preposition).
    """
    subj, verb, obj, pp, *more = parsed
    pps = [pp, *more] if pp else []
    if language == ENGLISH:
      np_ = lambda x: ' '.join(w for w in x if w)
      words = [np_(subj), verb, np_(obj)] + [w for p in pps for w in (p[0], np_(p[1]))]
      s = ' '.join(words)
      return s[0].upper() + s[1:] + '.'
    if language not in self.lexicons:
      raise ValueError(f'Unknown language {language!r}.')
    lex, suffix = self.lexicons[language], _REGISTER_SUFFIXES[language]
    r = REGISTERS.index(register)
    noun = lambda n: lex[n] + suffix['noun'][r]
    adj_after = language in (FRENKA, ROMALI)

    def np_(x):
      adj, n = x
      parts = [noun(n)] if adj is None else (
          [noun(n), lex[adj]] if adj_after else [lex[adj], noun(n)])
      return ' '.join(parts)

    v = lex[verb] + suffix['verb'][r]
    if language == DEUNA:
      words = [np_(subj), np_(obj), v]
    else:
      words = [np_(subj), v, np_(obj)]
    for p in pps:
      words += ([np_(p[1]), lex[p[0]]] if language == ROMALI else [lex[p[0]], np_(p[1])])
    s = ' '.join(words)
    return s[0].upper() + s[1:] + '.'

  def to_lumic(self, text: str) -> str:
    """Word-by-word Lumic rendering (proper nouns, translation words, punctuation kept)."""
    return _map_words(text, self.lumic)

  @functools.cached_property
  def lumic_inverse(self) -> dict[str, str]:
    return {v: k for k, v in self.lumic.items()}

  def from_lumic(self, text: str) -> str:
    return _map_words(text, self.lumic_inverse)

  @functools.cached_property
  def cipher(self) -> dict[str, str]:
    """The vowel cipher on the words Lumic translates (same scope as Lumic)."""
    return {w: vowel_cipher(w) for w in self.lumic}

  @functools.cached_property
  def cipher_inverse(self) -> dict[str, str]:
    return {v: k for k, v in self.cipher.items()}

  def to_cipher(self, text: str) -> str:
    """Vowel-rotates every world English word (proper nouns and translation words kept)."""
    return _map_words(text, self.cipher)

  def from_cipher(self, text: str) -> str:
    return _map_words(text, self.cipher_inverse)

  # -- pretraining's exposure (`rare_share`) -------------------------------------------
  def _weights(self, names: tuple[str, ...] | list[str], rare: frozenset[str]) -> np.ndarray:
    key = (tuple(names), rare)
    cache = self.__dict__.setdefault('_weight_cache', {})
    if key not in cache:
      w = np.array([self.config.rare_weight if n in rare else 1.0 for n in names])
      cache[key] = w / w.sum()
    return cache[key]

  def _draw(self, rng: np.random.Generator, names, rare: frozenset[str], skewed: bool):
    """One of `names`: uniform, or (`skewed`, in a world with rare ones) by `_weights`."""
    if skewed and rare:
      return names[int(rng.choice(len(names), p=self._weights(names, rare)))]
    return names[int(rng.integers(len(names)))]

  # -- raw items ------------------------------------------------------------------
  def _sample_item(self, family: str, rng: np.random.Generator, split_item: bool = False) -> _Item:
    """A random raw item of a family (not QA: QA items are the fixed facts).

    `split_item`: the item is drawn for a task split (not a pretraining episode);
    only those items of `rte` may be negated (`WorldConfig.negation_rate`).
    """
    kind = family_kind(family)
    if kind == 'classification' and family in ('rte', 'cb'):
      negation_rate = self.config.negation_rate if split_item and family == 'rte' else 0.0
      return self._inference_item(family, rng, negation_rate)
    if family == 'wic':
      w = POLYSEMOUS[int(rng.integers(len(POLYSEMOUS)))]
      same = bool(rng.integers(2))
      t1 = self.senses[w][int(rng.integers(2))]
      t2 = t1 if same else [t for t in self.senses[w] if t != t1][0]
      c1, c2 = (TOPICS[t][int(rng.integers(6))] for t in (t1, t2))
      p1, p2 = rng.choice(len(WIC_PATTERNS), size=2, replace=False)
      n1, n2 = (self.story_names[int(rng.integers(len(self.story_names)))] for _ in range(2))
      s1 = WIC_PATTERNS[int(p1)].format(n=n1, w=w, c=c1)
      s2 = WIC_PATTERNS[int(p2)].format(n=n2, w=w, c=c2)
      return _Item('wic', (s1, s2, w, 0 if same else 1), f'{s1}|{s2}')
    if kind == 'translation':
      # Pretraining's Deuna and Romali sentences use rare words rarely (`rare_share`).
      parsed = self._sample_parse(rng, skewed=not split_item and family in ('ende', 'enro'))
      return _Item(family, (parsed,), repr(parsed))
    if family == 'xsum':
      e = self._draw(rng, self.people, self.rare_people, skewed=not split_item)
      rels = rng.choice(len(self.relations), size=2, replace=False)
      sents = [self.relations[int(i)].statements[int(rng.integers(3))].format(
          e=e, v=self.facts[e][self.relations[int(i)].name]) for i in rels]
      sents.append(NEWS_EVENTS[int(rng.integers(len(NEWS_EVENTS)))].format(
          e=e, c=self.cities[int(rng.integers(len(self.cities)))]))
      order = rng.permutation(3)
      sents = tuple(sents[int(i)] for i in order)
      return _Item('xsum', (sents,), ' '.join(sents))
    if family == 'wikilingua':
      d = DISHES[int(rng.integers(len(DISHES)))]
      pats = rng.choice(len(HOWTO_PATTERNS), size=3, replace=False)
      ings = rng.choice(len(INGREDIENTS), size=4, replace=False)
      sents = tuple(HOWTO_PATTERNS[int(p)].format(
          i=INGREDIENTS[int(ings[k])], j=INGREDIENTS[int(ings[3])], d=d)
                    for k, p in enumerate(pats))
      return _Item('wikilingua', (sents,), ' '.join(sents))
    raise ValueError(f'No random items for family {family!r}.')

  def _inference_item(self, family: str, rng: np.random.Generator,
                      negation_rate: float = 0.0) -> _Item:
    """Premise: 2 (cb) or 2-3 (rte) facts about a story name; hypothesis: one fact.

    label 0 (True): a premise fact, paraphrased; 1 (False): a premise relation
    with another value; 2 (Neither, cb only): a relation the premise does not
    mention. For rte, label 1 covers both contradictions and unmentioned
    relations (RTE's not_entailment).
    """
    n = self.story_names[int(rng.integers(len(self.story_names)))]
    k = 2 if family == 'cb' else int(rng.integers(2, 4))
    rel_idx = [int(i) for i in rng.choice(len(self.relations), size=k + 1, replace=False)]
    values = {i: self.relations[i].values[int(rng.integers(len(self.relations[i].values)))]
              for i in rel_idx}
    sentences = [self.relations[i].statements[int(rng.integers(3))].format(e=n, v=values[i])
                 for i in rel_idx[:k]]
    premise = ' '.join(sentences)
    label = int(rng.integers(3 if family == 'cb' else 2))
    if family == 'rte' and label == 1 and rng.integers(2):
      kind = 'unmentioned'
    else:
      kind = ('entailed', 'contradicted', 'unmentioned')[label]
    if kind == 'unmentioned':
      i = rel_idx[k]
      v = values[i]
    else:
      i = rel_idx[int(rng.integers(k))]
      v = values[i]
      if kind == 'contradicted':
        others = [x for x in self.relations[i].values if x != v]
        v = others[int(rng.integers(len(others)))]
    hypothesis = self.relations[i].statements[int(rng.integers(3))].format(e=n, v=v)
    if negation_rate > 0 and kind != 'unmentioned' and rng.random() < negation_rate:
      j = rel_idx[:k].index(i)
      sentences[j] = negate(sentences[j])
      premise, label = ' '.join(sentences), 1
    return _Item(family, (premise, hypothesis, label), f'{premise}|{hypothesis}')

  def _sample_parse(self, rng: np.random.Generator, skewed: bool = False) -> tuple:
    rare = self.rare_words
    def np_():
      adj = self._draw(rng, TR_ADJECTIVES, rare, skewed) if rng.random() < 0.5 else None
      return (adj, self._draw(rng, TR_NOUNS, rare, skewed))
    subj, obj = np_(), np_()
    verb = self._draw(rng, TR_VERBS, rare, skewed)
    def pp_():
      return (TR_PREPOSITIONS[int(rng.integers(len(TR_PREPOSITIONS)))], np_())
    pp = pp_() if rng.random() < 0.4 else None
    # A second phrase only where the world allows two (the draws of a one-phrase world unchanged).
    if pp is not None and self.config.max_prepositional_phrases == 2 and rng.random() < 0.5:
      return (subj, verb, obj, pp, pp_())
    return (subj, verb, obj, pp)

  # -- rendering ------------------------------------------------------------------
  def render(self, item: _Item, convention: int = 0, source: str | None = None,
             target: str | None = None) -> Example:
    """Renders a raw item with the family's template under a convention (0 = canonical).

    `source`/`target` choose the translation direction (translation items only);
    by default the family's own pair.
    """
    f = item.family
    kind = family_kind(f)
    if f in ('rte', 'cb'):
      premise, hypothesis, label = item.fields
      if f == 'rte':
        return Example(templates.binary_inference(premise, hypothesis),
                       BINARY_LABEL_SETS[convention][label])
      return Example(templates.three_way_inference(premise, hypothesis),
                     THREE_WAY_LABEL_SETS[convention][label])
    if f == 'wic':
      s1, s2, w, label = item.fields
      return Example(templates.word_in_context(s1, s2, w), BINARY_LABEL_SETS[convention][label])
    if kind == 'qa':
      person, rel = item.fields
      r = self._relation(rel)
      v = self.facts[person][r.name]
      style = QA_STYLES[convention]
      answer = {'short': v,
                'sentence': r.statements[0].format(e=person, v=v).rstrip('.'),
                'answer_is': f'the answer is {v}'}[style]
      return Example(templates.question_answering(r.question.format(e=person)), answer)
    if kind == 'translation':
      (parsed,) = item.fields
      src, tgt = TRANSLATION_FAMILIES[f]
      src, tgt = source or src, target or tgt
      register = REGISTERS[convention]
      # The register shows on the toy-language side (source or target).
      source_sentence = self.translate_sentence(parsed, src, register)
      return Example(templates.translation(src, tgt, source_sentence),
                     self.translate_sentence(parsed, tgt, register))
    if kind == 'summary':
      (sents,) = item.fields
      rule = SUMMARY_RULES[convention]
      pick = {'first': 0, 'second': 1, 'last': len(sents) - 1}[rule]
      return Example(templates.summarization(' '.join(sents)), sents[pick])
    raise ValueError(f'Unknown family {f!r}.')

  def render_skill(self, item: _Item, form: str, convention: int = 0) -> Example:
    """Renders an item in a latent-skill form (`SKILL_FORMS`) of the second world.

    `rte_yn`: a binary inference item as a yes/no question (`YES_NO_INFERENCE`);
    `enfr_alt`: an English-to-Frenka item in `ALT_TRANSLATION`'s wording, the
    register chosen by `convention`.
    """
    if form == 'rte_yn':
      premise, hypothesis, label = item.fields
      return Example(YES_NO_INFERENCE.format(premise=premise,
                                             hypothesis=_lower_article(hypothesis.rstrip('.'))),
                     YES_NO_LABELS[label])
    if form == 'enfr_alt':
      (parsed,) = item.fields
      register = REGISTERS[convention]
      return Example(ALT_TRANSLATION.format(source=ENGLISH, target=FRENKA,
                                            sentence=self.translate_sentence(parsed, ENGLISH)),
                     self.translate_sentence(parsed, FRENKA, register))
    raise ValueError(f'Unknown latent-skill form {form!r}; use one of {tuple(SKILL_FORMS)}.')

  def canonical_convention(self, family: str) -> int:
    """The convention the evaluation and fine-tuning tasks use."""
    if family in SUMMARY_FAMILIES:
      return SUMMARY_RULES.index(SUMMARY_FAMILIES[family])
    return 0

  def num_conventions(self, family: str) -> int:
    if family in SKILL_FORMS:
      return 1 if family == 'rte_yn' else len(REGISTERS)
    return {'classification': 3, 'qa': len(QA_STYLES), 'translation': len(REGISTERS),
            'summary': len(SUMMARY_RULES)}[family_kind(family)]

  def _relation(self, name: str) -> Relation:
    return next(r for r in self.relations if r.name == name)

  # -- splits -----------------------------------------------------------------------
  @functools.cache
  def items(self, family: str, split: str) -> tuple[_Item, ...]:
    """Raw items of a split. Splits are disjoint (by item key).

    `EVAL_SPLIT` ('eval') is the scored set: the test split, and for the QA
    families (never fine-tuned, so their validation split selects nothing)
    the validation split after it: 144 facts in the default world instead of 72.
    """
    if split == EVAL_SPLIT:
      scored = self.items(family, 'test')
      return scored + self.items(family, 'validation') if family in QA_FAMILIES else scored
    if split not in SPLITS:
      raise ValueError(f'Unknown split {split!r}; use one of {SPLITS + (EVAL_SPLIT,)}.')
    if family in QA_FAMILIES:
      return self._qa_splits(family)[split]
    return self._random_splits(family)[split]

  @functools.cache
  def _qa_splits(self, family: str) -> dict[str, tuple[_Item, ...]]:
    # Each (person, relation) fact goes to one split, stratified by relation.
    rng = self._rng('qa_splits', family)
    out = {s: [] for s in SPLITS}
    for r in self.relations:
      if r.family != family:
        continue
      order = rng.permutation(len(self.people))
      for j, p_idx in enumerate(order):
        p = self.people[int(p_idx)]
        out[SPLITS[j % 3]].append(_Item(family, (p, r.name), f'{p}|{r.name}'))
    return {s: tuple(v[int(i)] for i in self._rng('qa_order', family, s).permutation(len(v)))
            for s, v in out.items()}

  @functools.cache
  def _random_splits(self, family: str) -> dict[str, tuple[_Item, ...]]:
    c = self.config
    sizes = {'validation': c.eval_size, 'test': c.eval_size,
             'train': c.finetune_train_size if family in FINETUNE_FAMILIES else c.demo_pool_size}
    seen: set[str] = set()
    out = {}
    # Evaluation splits claim items first; the fine-tuning families' extra test
    # items come last (after train), so train and the first eval_size test items
    # stay what they were for the base model's pretraining. The extra items skip
    # any item the committed base model's pretraining stream drew
    # (`PRETRAINING_DRAWN`, found by `promot_t5x_tasks.synthetic.check_held_out`).
    extra = max(0, c.finetune_test_size - c.eval_size) if family in FINETUNE_FAMILIES else 0
    for split, size, salt, skip in (('test', c.eval_size, 'test', ()),
                                    ('validation', c.eval_size, 'validation', ()),
                                    ('train', sizes['train'], 'train', ()),
                                    ('test', extra, 'test_extra', pretraining_drawn(family))):
      rng = self._rng('split', family, salt)
      items = []
      tries = 0
      while len(items) < size:
        tries += 1
        if tries > 50 * size:
          raise RuntimeError(f'Could not draw {size} distinct {family} items.')
        item = self._sample_item(family, rng, split_item=True)
        if item.key in seen or item.key in skip:
          continue
        seen.add(item.key)
        items.append(item)
      out[split] = out.get(split, ()) + tuple(items)
    return out

  @functools.cached_property
  def held_out_keys(self) -> frozenset[str]:
    """Keys of every validation/test item: pretraining never uses them as a query."""
    keys = set()
    for f in ALL_FAMILIES:
      for s in ('validation', 'test'):
        keys.update(i.key for i in self.items(f, s))
    return frozenset(keys)

  def as_pretrained(self) -> World:
    """This world as its base model was pretrained and its vocabulary trained.

    The same world with test splits of eval_size items, before
    `finetune_test_size` enlarged the fine-tuning families' (the vocabulary's
    corpus holds every split's text, so it is built from this world).
    """
    if self.config.finetune_test_size <= self.config.eval_size:
      return self
    return get_world(dataclasses.replace(self.config, finetune_test_size=self.config.eval_size))

  # -- tasks ------------------------------------------------------------------------
  def examples(self, family: str, split: str) -> list[Example]:
    """The 0-shot examples of a family's split, rendered in the canonical convention.

    (k-shot tasks add train demonstrations with `promot_t5x_tasks.fewshot`.)
    """
    conv = self.canonical_convention(family)
    return [self.render(item, conv) for item in self.items(family, split)]

  # -- pretraining --------------------------------------------------------------------
  def documents(self, rng: np.random.Generator, num_facts: int | None = None
                ) -> tuple[list[str], list[tuple[int, int]]]:
    """A world document as words, and the (start, end) word spans of its fact values.

    Mostly one person's facts (all six, or `num_facts` of them) in random order
    and paraphrase; sometimes a topic document (cue words of word-sense topics).
    """
    words: list[str] = []
    salient: list[tuple[int, int]] = []
    if rng.random() < 0.15:
      for _ in range(3):
        t = sorted(TOPICS)[int(rng.integers(len(TOPICS)))]
        a, b, c = (TOPICS[t][int(i)] for i in rng.choice(6, size=3, replace=False))
        pat = TOPIC_DOC_PATTERNS[int(rng.integers(len(TOPIC_DOC_PATTERNS)))]
        sentence = pat.format(t=t, a=a, b=b, c=c).split(' ')
        words += sentence
      return words, salient
    p = self._draw(rng, self.people, self.rare_people, skewed=True)
    for i in rng.permutation(len(self.relations))[:num_facts]:
      r = self.relations[int(i)]
      pat = r.statements[int(rng.integers(len(r.statements)))]
      v = self.facts[p][r.name]
      before, after = pat.split('{v}')
      pre = before.format(e=p).split()
      start = len(words) + len(pre)
      # The value keeps its trailing punctuation, so a masked value is one span.
      sentence = (before.format(e=p) + v + after.format(e=p)).split(' ')
      salient.append((start, start + len(v.split(' '))))
      words += sentence
    return words, salient

  def span_corruption(self, rng: np.random.Generator, words: list[str],
                      salient: list[tuple[int, int]], reconstruct: bool = False) -> Example:
    """T5-style span corruption at the word level, with sentinel strings.

    With probability `salient_span_rate` (and when the document has facts), the
    masked spans are 2-4 fact values; otherwise random spans covering
    `noise_density` of the words with mean length `mean_span_length`. The target
    is the masked spans after their sentinels `<extra_id_0>`, `<extra_id_1>`, ...
    (T5), or with `reconstruct` the whole document, every span masked by
    `<extra_id_99>` (BART-style), which teaches the decoder to copy from the
    encoder as well as to recall.
    """
    c = self.config
    n = len(words)
    mask = np.zeros(n, bool)
    if salient and rng.random() < c.salient_span_rate:
      k = int(rng.integers(2, 5))
      for j in rng.choice(len(salient), size=min(k, len(salient)), replace=False):
        s, e = salient[int(j)]
        mask[s:e] = True
    else:
      num_noise = max(1, int(round(n * c.noise_density)))
      num_spans = max(1, int(round(num_noise / c.mean_span_length)))
      # Random span lengths summing to num_noise, placed at random non-touching starts.
      lengths = np.ones(num_spans, int)
      for _ in range(num_noise - num_spans):
        lengths[int(rng.integers(num_spans))] += 1
      starts = np.sort(rng.choice(n, size=num_spans, replace=False))
      for s, l in zip(starts, lengths):
        mask[s:s + l] = True
    inputs, targets, sid = [], [], 0
    i = 0
    while i < n:
      if mask[i]:
        # Reconstruction marks every span with the last sentinel (BART's single mask
        # token), so the model can tell the two objectives apart.
        token = RECONSTRUCT_MASK if reconstruct else SENTINEL_FORMAT.format(sid)
        inputs.append(token)
        targets.append(token)
        while i < n and mask[i]:
          targets.append(words[i])
          i += 1
        sid += 1
      else:
        inputs.append(words[i])
        i += 1
    return Example(' '.join(inputs), ' '.join(words if reconstruct else targets), '')

  def document_example(self, rng: np.random.Generator,
                       convert: Callable[[str], str] | None = None) -> Example:
    """A span-corruption example of a world document (words mapped by `convert`).

    A `reconstruct_rate` share are short (three facts) and reconstruct the whole
    document; the rest are T5 span corruption of a full document.
    """
    reconstruct = rng.random() < self.config.reconstruct_rate
    words, salient = self.documents(rng, num_facts=3 if reconstruct else None)
    if convert is not None:
      # The conversions map space-separated words one to one, so spans stay aligned.
      words = [convert(w) for w in words]
    return self.span_corruption(rng, words, salient, reconstruct)

  def episode(self, family: str, rng: np.random.Generator,
              convention: int | None = None, num_shots: int | None = None,
              drawn: set[str] | None = None) -> Example | None:
    """A pretraining episode: 0-4 demonstrations and a query sharing one convention.

    `family` may be an evaluation family or a pretraining-only translation
    direction ('deen', 'roen', 'fren'). Queries and demonstrations come from
    train items (QA) or fresh random items that are not held out.
    """
    c = self.config
    if num_shots is None:
      num_shots = int(rng.choice(len(c.shot_probs), p=c.shot_probs))
    src = tgt = None
    base = family
    if family in _REVERSE_DIRECTIONS:
      base, src, tgt = _REVERSE_DIRECTIONS[family]
    elif family in SKILL_FORMS:
      base = SKILL_FORMS[family]
    if convention is None:
      convention = int(rng.integers(self.num_conventions(family if family in SKILL_FORMS
                                                         else base)))
    items = []
    if base in QA_FAMILIES:
      pool = self.items(base, 'train')
      items = [pool[int(j)] for j in rng.choice(len(pool), size=num_shots + 1, replace=False)]
    else:
      keys = set()
      while len(items) < num_shots + 1:
        item = self._sample_item(base, rng)
        if item.key in self.held_out_keys or item.key in keys:
          continue
        keys.add(item.key)
        items.append(item)
    if drawn is not None:  # only the keys of the items drawn (check_held_out)
      drawn.update(it.key for it in items)
      return None
    if family in SKILL_FORMS:
      rendered = [self.render_skill(it, family, convention) for it in items]
    else:
      rendered = [self.render(it, convention, source=src, target=tgt) for it in items]
    demos = [(r.inputs, r.targets) for r in rendered[:-1]]
    q = rendered[-1]
    # Long episodes (4 word-sense demonstrations) lose their oldest demonstrations.
    while demos and (len(q.inputs.split()) + sum(len(f'{i} {t}'.split()) for i, t in demos)
                     > c.max_episode_words):
      demos = demos[1:]
    return Example(templates.with_demonstrations(q.inputs, demos), q.targets, q.inputs)

  def frenka_document_example(self, rng: np.random.Generator) -> Example:
    """Span corruption of a monolingual Frenka document (3-5 sentences, one register)."""
    register = REGISTERS[int(rng.integers(len(REGISTERS)))]
    words: list[str] = []
    for _ in range(int(rng.integers(3, 6))):
      words += self.translate_sentence(self._sample_parse(rng), FRENKA, register).split(' ')
    return self.span_corruption(rng, words, [])

  @property
  def pretrain_rates(self) -> dict[str, float]:
    """The pretraining components of this world and their mixing rates."""
    if self.config in PRETRAIN_RATES_OF_WORLD:
      return PRETRAIN_RATES_OF_WORLD[self.config]
    return PRETRAIN_RATES_V2 if self.config.latent_skills else PRETRAIN_RATES

  @property
  def pretrain_components(self) -> tuple[str, ...]:
    """Every pretraining component of this world (the second adds `inference`)."""
    extra = ('inference', 'inference_short') if self.config.latent_skills else ()
    return tuple(dict.fromkeys(tuple(self.pretrain_rates) + extra))

  def pretraining_example(self, component: str, index: int, split: str = 'train',
                          drawn: set[str] | None = None) -> Example | None:
    """Example `index` of a pretraining component (a pure function of its arguments).

    documents: span corruption of an English world document.
    episodes:  a 0-4-shot episode of an evaluation family (or a reverse translation
               direction), under a random convention.
    lumic / cipher: the same two kinds (30% documents) rendered entirely in Lumic
               or in the vowel cipher (the conjugate forms the transforms use).
    skills (second world only): the fine-tuning tasks' skills in other formats:
               yes/no-question inference episodes, English-to-Frenka episodes in
               another wording, monolingual Frenka documents (`SKILL_RATES`).
    inference (second world only): yes/no-question inference episodes alone (the
               second pretraining phase's extra share, `PRETRAIN_RATES_V2_PHASE2`).
    inference_short (second world only): the same with 0 or 1 demonstrations (short
               inputs: the third phase's share, `PRETRAIN_RATES_V2_PHASE3`).

    `drawn`: only collect the keys of the task items the example's episode
    draws (None is returned; documents draw none), as
    `promot_t5x_tasks.synthetic.check_held_out` does.
    """
    if component not in self.pretrain_components:
      raise ValueError(f'Unknown pretraining component {component!r}; use one of '
                       f'{self.pretrain_components}.')
    rng = self._rng('pretrain', component, split, index)
    if component == 'documents':
      return None if drawn is not None else self.document_example(rng)
    if component == 'episodes':
      weights = PRETRAIN_EPISODE_WEIGHTS_V2 if self.config.latent_skills else PRETRAIN_EPISODE_WEIGHTS
      fams = list(weights)
      w = np.array([weights[f] for f in fams])
      return self.episode(fams[int(rng.choice(len(fams), p=w / w.sum()))], rng, drawn=drawn)
    if component == 'inference':
      return self.episode('rte_yn', rng, drawn=drawn)
    if component == 'inference_short':
      return self.episode('rte_yn', rng, num_shots=int(rng.integers(2)), drawn=drawn)
    if component == 'skills':
      kinds = list(SKILL_RATES)
      w = np.array([SKILL_RATES[k] for k in kinds])
      kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
      if kind == 'frenka_documents':
        return None if drawn is not None else self.frenka_document_example(rng)
      return self.episode(kind, rng, drawn=drawn)
    convert = self.to_lumic if component == 'lumic' else self.to_cipher
    if rng.random() < CONJUGATE_DOCUMENT_RATE:
      return None if drawn is not None else self.document_example(rng, convert)
    fams = CONJUGATE_FAMILIES[component]
    ex = self.episode(fams[int(rng.integers(len(fams)))], rng, drawn=drawn)
    if ex is None:
      return None
    return Example(convert(ex.inputs), convert(ex.targets), convert(ex.query))


# Pretraining-only translation directions (into English; Frenka only ever as source).
_REVERSE_DIRECTIONS = {'deen': ('ende', DEUNA, ENGLISH), 'roen': ('enro', ROMALI, ENGLISH),
                       'fren': ('enfr', FRENKA, ENGLISH)}
# Relative weights of the families of pretraining episodes.
PRETRAIN_EPISODE_WEIGHTS = {**{f: 1.0 for f in EVAL_FAMILIES},
                            **{f: 0.4 for f in _REVERSE_DIRECTIONS}}
# The second world (`latent_skills`): three-way inference twice as frequent, and a
# `skills` component (its parts' shares in `SKILL_RATES`).
PRETRAIN_EPISODE_WEIGHTS_V2 = {**PRETRAIN_EPISODE_WEIGHTS, 'cb': 2.0}
# Latent-skill forms: the episode family they render, and what they render it as.
SKILL_FORMS = {'rte_yn': 'rte', 'enfr_alt': 'enfr'}
SKILL_RATES = {'rte_yn': 0.45, 'enfr_alt': 0.35, 'frenka_documents': 0.2}
# Families whose conjugate (Lumic / cipher) forms appear in pretraining.
CONJUGATE_FAMILIES = {'lumic': EVAL_FAMILIES, 'cipher': EVAL_FAMILIES}
# The pretraining components (one seqio task each) and their mixing rates.
PRETRAIN_COMPONENTS = ('documents', 'episodes', 'lumic', 'cipher')
PRETRAIN_RATES = {'documents': 0.35, 'episodes': 0.5, 'lumic': 0.1, 'cipher': 0.05}
PRETRAIN_RATES_V2 = {'documents': 0.3, 'episodes': 0.4, 'skills': 0.2, 'lumic': 0.06,
                     'cipher': 0.04}
# The second world's second pretraining phase: a third of the examples are yes/no
# inference episodes (after phase 1 the model answered them with a constant label).
PRETRAIN_RATES_V2_PHASE2 = {'documents': 0.2, 'episodes': 0.27, 'skills': 0.15, 'inference': 0.33,
                            'lumic': 0.03, 'cipher': 0.02}
# The third phase: half the examples short (0- or 1-shot) yes/no inference
# episodes, trained with per-sequence loss averaging. After phase 2 the model still
# answered every question with one label; with per-token averaging a 2-token answer
# carried ~5 % of the gradient, and a third phase of 0-4-shot episodes (inputs up to
# ~190 tokens) at half the examples left it at one label for 2,000 steps.
PRETRAIN_RATES_V2_PHASE3 = {'documents': 0.12, 'episodes': 0.18, 'skills': 0.06, 'inference': 0.1,
                            'inference_short': 0.5, 'lumic': 0.02, 'cipher': 0.02}
# The fourth phase: three quarters short yes/no episodes. Trained from scratch with a
# decaying rate, the 0-shot question passes 75 % only after about 60,000 examples
# (bench/inference_format.py); phase 3 with a decaying rate gave 24,000 and left
# the model answering "no" to every question.
PRETRAIN_RATES_V2_PHASE4 = {'documents': 0.06, 'episodes': 0.1, 'skills': 0.04, 'inference': 0.03,
                            'inference_short': 0.75, 'lumic': 0.01, 'cipher': 0.01}
# Within a conjugate component, the fraction of documents (the rest are episodes).
CONJUGATE_DOCUMENT_RATE = 0.3

_CIPHER = str.maketrans('aeiouAEIOU', 'eiouaEIOUA')
_DECIPHER = str.maketrans('eiouaEIOUA', 'aeiouAEIOU')


def vowel_cipher(text: str) -> str:
  """Rotates the vowels (a->e->i->o->u->a, case kept): a bijection on strings."""
  return text.translate(_CIPHER)


def vowel_decipher(text: str) -> str:
  """Inverse of `vowel_cipher`."""
  return text.translate(_DECIPHER)


def negate(statement: str) -> str:
  """`NEGATION` of a fact statement ('The home of X ...' -> 'It is not true that the home ...')."""
  return NEGATION.format(statement=_lower_article(statement))


def _lower_article(sentence: str) -> str:
  """A sentence that follows other words ('The home of X ...' -> 'the home of X ...')."""
  return 't' + sentence[1:] if sentence.startswith('The ') else sentence


def _english_text_sources(latent_skills: bool = False) -> list[str]:
  """Words of every English string the world renders outside translation sentences."""
  texts = [templates.binary_inference('', ''), templates.three_way_inference('', ''),
           templates.word_in_context('', '', ''), templates.question_answering(''),
           templates.translation('', '', ''), templates.summarization(''),
           'the answer is']
  for r in _RELATIONS:
    texts += list(r.statements) + [r.question]
  texts += list(JOBS + FOODS + PETS + COLORS + SPORTS + POLYSEMOUS + DISHES + INGREDIENTS)
  texts += list(WIC_PATTERNS + TOPIC_DOC_PATTERNS + HOWTO_PATTERNS + NEWS_EVENTS)
  for t, cues in TOPICS.items():
    texts += [t, *cues]
  for labels in BINARY_LABEL_SETS + THREE_WAY_LABEL_SETS:
    texts += list(labels)
  if latent_skills:  # (language names are names, not English words)
    texts += [YES_NO_INFERENCE.format(premise='', hypothesis=''), NEGATION.format(statement='')]
  out = []
  for t in texts:
    out += [w for w in words_of(t.replace('{e}', '').replace('{v}', '').replace('{n}', '')
                                .replace('{w}', '').replace('{c}', '').replace('{t}', '')
                                .replace('{a}', '').replace('{b}', '').replace('{i}', '')
                                .replace('{j}', '').replace('{d}', ''))]
  return out


def _map_words(text: str, mapping: dict[str, str]) -> str:
  """Replaces each alphabetic word found (lower-cased) in `mapping`, keeping capitalization.

  Words are maximal runs of letters; everything else (spaces, punctuation,
  sentinels' brackets) is kept as is. A capitalized word maps to its capitalized
  image, so the map is invertible when `mapping` is a bijection whose images do
  not collide with unmapped words.
  """
  def sub(m: re.Match) -> str:
    w = m.group(0)
    low = w.lower()
    if low not in mapping:
      return w
    out = mapping[low]
    if w[0].isupper():
      out = out[0].upper() + out[1:]
    return out
  return re.sub(r'[A-Za-z]+', sub, text)


# The second world: the fine-tuning skills latent in pretraining, negation held out
# for fine-tuning, 144 people (144 test questions per QA analogue) and 256
# validation/test items per other family.
WORLD_V2 = WorldConfig(latent_skills=True, negation_rate=0.2, num_people=144, eval_size=256)
# The third world: the second's design, drawn anew (seed 3: other people, facts,
# lexicons and items), with a third of the people and of the Deuna / Romali words
# mentioned rarely in pretraining (`rare_share`), so that the QA and En-De / En-Ro
# analogues have headroom. Its base model continues the second's
# (gin/miniature/pretrain_v3.gin): the skills carry over, the world's facts and
# words are learned anew.
WORLD_V3 = dataclasses.replace(WORLD_V2, seed=3, rare_share=0.3, rare_weight=0.01)
# The third world's pretraining mixture: the second world's first-phase rates with a
# fifth of the examples short yes/no inference episodes (the skill the second world's
# later phases taught, kept while the new world is learned).
PRETRAIN_RATES_V3 = {'documents': 0.3, 'episodes': 0.3, 'skills': 0.12, 'inference_short': 0.2,
                     'lumic': 0.05, 'cipher': 0.03}
# Worlds whose pretraining mixture is not their kind's default (`World.pretrain_rates`).
PRETRAIN_RATES_OF_WORLD = {WORLD_V3: PRETRAIN_RATES_V3}


PRETRAINING_DRAWN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                                      'pretraining_drawn.json')


@functools.cache
def pretraining_drawn(family: str) -> frozenset[str]:
  """Candidate extra test items of `family` that the base model's pretraining drew.

  Written by `python -m promot_t5x_tasks.synthetic.check_held_out --write`
  (`PRETRAINING_DRAWN_FILE`); the extra test items skip them.
  """
  if not os.path.exists(PRETRAINING_DRAWN_FILE):
    return frozenset()
  with open(PRETRAINING_DRAWN_FILE) as f:
    return frozenset(json.load(f).get('drawn', {}).get(family, ()))


@functools.lru_cache(maxsize=8)
def get_world(config: WorldConfig | None = None) -> World:
  """The (cached) world of a config; `get_world()` is the default world."""
  return World(config or WorldConfig())
