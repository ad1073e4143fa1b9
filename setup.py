from setuptools import find_packages, setup

setup(
    name="mindpeft",
    version="0.1.0",
    description="Parameter-Efficient Fine-Tuning for MindSpore, API- and file-compatible with Hugging Face peft",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mindpeft", "mindpeft.*"]),
    python_requires=">=3.9",
    install_requires=[
        "mindspore==2.10.0",
        "numpy==1.26.4",
        "safetensors==0.8.0",
        "tokenizers==0.23.3",
        "tqdm==4.70.1",
        "huggingface_hub==2.4.0",
    ],
    extras_require={
        # Reference implementations the tests compare numbers against (never used at run time).
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "torch==2.13.0", "transformers==5.23.0", "peft==0.21.2",
                 "optuna==5.0.0", "tensorboardX==2.6.5", "Pillow==13.0.0", "bitsandbytes==0.50.0",
                 "matplotlib==3.11.2"],
        # AutoImageProcessor's resizing (ViT, SegFormer), as transformers' PIL backend.
        "vision": ["Pillow==13.0.0"],
        # Trainer.hyperparameter_search(backend="optuna") and TrainingArguments(report_to="tensorboard").
        "optuna": ["optuna==5.0.0"],
        "tensorboard": ["tensorboardX==2.6.5"],
        # scripts/plot_metrics.py: a Trainer run's curves as a PNG.
        "plot": ["matplotlib==3.11.2"],
        # mindpeft wraps mindnlp's Cell models where mindnlp runs; measured here, mindnlp 0.3/0.4 do not import
        # on MindSpore 2.10 and 0.5 is a torch shim, so no version is pinned and none is needed by mindpeft.
        "mindnlp": ["mindnlp"],
    },
)
