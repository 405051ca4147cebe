"""The repository's paths that tests use: its root, the sample SQuAD files in data/sample, configs/tiny-gpt2 (the tiny
GPT-2 and its tokenizer) and configs/smoke.yaml. Test files, conftest.py and the other helper modules of tests/
(builders, fakes, run_outputs, squad_reference) import them from here; tests/ is on sys.path as the folder of the
rootdir's conftest.py, so `from repo_paths import DEV_FILE` works from any test file.
"""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAMPLE_DIR = os.path.join(REPO_ROOT, "data", "sample")
TINY_GPT2_DIR = os.path.join(REPO_ROOT, "configs", "tiny-gpt2")
TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")  # 220 questions, contexts of 6 and 5 in turn
DEV_FILE = os.path.join(SAMPLE_DIR, "dev-v1.1.json")  # 44 questions
DEV_V2_FILE = os.path.join(SAMPLE_DIR, "dev-v2.0.json")  # 60 questions, 16 of them unanswerable
SMOKE_CONFIG = os.path.join(REPO_ROOT, "configs", "smoke.yaml")
