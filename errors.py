"""The project's error type: bad input from the user, reported as one clear message and exit code 1."""


class SquadLoraError(Exception):
    """Base of every error whose message is meant for the user (file, field or flag at fault + the fix)."""


class ConfigError(SquadLoraError, ValueError):
    """A config file or flag value that cannot be used; the message names the file and key."""


def run_cli(main) -> None:
    """Run a script's main(): a SquadLoraError becomes one line on stderr and exit status 1.

    Ranks started on a machine without GPUs run on CPU over gloo. Also tears down the process group that `accelerate launch` / torchrun started: gloo aborts
    the process at exit when it is left alive.
    """
    import os
    import sys

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # `accelerate launch --multi_gpu` / torchrun on a machine without GPUs: run the ranks on CPU (gloo)
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    status = 0
    try:
        main()
    except SquadLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(status)
