"""Qt widgets (the top layer): thin views over the engine and the fine-tune package; no maths here.
May import everything below (engine, finetune, model, io); nothing below imports these."""
