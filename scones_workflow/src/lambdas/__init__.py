"""The three Lambda functions of the workflow (deployed as one zip holding this package)."""
