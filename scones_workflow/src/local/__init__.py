"""The local backend: the real workflow.asl.json on moto's Step Functions, no AWS account.

    state_machine.py  LocalWorkflow: moto S3 + Step Functions, Lambda invocations dispatched in-process
    executions.py     the notebook's run of it: server + capture + state machine in one call, simulated traffic
"""
