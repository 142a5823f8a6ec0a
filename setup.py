from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "slime_entropy" / "_version.py").read_text(), version)

# megatron-core's dist-checkpointing uses psutil without declaring it (saves hang without it).
MEGATRON = ["megatron-core>=0.13", "psutil", "safetensors"]
# The rollout side: the built-in engine (FastAPI/uvicorn serving a transformers model), the HTTP client, grading.
ROLLOUT = [
    "transformers>=4.51",
    "tokenizers",
    "safetensors",
    "fastapi",
    "uvicorn[standard]",
    "aiohttp",
    "orjson>=3.8",
    "math-verify[antlr4_13_2]>=0.7",
    "tqdm",
]
# train.py: Ray actors and placement groups, matplotlib plots, Weights & Biases logging (--use-wandb).
TRAINER = ["ray>=2.10", "matplotlib", "wandb"]

setup(
    name="slime-entropy",
    version=version["__version__"],
    description="High-entropy ('forking') token filtering for RLVR as a drop-in loss for the slime trainer",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["slime_entropy", "slime_entropy.*"]),
    python_requires=">=3.10",
    # torch is deliberately unpinned here: pin it through constraints-cpu.txt on CPU machines, and bring your
    # own CUDA build on GPU machines.
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "megatron": MEGATRON,
        "rollout": ROLLOUT,
        "trainer": MEGATRON + ROLLOUT + TRAINER,
        "parquet": ["pyarrow"],
        # slime-entropy-analyze / -ablation figures (the HTML report itself needs nothing beyond the core).
        "analysis": ["matplotlib"],
        # CPU machines: the real stack minus the CUDA-only parts.
        "cpu": MEGATRON + ROLLOUT + TRAINER,
        # GPU clusters: add CUDA torch yourself (and SGLang for rollouts); transformer-engine needs a CUDA toolkit.
        "gpu": MEGATRON + ROLLOUT + TRAINER + ["triton", "transformer-engine[pytorch]"],
        "test": MEGATRON + ROLLOUT + TRAINER + ["pyarrow", "pytest>=8", "pytest-timeout", "hypothesis", "httpx"],
    },
    entry_points={
        "console_scripts": [
            "slime-entropy-convert = slime_entropy.megatron.convert:main",
            "slime-entropy-analyze = slime_entropy.analysis.cli:main",
            "slime-entropy-eval = slime_entropy.evaluation.cli:main",
            "slime-entropy-ablation = slime_entropy.analysis.ablation:main",
            # slime's own train.py / train_async.py with our flags: slime-entropy-slime train.py [flags]
            "slime-entropy-slime = slime_entropy.slime.__main__:main",
        ],
    },
)
