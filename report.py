"""The experiment report: a results table and plots from one or more run_qa_lora.py output dirs.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/report.py.
`squad-lora report` (installed by `pip install .`) is the same command; `python report.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.report import main

if __name__ == "__main__":
    cli.run(main)
