"""`python -m squad_lora COMMAND ...`: the installed `squad-lora` command (squad_lora/commands)."""

from squad_lora.commands import main

main()
