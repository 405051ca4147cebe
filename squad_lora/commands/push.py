"""Push a finished run_qa_lora.py run (adapter, tokenizer, model card, results, logs) to the Hugging Face Hub.

    python push_to_hub.py outputs/exp_r8_lr2e-4_attn --hub_model_id you/gpt2-squad-lora
    python push_to_hub.py outputs/smollm2-run --hub_model_id you/smollm2-squad --base_model_id HuggingFaceTB/SmolLM2-135M-Instruct

The token comes from HF_TOKEN or `hf auth login`, never from a flag. The model card is rebuilt first, so
that it names the repo and carries the decoding-strategy comparison evaluate_squad.py --compare wrote
under the run dir. An adapter trained on a local base is pushed only once --base_model_id names the
base's Hub id. Checkpoints are not uploaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from squad_lora import cli, outputs
from squad_lora.args import HubArguments
from squad_lora.errors import ConfigError
from squad_lora.hub import build_model_card, check_hub_repo, check_shareable, run_repo_id, set_adapter_base, upload_run

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
    hub_revision: Optional[str] = field(
        default=None, metadata={"help": "The branch to push to, created from main if new; default main."}
    )


def main(argv: list[str] | None = None) -> str:
    (args, hub_args), _, _ = cli.parse_args(
        (PushArguments, HubArguments), argv, positional=("run_dir",), bare_words="one run directory"
    )
    cli.setup_logging(__name__)
    if not args.run_dir:
        raise ConfigError("give one run directory: python push_to_hub.py RUN_DIR [--hub_model_id you/name]")
    summary = outputs.read_run_summary(args.run_dir)
    config = outputs.read_run_config(args.run_dir)
    repo_id = run_repo_id(args.hub_model_id, summary["run_name"])
    # everything that can refuse the push runs before any file of the run is rewritten
    check_shareable(args.run_dir, hub_args.base_model_id)
    url = check_hub_repo(repo_id, args.hub_private_repo, revision=args.hub_revision, asked_by="push_to_hub.py")
    summary.update(hub_model_id=repo_id, hub_revision=args.hub_revision)
    if hub_args.base_model_id:
        set_adapter_base(args.run_dir, hub_args.base_model_id)
        summary["base_model_id"] = hub_args.base_model_id
    # the run's recorded license unless this command line names one (the flag's default is not a choice)
    given_license = cli.flag_value(argv, "license", config_first=False)
    summary["license"] = given_license or summary.get("license") or hub_args.license
    card = build_model_card(summary, config, outputs.find_comparison(args.run_dir))
    outputs.write_text(os.path.join(args.run_dir, "README.md"), str(card))
    outputs.write_json(os.path.join(args.run_dir, outputs.SUMMARY_FILE), summary)
    return upload_run(args.run_dir, repo_id, revision=args.hub_revision, url=url)


if __name__ == "__main__":
    cli.run(main)
