"""Push a finished run_qa_lora.py run (adapter, tokenizer, model card, results, logs) to the Hugging Face Hub.

Its arguments, data, model, work and outputs, top to bottom: squad_lora/commands/push.py.
`squad-lora push` (installed by `pip install .`) is the same command; `python push_to_hub.py --help` lists its flags.
"""

from squad_lora import cli
from squad_lora.commands.push import main

if __name__ == "__main__":
    cli.run(main)
