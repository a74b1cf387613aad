"""The stages' typed settings (config.settings), their values (config.stages) and the AWS
facts they are checked against (config.aws_facts). Pure Python, no CDK: the stacks, the
command-line tools, the local run and the tests all read them."""
