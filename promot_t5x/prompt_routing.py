"""Which soft prompt an example runs with: decided here, for training, data and evaluation.

Every example of one task runs with the same prompt, or with none: the plain
model, whose batches carry no `prompt_index` feature (the prompt removed, not
zeroed). What a caller asks for a task (a *request*):

  * a prompt name: that prompt; the model must have it;
  * None: no prompt;
  * `AUTO`: the model's prompt if it has one (and its parameters are there):
    the one named like the task, else its only prompt. Evaluation's default
    for the fine-tuned task.

`choose` is that decision. A training run asks through its stage
(`training_routes`: one prompt for the run, or one per task of a multi-task
mixture), the data pipeline looks each task of its mixture up
(`task_indices`), and the evaluator asks per task of a suite. The chosen name
becomes the `prompt_index` value `PromptConfig.index(name)`, which
`promot_t5x.data` attaches to the examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from promot_t5x.models import prompts
  from promot_t5x.param_sets import Stage

# A request meaning "the model's prompt if it has one" (see the module docstring).
AUTO = 'auto'


def choose(request: str | None, prompt_config: prompts.PromptConfig | None, *,
           task_names: Sequence[str] = (), has_params: bool = True,
           no_prompt_error: str = 'The model has no soft prompt.') -> str | None:
  """The prompt an example runs with (its name), or None: the plain model.

  Args:
    request: a prompt name, None, or `AUTO`.
    prompt_config: the model's prompts (None: it has none).
    task_names: the names the example's task goes by, most specific first
      (a display name, then the registered name); `AUTO` picks the first that
      is a prompt's name.
    has_params: whether the parameters hold the prompts (a checkpoint without
      them runs the plain model under `AUTO`).
    no_prompt_error: the error's message when a named prompt is asked of a
      model without prompts.

  Returns:
    The prompt's name, or None.

  Raises:
    ValueError: a named prompt the model does not have, or `AUTO` on a model
      with several prompts none of which is named like the task.
  """
  if request == AUTO:
    if prompt_config is None or not has_params:
      return None
    for candidate in task_names:
      if candidate in prompt_config.names:
        return candidate
    if len(prompt_config.names) == 1:
      return prompt_config.names[0]
    task = task_names[-1] if task_names else None
    raise ValueError(f'Which of the prompts {list(prompt_config.names)} should {task!r} run with? '
                     'None is named like the task; give the prompt per task (e.g. '
                     "TrainingEvaluator.target_prompt = {'task_name': 'prompt_name'}).")
  if request is None:
    return None
  if prompt_config is None or not has_params:
    raise ValueError(no_prompt_error)
  prompt_config.index(request)  # raises, naming the model's prompts
  return request


def training_routes(stage: Stage, prompt_config: prompts.PromptConfig | None,
                    prompt_for_task: Mapping[str, str] | None
                    ) -> tuple[int | None, dict[str, int] | None]:
  """The `prompt_index` of a training run's examples.

  A stage that does not train through a prompt runs the plain model. One that
  does runs `prompt_for_task[task]` for each task of a multi-task mixture
  when given, else the stage's `prompt_name`, else the model's first prompt.

  Args:
    stage: the run's `param_sets.Stage` (`use_prompt`, `prompt_name`).
    prompt_config: the model's prompts (None: it has none).
    prompt_for_task: {task name: prompt name} (multi-task ProMoT), or None.

  Returns:
    (one index for every example, or None; {task name: index}, or None): at
    most one of the two is set, both None for the plain model.

  Raises:
    ValueError: prompts asked of a stage without one or of a model without
      any, or a prompt the model does not have.
  """
  if not stage.use_prompt:
    if prompt_for_task:
      raise ValueError(f'prompt_for_task is set but stage {stage.name!r} does not use a prompt.')
    return None, None
  no_prompt = (f'Stage {stage.name!r} trains through a soft prompt but the model has none: '
               'add a prompt to the model (T5Config.prompt = @prompts.PromptConfig(), '
               'PROMPT_LENGTH), as gin/runs/prompt_tuning.gin does.')
  if prompt_config is None:
    raise ValueError(no_prompt)
  if prompt_for_task:
    return None, {task: prompt_config.index(choose(name, prompt_config, task_names=(task,),
                                                   no_prompt_error=no_prompt))
                  for task, name in prompt_for_task.items()}
  name = choose(stage.prompt_name or prompt_config.names[0], prompt_config,
                no_prompt_error=no_prompt)
  return prompt_config.index(name), None


def task_indices(tasks: Sequence[str], prompt_for_task: Mapping[str, int], source: str
                 ) -> list[int]:
  """Each task's `prompt_index` from `training_routes`' {task: index}; every task needs one.

  Raises:
    ValueError: naming the tasks of `source` (the mixture) without a prompt.
  """
  missing = [t for t in tasks if t not in prompt_for_task]
  if missing:
    raise ValueError(f'Tasks {missing} of {source!r} have no prompt; '
                     f'prompt_for_task names {sorted(prompt_for_task)}.')
  return [prompt_for_task[t] for t in tasks]
