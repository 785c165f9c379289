"""The AWS backend (boto3; SDK v3 has no Estimator/Predictor): one deploy sequence, test executions, teardown.
Every function takes boto3 clients or a Session, so the tests run it against moto and botocore stubs.

    config.py          DeployConfig: what a deploy is asked to do (one frozen object, passed down)
    deployment.py      deploy(): new model -> stack -> endpoint config with data capture -> endpoint
    model_artifact.py  the new model: model.tar.gz for the bring-your-own container, or a training job
    training_job.py    the built-in image classifier's training-job request, checked against its docs
    stack.py           template.yaml's stack: Lambda zip + ASL upload, create/update, failures named
    endpoint.py        models, endpoint config (variants, capture), the blue/green endpoint switch
    executions.py      test executions of the state machine; deploy_and_run() for the notebook
    teardown.py        delete what deploy made, report the retained buckets
    names.py           versioned resource names, "not found" errors
"""
