"""squad-lora: the code the scripts share (arguments, data, model, trainer, decoding, scoring, outputs)."""
