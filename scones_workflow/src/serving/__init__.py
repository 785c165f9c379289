"""The endpoint: the served ONNX model, the SageMaker-contract HTTP server with weighted production
variants, its data capture, and the load test of the local stack.

    predictor.py  the served model (ONNX Runtime, no torch: the container's whole model code)
    server.py     GET /ping, POST /invocations, POST /endpoints/<name>/invocations; variants, TargetVariant
    capture.py    data capture in SageMaker's JSON Lines format and S3 layout
    loadtest.py   N executions from C clients: nothing lost, where the time goes, endpoint images/s
"""
