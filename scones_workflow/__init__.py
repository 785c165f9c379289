"""Scones Unlimited: bicycle-vs-motorcycle classifier behind a SageMaker-style endpoint, three Lambdas,
Step Functions and monitoring; local by default, deployable to AWS."""
