"""Training: the local model on the shared transfer kit (model.py), the choice of its configuration by
validation or cross-validation on the training images (selection.py), and retraining from captured
traffic with a promotion gate (retrain.py)."""
