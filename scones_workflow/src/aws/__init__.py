"""The AWS backend (boto3; SDK v3 has no Estimator/Predictor): one deploy sequence, test executions, teardown.
Every function takes boto3 clients or a Session, so the tests run it against moto and botocore stubs.

    config.py          DeployConfig: what a deploy is asked to do (one frozen object, passed down), ScalingConfig
    preflight.py       what AWS refuses later, checked first: bucket region, image manifest type, quotas
    deployment.py      deploy(): checks -> new model -> stack -> endpoint config with data capture -> endpoint
                       -> auto scaling
    scaling.py         the endpoint's auto scaling (template.yaml's targets and policies), in AWS's update order
    model_artifact.py  the new model: model.tar.gz for the bring-your-own container, or a training job
    training_job.py    the built-in image classifier's training-job request, checked against its docs
    stack.py           template.yaml's stack: Lambda zip + ASL upload, create/update, failures named
    endpoint.py        models, endpoint config (variants, capture), the blue/green endpoint switch
    executions.py      test executions of the state machine; deploy_and_run() for the notebook
    teardown.py        delete what deploy made, report the retained buckets; teardown_plan() says it first
    plan.py            deploy_plan(): resources, instance types, on-demand prices, without changing anything
    names.py           versioned resource names, "not found" errors
"""
