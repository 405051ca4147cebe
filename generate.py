"""Answer SQuAD questions with a trained adapter, using one or several decoding strategies.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/generate.py.
`squad-lora generate` (installed by `pip install .`) is the same command; `python generate.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.generate import main

if __name__ == "__main__":
    cli.run(main)
