"""Score SQuAD predictions by the official v1.1 / v2.0 rules, or compare decoding strategies.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/evaluate.py.
`squad-lora evaluate` (installed by `pip install .`) is the same command; `python evaluate_squad.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.evaluate import main

if __name__ == "__main__":
    cli.run(main)
