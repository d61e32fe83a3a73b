"""What a run shows of itself: the metrics.jsonl reader (metrics.py), the training curves (curves.py), the teacher's
attention maps (attention_maps.py) and TensorBoard event files (tensorboard.py). Nothing is imported here, so a
module that reads metrics does not load the plotting code."""
