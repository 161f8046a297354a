"""Fine-tuning from the viewer (no Qt): the project folder of corrected pairs and adapter versions, and the
run that trains on them with src_training's loop. May import src_training, model and io; not engine or widgets."""
