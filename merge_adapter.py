"""Fold a trained LoRA adapter into its base: a standalone model that loads without peft.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/merge.py.
`squad-lora merge` (installed by `pip install .`) is the same command; `python merge_adapter.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.merge import main

if __name__ == "__main__":
    cli.run(main)
