#!/bin/bash
# The function's handler: Lambda Web Adapter (the layer's /opt/bootstrap, named by
# AWS_LAMBDA_EXEC_WRAPPER) runs this and forwards each function URL request to the app on
# AWS_LWA_PORT, streaming its answer back (AWS_LWA_INVOKE_MODE=response_stream).
# The bundle's own packages (the web server) first, then the Powertools layer's, then the runtime's.
PYTHONPATH="$LAMBDA_TASK_ROOT:/opt/python:$LAMBDA_RUNTIME_DIR" exec python -m uvicorn \
    --host 127.0.0.1 --port "${AWS_LWA_PORT:-8000}" --no-access-log --log-level warning \
    lambdas.origin_adapter.app:app
