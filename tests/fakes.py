"""Stand-ins for what a test cannot or should not reach: fakes of huggingface_hub.HfApi whose every call is bound to
the real method's signature (SignatureCheckedHfApi, FakeHfApi, RecordingHfApi, check_hf_api_call), a spy on what
transformers.Trainer trains (install_trainer_spy), a process that sees no GPU (hide_gpus), and, for scripts run as
subprocesses, an offline CPU-only environment (subprocess_env) and a free local port (free_port). torch and the
Hugging Face libraries are imported inside the functions, so that importing this module imports none of them.
"""

import functools
import inspect
import os
import socket
from types import SimpleNamespace

from repo_paths import REPO_ROOT

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    """The environment of a script run as a subprocess: offline, on the CPU, one thread per process."""
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO_ROOT,
    }  # fmt: skip


def hide_gpus(monkeypatch) -> None:
    """This process sees no GPU, as on a CPU-only machine: torch.cuda.is_available and torch.accelerator.is_available
    (what squad_lora, the scripts and benchmarks/ ask) both say False, so that a test of CPU-only behaviour asserts
    it on a machine with a GPU too. Scripts run as subprocesses: subprocess_env."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


# ---------------------------------------------------------------------------
# Spies and fakes
# ---------------------------------------------------------------------------


def install_trainer_spy(monkeypatch) -> SimpleNamespace:
    """Record every Trainer that trains, and the global step at each training step (whatever subclass runs)."""
    import transformers

    spy = SimpleNamespace(trainers=[], steps=[])
    train, training_step = transformers.Trainer.train, transformers.Trainer.training_step

    def recording_train(self, *args, **kwargs):
        spy.trainers.append(self)
        return train(self, *args, **kwargs)

    def counting_training_step(self, *args, **kwargs):
        spy.steps.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", recording_train)
    monkeypatch.setattr(transformers.Trainer, "training_step", counting_training_step)
    return spy


def check_hf_api_call(name: str, args=(), kwargs=None) -> None:
    """Bind a call of HfApi.<name> (`__init__`: the constructor) to huggingface_hub's own signature: an argument it
    does not take (renamed there, misspelled here) or a missing required one raises TypeError, as the real call
    would."""
    from huggingface_hub import HfApi

    inspect.signature(getattr(HfApi, name)).bind(None, *args, **(kwargs or {}))


class SignatureCheckedHfApi:
    """Base of the HfApi fakes: every call of a method HfApi has (one a subclass defines or a test patches in, and
    the constructor) is checked by check_hf_api_call before the fake answers, so fakes may take **kwargs freely."""

    def __init__(self, *args, **kwargs):
        check_hf_api_call("__init__", args, kwargs)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        from huggingface_hub import HfApi

        if name.startswith("_") or not inspect.isfunction(getattr(HfApi, name, None)):
            return value

        @functools.wraps(value)
        def checked(*args, **kwargs):
            check_hf_api_call(name, args, kwargs)
            return value(*args, **kwargs)

        return checked


class FakeHfApi(SignatureCheckedHfApi):
    """Stands in for huggingface_hub.HfApi: records the calls and what an upload would send."""

    endpoint = "https://huggingface.co"
    calls: list = []

    def __init__(self, *args, **kwargs):
        assert "token" not in kwargs  # the token is huggingface_hub's business, never ours
        super().__init__(*args, **kwargs)

    def whoami(self):
        self.calls.append(("whoami", None, {}))
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        all_files = sorted(
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        )
        uploaded = list(filter_repo_objects(all_files, ignore_patterns=ignore_patterns))  # as upload_folder filters
        self.calls.append(
            ("upload_folder", repo_id, {"folder_path": folder_path, "all": all_files, "uploaded": uploaded, **kwargs})
        )


class RecordingHfApi(SignatureCheckedHfApi):
    """HfApi's calls that squad_lora.hub makes, recorded; `refuse` names the call that fails."""

    endpoint = "https://hub.example"
    calls: list = []
    refuse = None

    def _call(self, name, *args, **kwargs):
        type(self).calls.append((name, args, kwargs))
        if name == type(self).refuse:
            raise ConnectionError(f"{name}: connection refused")

    def whoami(self):
        self._call("whoami")
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        self._call("create_repo", repo_id, **kwargs)
        return f"{self.endpoint}/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self._call("create_branch", repo_id, **kwargs)

    def upload_folder(self, **kwargs):
        self._call("upload_folder", **kwargs)


class RepoHfApi(FakeHfApi):
    """FakeHfApi that also keeps what upload_folder sends as a Hub repo would hold it: the files under .repo_dir
    (path_in_repo and delete_patterns honoured) and each commit in .commits ({"message", "files": {path: bytes}});
    the first .failures uploads raise, after being recorded."""

    repo_dir = None
    commits: list = []
    failures = 0

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, delete_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        super().upload_folder(
            repo_id=repo_id, folder_path=folder_path, path_in_repo=path_in_repo, delete_patterns=delete_patterns,
            **kwargs,
        )  # fmt: skip
        if type(self).failures:
            type(self).failures -= 1
            raise ConnectionError("upload_folder: connection reset by peer")
        prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
        files = {}
        for relpath in self.calls[-1][2]["uploaded"]:
            with open(os.path.join(folder_path, relpath), "rb") as f:
                files[prefix + relpath.replace(os.sep, "/")] = f.read()
        held = [
            os.path.relpath(os.path.join(root, name), self.repo_dir).replace(os.sep, "/")
            for root, _, names in os.walk(self.repo_dir)
            for name in names
        ]
        under = [path[len(prefix) :] for path in held if path.startswith(prefix)]
        for relpath in filter_repo_objects(under, allow_patterns=delete_patterns) if delete_patterns else []:
            if prefix + relpath not in files:
                os.remove(os.path.join(self.repo_dir, prefix + relpath))
        for path, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(self.repo_dir, path)), exist_ok=True)
            with open(os.path.join(self.repo_dir, path), "wb") as f:
                f.write(data)
        type(self).commits.append({"message": kwargs.get("commit_message"), "files": files})
