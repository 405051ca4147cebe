"""Search LoRA settings with Optuna: each trial is a real run_qa_lora.py run, scored by its eval F1 (or EM).

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/sweep.py.
`squad-lora sweep` (installed by `pip install .`) is the same command; `python sweep.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.sweep import main

if __name__ == "__main__":
    cli.run(main)
