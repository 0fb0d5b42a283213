"""Packaging for promot-t5x.

Import names: `promot_t5x` (the library), `promot_t5x_tasks` (the seqio
registrations in tasks/), `promot_t5x_launch` (the launchers in launch/) and
`promot_t5x_gin` (the gin files of gin/, package data only).

`install_requires` names compatible ranges, so the package installs beside
t5x or peft; requirements.lock pins the exact environment that `make run` and
`make test` install (it is passed to pip as a constraints file). Extras:

  tpu      jax for Cloud TPU (jax[tpu])
  cuda12   jax for NVIDIA GPUs with CUDA 12 (jax[cuda12])
  cpu      the optional CPU kernels' dependencies (oneMKL and TBB; x86-64 Linux
           only; see docs/cpu_kernels.md); the kernels also need g++
  test     pytest (+ xdist), torch and transformers (reference checks), ruff
  bench    test + peft (the PyTorch peer in bench/)
"""

import os

import setuptools

RUNTIME = [
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'gin-config>=0.5.0,<0.6',
    'seqio>=0.0.20,<0.1',
    # tensorflow-text needs the full tensorflow wheel (tensorflow-cpu does not satisfy it),
    # and its minor version must equal tensorflow's.
    'tensorflow>=2.21,<2.22',
    'tensorflow-text>=2.21.1,<2.22',
    'tensorflow-datasets>=4.9.10,<5',
    'sentencepiece>=0.2.0,<0.3',
    'numpy>=2.0,<3',
    'clu>=0.0.12,<0.1',
    'tensorboard>=2.21,<2.22',
    'rouge-score>=0.1.2,<0.2',
    'sacrebleu>=2.4,<3',
    'msgpack>=1.0,<2',
    'tensorstore>=0.1.86,<0.2',
    # gs:// run folders: orbax asks the bucket (google-cloud-storage) before it lists steps.
    'google-cloud-storage>=3.0,<4',
    'safetensors>=0.4,<1',
    'matplotlib>=3.8,<4',
]

_X86_LINUX = 'platform_system == "Linux" and platform_machine == "x86_64"'
EXTRAS = {
    'tpu': ['jax[tpu]>=0.10.2,<0.11'],
    'cuda12': ['jax[cuda12]>=0.10.2,<0.11'],
    # promot_t5x.contrib.cpu_kernels: oneMKL for the dense products, TBB for MKL's threads.
    'cpu': [f'mkl>=2025.0; {_X86_LINUX}', f'tbb>=2022.0; {_X86_LINUX}'],
    'test': [
        'pytest>=8,<10',
        'pytest-xdist>=3.6,<4',  # make test runs the suite on every core
        # Reference checks against Hugging Face (the CPU wheel of torch is enough).
        'torch>=2.5',
        'transformers>=4.50',
        'ruff>=0.15',  # make lint
    ],
}
EXTRAS['bench'] = EXTRAS['test'] + ['peft>=0.15']

# gin/'s folders (eval/, models/, ...), named as data-only subpackages so that setuptools
# ships their .gin files without warning that it would ignore them.
_GIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gin')
GIN_SUBPACKAGES = sorted('promot_t5x_gin.' + os.path.relpath(d, _GIN).replace(os.sep, '.')
                         for d, _, files in os.walk(_GIN)
                         if d != _GIN and any(f.endswith('.gin') for f in files))

setuptools.setup(
    name='promot-t5x',
    version='0.1.0',
    description='ProMoT (prompt tuning with model tuning) as a T5X-style JAX pipeline.',
    python_requires='>=3.11,<3.12',
    packages=setuptools.find_packages(include=['promot_t5x', 'promot_t5x.*'])
    + ['promot_t5x_tasks', 'promot_t5x_tasks.synthetic', 'promot_t5x_launch', 'promot_t5x_gin']
    + GIN_SUBPACKAGES,
    package_dir={
        'promot_t5x_tasks': 'tasks',
        'promot_t5x_tasks.synthetic': 'tasks/synthetic',
        'promot_t5x_launch': 'launch',
        'promot_t5x_gin': 'gin',
    },
    package_data={
        'promot_t5x.contrib.cpu_kernels': ['native/*.cc'],  # built only when the option is chosen
        'promot_t5x_tasks': ['data/*', 'data/**/*'],
        'promot_t5x_tasks.synthetic': ['data/*', 'data/**/*'],
        # gin/ has no __init__.py (a package named `gin` would shadow gin-config); the files
        # travel as package data and promot_t5x.gin_utils finds them (checkout first).
        'promot_t5x_gin': ['*.gin'],
        **{name: ['*.gin'] for name in GIN_SUBPACKAGES},
    },
    include_package_data=True,
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={
        'console_scripts': [
            'promot-train=promot_t5x.train:console_entry_point',
            'promot-eval=promot_t5x.eval:console_entry_point',
            'promot-inspect=promot_t5x.inspect_model:console_entry_point',
            'promot-convert=promot_t5x.convert:console_entry_point',
            'promot-miniature=promot_t5x.miniature:console_entry_point',
            'promot-memory-plan=promot_t5x.memory_plan:console_entry_point',
            'promot-experiment=promot_t5x.experiment:console_entry_point',
            'promot-conjugate-synthetic=promot_t5x.conjugate_synthetic:console_entry_point',
        ],
    },
)
