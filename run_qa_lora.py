"""Fine-tune a causal LM on SQuAD as generative question answering, with a LoRA adapter.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/train.py.
`squad-lora train` (installed by `pip install .`) is the same command; `python run_qa_lora.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.train import main

if __name__ == "__main__":
    cli.run(main)
