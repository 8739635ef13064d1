"""jepa_ecg: ECG-JEPA self-supervised pre-training of ViTs on 12-lead ECGs in JAX/Flax."""

from setuptools import find_namespace_packages, setup

CORE = [
    # The train step's speed was measured and tuned on these (XLA:CPU's dot
    # emitter and its layout passes change between jax minor releases).
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax>=0.12,<0.13',
    'optax>=0.2.3',
    'orbax-checkpoint>=0.9',
    'grain>=0.2.18',  # the input pipeline (MapDataset, mix, batch_fn, worker processes)
    'numpy>=1.26',
    'scipy>=1.11',
    'pandas>=2.0',
    'wfdb>=4.1',
    'h5py>=3.9',
    'tensorflow-cpu>=2.16; platform_machine == "x86_64"',
    'tensorflow>=2.16; platform_machine != "x86_64"',
    'tensorflow-datasets>=4.9.6',
    'absl-py>=2.0',
    'ml_collections>=0.1.1',
    'tensorboardX>=2.6',
    'matplotlib>=3.8',
    'tqdm>=4.66',
    'psutil>=5.9',
    'etils[epath]',
    'importlib_resources',  # TFDS builds need it and do not declare it
]

setup(
    name='jepa_ecg',
    version='0.1.0',
    description=__doc__,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    license_files=['LICENSE'],
    python_requires='>=3.10',
    # Namespace discovery also lists the builders' dummy_data folders (files
    # only, no __init__.py), so their test records ship as package data of
    # a listed package rather than of a folder setuptools does not know.
    packages=find_namespace_packages(
        include=['jepa_ecg', 'jepa_ecg.*', 'tfds_builders', 'tfds_builders.*'],
        exclude=['*.__pycache__']),
    package_data={'tfds_builders': ['*/*.txt', '*/*.bib', '*/*.md',
                                    '*/dummy_data/**/*']},
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        'test': ['pytest>=7', 'pytest-xdist>=3', 'scikit-learn>=1.3', 'dill',
                 'nbformat>=5.9', 'nbclient>=0.10', 'ipykernel>=6.29'],
        'tpu': ['jax[tpu]'],
        'cuda': ['jax[cuda12]'],
        # Importing official checkpoints; the side-by-side comparison with
        # the official code (experiments/compare_official.py) also reads its
        # YAML configs.
        'torch': ['torch>=2.1', 'pyyaml'],
    },
    entry_points={'console_scripts': ['jepa-ecg=jepa_ecg.cli:main']},
)
