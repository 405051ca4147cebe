"""Push a finished run_qa_lora.py run (adapter, tokenizer, model card, summary, logs) to the Hugging Face Hub.

    python push_to_hub.py outputs/exp_r8_lr2e-4_attn --hub_model_id you/gpt2-squad-lora

The token comes from HF_TOKEN or `hf auth login`, never from a flag. The model card is rewritten with
the repo id first, so its loading snippet names the repo. Checkpoints are not uploaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from squad_lora import cli, outputs
from squad_lora.errors import ConfigError
from squad_lora.hub import build_model_card, push_to_hub

logger = logging.getLogger(__name__)


@dataclass
class PushArguments:
    run_dir: Optional[str] = field(
        default=None, metadata={"help": "A finished run_qa_lora.py output dir; also the positional argument."}
    )
    hub_model_id: Optional[str] = field(
        default=None, metadata={"help": "The Hub repo, e.g. you/gpt2-squad-lora; default the run's name."}
    )
    hub_private_repo: Optional[bool] = field(default=None, metadata={"help": "Create the repo private."})


def main(argv: list[str] | None = None) -> str:
    (args,), _, extra = cli.parse_args((PushArguments,), argv, positional=("run_dir",))
    cli.setup_logging(__name__)
    if extra or not args.run_dir:
        raise ConfigError("give one run directory: python push_to_hub.py RUN_DIR [--hub_model_id you/name]")
    summary = outputs.read_run_summary(args.run_dir)
    summary["hub_model_id"] = args.hub_model_id or summary["run_name"]
    outputs.write_text(os.path.join(args.run_dir, "README.md"), str(build_model_card(summary)))
    outputs.write_json(os.path.join(args.run_dir, outputs.SUMMARY_FILE), summary)
    return push_to_hub(args.run_dir, summary["hub_model_id"], private=args.hub_private_repo)


if __name__ == "__main__":
    cli.run(main)
