"""The whole request path on one machine: a local front that applies the
distribution's behaviors, the real edge handler and origin adapter code in-process, a
local results store that speaks S3, and a local model server that honours the
SageMaker container contract behind a SageMaker runtime facade."""
