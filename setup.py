"""Packaging for promot-t5x.

Import names: `promot_t5x` (the library), `promot_t5x_tasks` (the seqio
registrations in tasks/) and `promot_t5x_launch` (the launchers in launch/).
Runtime dependencies are pinned here; requirements.lock pins the rest of the
environment and is used as a constraints file by the Makefile.
"""

import setuptools

RUNTIME = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'gin-config==0.5.0',
    'seqio==0.0.20',
    # tensorflow-text needs the full tensorflow wheel (tensorflow-cpu does not satisfy it).
    'tensorflow==2.21.0',
    'tensorflow-text==2.21.1',
    'tensorflow-datasets==4.9.10',
    'sentencepiece==0.2.3',
    'numpy==2.4.6',
    'clu==0.0.12',
    'tensorboard==2.21.0',
    'rouge-score==0.1.2',
    'sacrebleu==2.6.0',
    'msgpack==1.2.4',
    'tensorstore==0.1.86',
    'safetensors==0.8.0',
    'matplotlib==3.11.2',
    # oneMKL: the dense layers' products on CPU (promot_t5x/cpu_kernels.py).
    'mkl==2026.2.0; platform_system == "Linux" and platform_machine == "x86_64"',
    'tbb==2023.2.0; platform_system == "Linux" and platform_machine == "x86_64"',  # MKL's threads
]

TEST = [
    'pytest==9.2.0',
    # Reference checks against Hugging Face (CPU wheel of torch 2.13.0 is on disk).
    'torch==2.13.0',
    'transformers==5.23.0',
    'ruff==0.17.6',  # make lint
]

BENCH = TEST + ['peft==0.21.2']

setuptools.setup(
    name='promot-t5x',
    version='0.1.0',
    description='ProMoT (prompt tuning with model tuning) as a T5X-style JAX pipeline.',
    python_requires='>=3.11,<3.12',
    packages=setuptools.find_packages(include=['promot_t5x', 'promot_t5x.*'])
    + ['promot_t5x_tasks', 'promot_t5x_tasks.synthetic', 'promot_t5x_launch'],
    package_dir={
        'promot_t5x_tasks': 'tasks',
        'promot_t5x_tasks.synthetic': 'tasks/synthetic',
        'promot_t5x_launch': 'launch',
    },
    package_data={
        'promot_t5x': ['native/*.cc'],  # built on first use (promot_t5x/cpu_kernels.py)
        'promot_t5x_tasks': ['data/*', 'data/**/*'],
        'promot_t5x_tasks.synthetic': ['data/*', 'data/**/*'],
    },
    include_package_data=True,
    install_requires=RUNTIME,
    extras_require={'test': TEST, 'bench': BENCH},
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
