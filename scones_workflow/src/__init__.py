"""What the notebook and the CLI call: data, model, server, capture, workflow, monitor, pipeline, load, aws."""
