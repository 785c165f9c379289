"""Monitoring from data capture (any SageMaker endpoint's records): accuracy, low-confidence list, class-share
drift, production-variant comparison, and the low-confidence alarm check (monitor.py)."""
