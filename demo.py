"""Try an adapter in the browser: ask it questions, and browse a predictions file with its EM/F1.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/demo.py.
`squad-lora demo` (installed by `pip install .`) is the same command; `python demo.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.demo import main

if __name__ == "__main__":
    cli.run(main)
