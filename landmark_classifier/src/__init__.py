"""Landmark classifier: data, models, training, transfer learning and the TorchScript predictor."""
